//! Two `signet-ca` replicas on one PostgreSQL database: each registers
//! itself and heartbeats, both show in `signet ca status`, a change made
//! through one reaches the agent streams of the other (LISTEN/NOTIFY; no
//! replica polls), and a join token is consumed by exactly one of them.
//!
//! Each replica has a data directory of its own: its own keys, root,
//! intermediate and JWT key; the bundle is the union of both.

use std::time::Duration;

use signet_proto::ca::v1 as pb;
use signet_tests::postgres::Database;
use signet_tests::{CaOptions, CaProcess, attest_node, attest_with_token, create_token};

/// Upper bound for a change to cross replicas: a missed notification
/// would never arrive (nothing polls), so this only bounds a failing test.
const CROSS_DEADLINE: Duration = Duration::from_secs(10);

async fn two_replicas(db: &Database) -> (CaProcess, CaProcess) {
    let opts = || CaOptions::default().flag("store", db.url());
    let a = CaProcess::start(opts()).await.unwrap();
    let b = a.start_replica(0, opts()).await.unwrap();
    (a, b)
}

async fn next<T>(stream: &mut tonic::Streaming<T>, what: &str) -> T {
    tokio::time::timeout(CROSS_DEADLINE, stream.message())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {CROSS_DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("{what}: stream failed: {e:?}"))
        .unwrap_or_else(|| panic!("{what}: stream ended"))
}

#[tokio::test]
async fn an_entry_and_a_bundle_change_made_on_one_replica_reach_streams_on_the_other() {
    let db = Database::create();
    let (a, b) = two_replicas(&db).await;
    let node = attest_node(&b, "node-b").await.unwrap();
    let mut client = b.node_client(Some(node.tls_identity())).await.unwrap();
    let mut entries = client
        .watch_authorized_entries(pb::WatchAuthorizedEntriesRequest {})
        .await
        .unwrap()
        .into_inner();
    let snapshot = next(&mut entries, "snapshot").await;
    assert!(snapshot.snapshot && snapshot.upserted.is_empty());
    let mut bundles = client
        .watch_bundle(pb::WatchBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut bundles, "first bundle").await;

    // Through A's admin socket.
    let id = a
        .entry_cli(&[
            "--spiffe-id",
            &a.id("/made-on-a"),
            "--parent-node",
            "node-b",
            "--selector",
            "unix:uid:1000",
        ])
        .await
        .unwrap();
    let change = next(&mut entries, "entry change").await;
    assert!(!change.snapshot);
    let ids: Vec<&str> = change.upserted.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, [id.as_str()]);

    let prepared = a
        .admin()
        .await
        .unwrap()
        .prepare_authority(pb::PrepareAuthorityRequest {
            kind: pb::AuthorityKind::Jwt.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(prepared.bundle_sequence > first.sequence);
    let mut got = next(&mut bundles, "bundle change").await;
    while got.sequence < prepared.bundle_sequence {
        got = next(&mut bundles, "bundle change").await;
    }
    assert_eq!(got.sequence, prepared.bundle_sequence);
    let new_key = prepared.authority.unwrap().id;
    assert!(
        got.jwt_authorities.iter().any(|k| k.key_id == new_key),
        "B serves a bundle without A's new JWT key {new_key}"
    );
}

#[tokio::test]
async fn status_lists_every_replica_and_a_clean_stop() {
    let db = Database::create();
    let (a, mut b) = two_replicas(&db).await;
    let replicas = |out: &str| -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(out).unwrap();
        v["replicas"].as_array().unwrap().clone()
    };
    let out = a
        .signet_ca(["--output", "json", "status"])
        .await
        .unwrap()
        .ok()
        .unwrap()
        .stdout;
    let rows = replicas(&out);
    assert_eq!(rows.len(), 2, "{out}");
    let a_id = std::fs::read_to_string(a.data_dir().join("replica-id")).unwrap();
    let b_id = std::fs::read_to_string(b.data_dir().join("replica-id")).unwrap();
    assert_ne!(a_id, b_id);
    for r in &rows {
        assert_eq!(r["state"], "running", "{out}");
        assert!(
            !r["signing_authority"].as_str().unwrap().is_empty(),
            "{out}"
        );
        let this = r["id"] == a_id.trim();
        assert_eq!(r["this_replica"], this, "{out}");
        if !this {
            assert_eq!(r["id"], b_id.trim(), "{out}");
            assert_eq!(r["address"], format!("127.0.0.1:{}", b.port()), "{out}");
        }
    }

    let node = attest_node(&b, "node-b").await.unwrap();
    let mut client = b.node_client(Some(node.tls_identity())).await.unwrap();
    let mut stream = client
        .watch_bundle(pb::WatchBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    next(&mut stream, "first bundle").await;
    // B's heartbeat carries the connected agent to A's listing.
    let b_row = loop {
        let out = a
            .signet_ca(["--output", "json", "authority", "list"])
            .await
            .unwrap()
            .ok()
            .unwrap()
            .stdout;
        let row = replicas(&out)
            .into_iter()
            .find(|r| r["id"] == b_id.trim())
            .unwrap();
        if row["agents_connected"] == 1 {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(b_row["state"], "running");

    b.stop().await.unwrap();
    let out = a.signet_ca(["status"]).await.unwrap().ok().unwrap().stdout;
    let line = out
        .lines()
        .find(|l| l.starts_with(b_id.trim()))
        .unwrap_or_else(|| panic!("no row for {b_id}:\n{out}"));
    assert!(line.contains("stopped"), "{out}");
}

#[tokio::test]
async fn a_join_token_raced_against_two_replicas_is_consumed_once() {
    let db = Database::create();
    let (a, b) = two_replicas(&db).await;
    for round in 0..20 {
        let name = format!("raced-{round}");
        let token = create_token(&a, &name, 0).await.unwrap();
        let (on_a, on_b) =
            tokio::join!(attest_with_token(&a, &token), attest_with_token(&b, &token));
        let winners = usize::from(on_a.is_ok()) + usize::from(on_b.is_ok());
        assert_eq!(winners, 1, "round {round}: a {on_a:?}, b {on_b:?}");
        let loser = on_a.err().or(on_b.err()).unwrap();
        let status = loser
            .chain()
            .find_map(|e| e.downcast_ref::<tonic::Status>())
            .unwrap_or_else(|| panic!("round {round}: {loser:#}"));
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "round {round}: {status:?}"
        );
    }
}

/// Waits until `ca`'s bundle.pem carries `roots` roots (a replica follows
/// another's new root on its notification).
async fn bundle_with_roots(ca: &CaProcess, roots: usize) -> signet_identity::TrustBundle {
    let deadline = tokio::time::Instant::now() + CROSS_DEADLINE;
    loop {
        let bundle = ca.bundle().unwrap();
        if bundle.x509_authorities().len() == roots {
            return bundle;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bundle.pem holds {} roots, not {roots}",
            bundle.x509_authorities().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn each_replica_signs_under_its_own_root_and_both_bundles_carry_both() {
    let db = Database::create();
    let (a, b) = two_replicas(&db).await;
    // No key file is in both data directories.
    let keys = |ca: &CaProcess| -> Vec<std::ffi::OsString> {
        std::fs::read_dir(ca.data_dir().join("keys"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    };
    let (ka, kb) = (keys(&a), keys(&b));
    assert!(!ka.is_empty() && !kb.is_empty());
    assert!(ka.iter().all(|k| !kb.contains(k)), "{ka:?} {kb:?}");

    let bundle_a = bundle_with_roots(&a, 2).await;
    let bundle_b = bundle_with_roots(&b, 2).await;
    assert_eq!(bundle_a.x509_authorities(), bundle_b.x509_authorities());
    let on_a = attest_node(&a, "node-on-a").await.unwrap();
    let on_b = attest_node(&b, "node-on-b").await.unwrap();
    // Different roots at the top of each chain...
    let scratch = tempfile::tempdir().unwrap();
    let one_root = |i: usize, root: &rustls_pki_types::CertificateDer<'static>| {
        let path = scratch.path().join(format!("root-{i}.pem"));
        signet_tests::write_pem_chain(&path, std::slice::from_ref(root)).unwrap();
        path
    };
    let top = |n: &signet_tests::NodeIdentity| {
        let issuer = n.chain_der.last().unwrap();
        bundle_a
            .x509_authorities()
            .iter()
            .enumerate()
            .position(|(i, root)| {
                signet_tests::openssl_verify(
                    signet_tests::Purpose::SslClient,
                    &one_root(i, root),
                    &n.chain_der,
                )
                .unwrap()
                .0
            })
            .unwrap_or_else(|| panic!("{issuer:?} chains to no root of the bundle"))
    };
    assert_ne!(top(&on_a), top(&on_b), "both replicas sign under one root");
    // ...and each chain passes openssl against the other replica's bundle.
    for (node, other) in [(&on_a, &b), (&on_b, &a)] {
        let (ok, out) = signet_tests::openssl_verify(
            signet_tests::Purpose::SslClient,
            &other.bundle_path(),
            &node.chain_der,
        )
        .unwrap();
        assert!(ok, "{}: {out}", node.spiffe_id);
    }
}
