//! The streams agents follow: the bundle, and the node's entries (a snapshot,
//! then each change soon after an admin makes it).

use std::time::Duration;

use signet_proto::ca::v1 as pb;
use signet_tests::{CaOptions, CaProcess, attest_node};

/// How soon after the CLI returns the change must reach the stream.
const UPDATE_DEADLINE: Duration = Duration::from_secs(1);

/// Waits for the next message of a stream, at most `within`.
async fn next<T>(stream: &mut tonic::Streaming<T>, within: Duration, what: &str) -> T {
    tokio::time::timeout(within, stream.message())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {within:?}"))
        .unwrap_or_else(|e| panic!("{what}: stream failed: {e:?}"))
        .unwrap_or_else(|| panic!("{what}: stream ended"))
}

#[tokio::test]
async fn watch_bundle_starts_with_the_current_bundle() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let node = attest_node(&ca, "node-a").await.unwrap();
    let mut client = ca.node_client(Some(node.tls_identity())).await.unwrap();

    let mut stream = client
        .watch_bundle(pb::WatchBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream, Duration::from_secs(5), "first bundle").await;
    assert_eq!(first.trust_domain, ca.trust_domain().to_string());
    let roots: Vec<Vec<u8>> = ca
        .bundle()
        .unwrap()
        .x509_authorities()
        .iter()
        .map(|c| c.to_vec())
        .collect();
    assert_eq!(
        first.x509_authorities, roots,
        "roots differ from bundle.pem"
    );
    assert!(first.sequence >= 1);
    assert_eq!(
        first.sequence, node.bundle.sequence,
        "same bundle as at attestation"
    );
}

#[tokio::test]
async fn watch_authorized_entries_sends_a_snapshot_then_changes() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let node = attest_node(&ca, "node-a").await.unwrap();
    let first_id = ca
        .entry_cli(&[
            "--spiffe-id",
            &ca.id("/first"),
            "--parent-node",
            "node-a",
            "--selector",
            "unix:uid:1000",
        ])
        .await
        .unwrap();
    let mut client = ca.node_client(Some(node.tls_identity())).await.unwrap();
    let mut stream = client
        .watch_authorized_entries(pb::WatchAuthorizedEntriesRequest {})
        .await
        .unwrap()
        .into_inner();

    let snapshot = next(&mut stream, Duration::from_secs(5), "snapshot").await;
    assert!(snapshot.snapshot, "the first message must be a snapshot");
    let ids: Vec<&str> = snapshot.upserted.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, [first_id.as_str()]);
    assert!(snapshot.removed_ids.is_empty());

    // Another node's entry must not reach this node; our next one must.
    ca.entry_cli(&[
        "--spiffe-id",
        &ca.id("/elsewhere"),
        "--parent-node",
        "node-b",
        "--selector",
        "unix:uid:1000",
    ])
    .await
    .unwrap();
    let second_id = ca
        .entry_cli(&[
            "--spiffe-id",
            &ca.id("/second"),
            "--parent-node",
            "node-a",
            "--selector",
            "unix:uid:1001",
        ])
        .await
        .unwrap();
    let created = next(&mut stream, UPDATE_DEADLINE, "update after entry create").await;
    assert!(!created.snapshot);
    let ids: Vec<&str> = created.upserted.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, [second_id.as_str()], "{created:?}");
    assert_eq!(created.upserted[0].spiffe_id, ca.id("/second"));
    assert!(created.removed_ids.is_empty());
    assert!(created.revision > snapshot.revision);

    ca.signet_ca(["entry", "delete", &first_id])
        .await
        .unwrap()
        .ok()
        .unwrap();
    let deleted = next(&mut stream, UPDATE_DEADLINE, "update after entry delete").await;
    assert!(!deleted.snapshot);
    assert!(deleted.upserted.is_empty(), "{deleted:?}");
    assert_eq!(deleted.removed_ids, [first_id]);
    assert!(deleted.revision > created.revision);
}

#[tokio::test]
async fn a_prepared_root_and_a_new_jwt_key_are_pushed_as_new_bundles() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let node = attest_node(&ca, "node-a").await.unwrap();
    let mut client = ca.node_client(Some(node.tls_identity())).await.unwrap();
    let mut stream = client
        .watch_bundle(pb::WatchBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream, Duration::from_secs(5), "first bundle").await;
    assert_eq!(first.x509_authorities.len(), 1);
    assert_eq!(first.jwt_authorities.len(), 1);

    let mut admin = ca.admin().await.unwrap();
    let seq = admin
        .prepare_authority(pb::PrepareAuthorityRequest {
            kind: pb::AuthorityKind::Root.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .bundle_sequence;
    let second = next(
        &mut stream,
        UPDATE_DEADLINE,
        "bundle with the prepared root",
    )
    .await;
    assert_eq!(second.sequence, seq);
    assert!(second.sequence > first.sequence);
    assert_eq!(second.x509_authorities.len(), 2, "old and prepared root");
    assert!(second.x509_authorities.contains(&first.x509_authorities[0]));
    // bundle.pem follows, and SVIDs still chain to the old (active) root.
    assert_eq!(ca.bundle().unwrap().x509_authorities().len(), 2);

    admin
        .prepare_authority(pb::PrepareAuthorityRequest {
            kind: pb::AuthorityKind::Jwt.into(),
        })
        .await
        .unwrap();
    let third = next(&mut stream, UPDATE_DEADLINE, "bundle with the new JWT key").await;
    assert_eq!(third.jwt_authorities.len(), 2, "old and new JWT keys");
    assert!(third.sequence > second.sequence);

    let bad = admin
        .prepare_authority(pb::PrepareAuthorityRequest { kind: 99 })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn a_stream_ends_when_the_node_svid_it_was_opened_with_expires() {
    let ca = CaProcess::start(CaOptions::default().flag("node-svid-ttl", "2s"))
        .await
        .unwrap();
    let node = attest_node(&ca, "node-a").await.unwrap();
    let mut client = ca.node_client(Some(node.tls_identity())).await.unwrap();
    let mut stream = client
        .watch_bundle(pb::WatchBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    next(&mut stream, Duration::from_secs(5), "first bundle").await;
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the stream outlived its credential");
    let status = end.expect_err("the stream must end with an error");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    // New calls on the same connection are refused too.
    let again = client
        .list_authorized_entries(pb::ListAuthorizedEntriesRequest {})
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::Unauthenticated, "{again:?}");
}
