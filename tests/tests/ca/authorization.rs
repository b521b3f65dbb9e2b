//! Who may obtain what: every refusal has the right code, issues nothing,
//! and leaves a `rejected` row (and no `issued` row) in the audit log.

use std::time::Duration;

use signet_proto::ca::v1 as pb;
use signet_tests::{
    CaOptions, CaProcess, attest_node, attest_with_token, create_token, new_key_and_csr,
};
use tonic::Code;

use crate::{INVALID_ARGUMENT, PERMISSION_DENIED, assert_rejected_not_issued, item_error, svid_of};

/// Creates an entry for `spiffe://<td><path>` parented to node `node` through
/// the Admin API; returns its ID.
async fn entry_for(ca: &CaProcess, path: &str, node: &str) -> String {
    ca.admin()
        .await
        .unwrap()
        .create_entry(pb::CreateEntryRequest {
            spiffe_id: ca.id(path),
            parent_id: ca.node_id(node),
            selectors: vec![pb::Selector {
                r#type: "unix".into(),
                value: "uid:1000".into(),
            }],
            x509_svid_ttl_seconds: 0,
            dns_names: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .id
}

/// A batch item with a fresh, valid CSR.
fn item(entry_id: &str) -> pb::SignRequestItem {
    pb::SignRequestItem {
        entry_id: entry_id.to_owned(),
        csr: new_key_and_csr().unwrap().1,
        ttl_seconds: 0,
    }
}

#[tokio::test]
async fn a_node_cannot_obtain_an_entry_parented_to_another_node() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let a = attest_node(&ca, "node-a").await.unwrap();
    attest_node(&ca, "node-b").await.unwrap();
    let entry_a = entry_for(&ca, "/a", "node-a").await;
    let entry_b = entry_for(&ca, "/b", "node-b").await;
    let mut client = ca.node_client(Some(a.tls_identity())).await.unwrap();

    // Only B's entry, and one that does not exist: both refused the same way.
    let mark = ca.audit_mark().unwrap();
    let results = client
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            items: vec![item(&entry_b), item("no-such-entry")],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 2);
    for result in &results {
        let error = item_error(result);
        assert_eq!(
            error.code, PERMISSION_DENIED,
            "entry {}: {error:?}",
            result.entry_id
        );
    }
    assert_rejected_not_issued(&ca, mark, "sign_x509_svid");

    // Items stand alone: in a mixed batch A's own entry is still signed.
    let results = client
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            items: vec![item(&entry_b), item(&entry_a)],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results[0].entry_id, entry_b);
    assert_eq!(item_error(&results[0]).code, PERMISSION_DENIED);
    assert_eq!(results[1].entry_id, entry_a);
    assert_eq!(svid_of(&results[1]).spiffe_id, ca.id("/a"));

    // A's listing does not show B's entry.
    let listed = client
        .list_authorized_entries(pb::ListAuthorizedEntriesRequest {})
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = listed.entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, [entry_a.as_str()]);
}

#[tokio::test]
async fn a_join_token_is_single_use() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let token = create_token(&ca, "node-a", 0).await.unwrap();
    attest_with_token(&ca, &token).await.unwrap();

    let mark = ca.audit_mark().unwrap();
    let err = attest_with_token(&ca, &token).await.unwrap_err();
    let status = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_rejected_not_issued(&ca, mark, "attest_node");

    // An unknown token is refused the same way.
    let mark = ca.audit_mark().unwrap();
    let err = attest_with_token(&ca, &"0".repeat(64)).await.unwrap_err();
    let status = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_rejected_not_issued(&ca, mark, "attest_node");
}

#[tokio::test]
async fn an_expired_join_token_is_refused() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let token = ca.token_cli("node-a", Some("1s")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mark = ca.audit_mark().unwrap();
    let err = attest_with_token(&ca, &token).await.unwrap_err();
    let status = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_rejected_not_issued(&ca, mark, "attest_node");
}

#[tokio::test]
async fn malformed_csrs_are_item_errors_and_issue_nothing() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let node = attest_node(&ca, "node-a").await.unwrap();
    let entry = entry_for(&ca, "/web", "node-a").await;
    let mut client = ca.node_client(Some(node.tls_identity())).await.unwrap();

    // Garbage, and a real CSR whose signature no longer matches.
    let mut tampered = new_key_and_csr().unwrap().1;
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let mark = ca.audit_mark().unwrap();
    let results = client
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            items: vec![
                pb::SignRequestItem {
                    entry_id: entry.clone(),
                    csr: b"not a CSR".to_vec(),
                    ttl_seconds: 0,
                },
                pb::SignRequestItem {
                    entry_id: entry.clone(),
                    csr: tampered,
                    ttl_seconds: 0,
                },
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 2);
    for (i, result) in results.iter().enumerate() {
        let error = item_error(result);
        assert_eq!(error.code, INVALID_ARGUMENT, "item {i}: {error:?}");
    }
    assert_rejected_not_issued(&ca, mark, "sign_x509_svid");
}

#[tokio::test]
async fn a_malformed_csr_in_attestation_does_not_consume_the_token() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let token = create_token(&ca, "node-a", 0).await.unwrap();

    let mark = ca.audit_mark().unwrap();
    let err = ca
        .node_client(None)
        .await
        .unwrap()
        .attest_node(pb::AttestNodeRequest {
            join_token: token.clone(),
            csr: b"not a CSR".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_rejected_not_issued(&ca, mark, "attest_node");

    let node = attest_with_token(&ca, &token)
        .await
        .expect("the token survives a refused attempt");
    assert_eq!(node.spiffe_id, ca.node_id("node-a"));
}

#[tokio::test]
async fn node_calls_require_a_node_svid() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    attest_node(&ca, "node-a").await.unwrap();
    let entry = entry_for(&ca, "/web", "node-a").await;
    let mut anonymous = ca.node_client(None).await.unwrap();

    let mark = ca.audit_mark().unwrap();
    let err = anonymous
        .list_authorized_entries(pb::ListAuthorizedEntriesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_rejected_not_issued(&ca, mark, "list_entries");

    let mark = ca.audit_mark().unwrap();
    let err = anonymous
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            items: vec![item(&entry)],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_rejected_not_issued(&ca, mark, "sign_batch");

    let mark = ca.audit_mark().unwrap();
    let err = anonymous
        .renew_node_svid(pb::RenewNodeSvidRequest {
            csr: new_key_and_csr().unwrap().1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_rejected_not_issued(&ca, mark, "renew_node");

    let err = anonymous
        .watch_bundle(pb::WatchBundleRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = anonymous
        .watch_authorized_entries(pb::WatchAuthorizedEntriesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // A valid SVID of the trust domain that is not a node's is no pass either.
    let workload = ca.mint_cli(&ca.id("/web"), "web", &[]).await.unwrap();
    let chain_pem = std::fs::read_to_string(workload.chain_path()).unwrap();
    let key_pem = std::fs::read_to_string(workload.key_path()).unwrap();
    let mut impostor = ca
        .node_client(Some((&chain_pem, &key_pem)))
        .await
        .unwrap();
    let mark = ca.audit_mark().unwrap();
    let results = impostor
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            items: vec![item(&entry)],
        })
        .await;
    match results {
        Err(status) => assert_eq!(status.code(), Code::PermissionDenied, "{status:?}"),
        Ok(response) => panic!("a workload SVID acted as a node: {response:?}"),
    }
    assert_rejected_not_issued(&ca, mark, "sign_batch");
}

#[tokio::test]
async fn a_batch_over_max_batch_is_refused_whole() {
    let ca = CaProcess::start(CaOptions::default().flag("max-batch", "2"))
        .await
        .unwrap();
    let node = attest_node(&ca, "node-a").await.unwrap();
    let entry = entry_for(&ca, "/web", "node-a").await;
    let mut client = ca.node_client(Some(node.tls_identity())).await.unwrap();

    let mark = ca.audit_mark().unwrap();
    let err = client
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            items: vec![item(&entry), item(&entry), item(&entry)],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_rejected_not_issued(&ca, mark, "sign_batch");

    // At the limit, everything is signed.
    let results = client
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            items: vec![item(&entry), item(&entry)],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 2);
    for result in &results {
        svid_of(result);
    }
}
