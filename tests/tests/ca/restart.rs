//! A restart on the same data directory keeps the trust domain's root, so
//! SVIDs issued before it stay valid; key material stays private.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::time::SystemTime;

use signet_identity::x509::verify::verify_x509_svid;
use signet_proto::ca::v1 as pb;
use signet_tests::{CaOptions, CaProcess, Purpose, attest_node, openssl_verify};

/// Asserts that `path` is accessible to its owner only, with exactly `mode`.
fn assert_mode(path: &std::path::Path, mode: u32) {
    let actual = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        actual,
        mode,
        "{} has mode {actual:o}, expected {mode:o}",
        path.display()
    );
}

#[tokio::test]
async fn restart_keeps_the_root_and_old_svids_stay_valid() {
    let mut ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let roots_before = ca.bundle().unwrap().x509_authorities().to_vec();
    let served_before = ca
        .admin()
        .await
        .unwrap()
        .get_bundle(pb::GetBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let old = ca.mint_cli(&ca.id("/before"), "before", &[]).await.unwrap();
    let node = attest_node(&ca, "node-a").await.unwrap();

    let status = ca.stop().await.unwrap();
    assert!(
        status.success(),
        "SIGTERM should end signet-ca cleanly: {status}"
    );
    assert!(
        !ca.admin_socket().exists(),
        "the admin socket outlived the process"
    );
    ca.start_again().await.unwrap();

    let bundle = ca.bundle().unwrap();
    assert_eq!(
        bundle.x509_authorities(),
        roots_before.as_slice(),
        "the root changed across a restart"
    );
    let served_after = ca
        .admin()
        .await
        .unwrap()
        .get_bundle(pb::GetBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        served_after, served_before,
        "a restart alone must not change the bundle (roots, JWT keys, sequence)"
    );

    // The SVID from before the restart, against the new bundle.pem.
    let (ok, out) = openssl_verify(Purpose::SslClient, &ca.bundle_path(), &old.chain).unwrap();
    assert!(ok, "openssl refused the pre-restart SVID:\n{out}");
    let verified = verify_x509_svid(&old.chain, &bundle, SystemTime::now())
        .expect("the pre-restart SVID verifies against the new bundle");
    assert_eq!(verified.spiffe_id.to_string(), ca.id("/before"));

    // A new one.
    let new = ca.mint_cli(&ca.id("/after"), "after", &[]).await.unwrap();
    let (ok, out) = openssl_verify(Purpose::SslServer, &ca.bundle_path(), &new.chain).unwrap();
    assert!(ok, "openssl refused the post-restart SVID:\n{out}");
    verify_x509_svid(&new.chain, &bundle, SystemTime::now())
        .expect("the post-restart SVID verifies");

    // The node attested before the restart is still known.
    let mut client = ca.node_client(Some(node.tls_identity())).await.unwrap();
    client
        .list_authorized_entries(pb::ListAuthorizedEntriesRequest {})
        .await
        .expect("a node attested before the restart is still authorized");

    // Key files: owner read/write only, in a private directory.
    let keys_dir = ca.data_dir().join("keys");
    let keys: Vec<_> = std::fs::read_dir(&keys_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".key.pem"))
        .collect();
    assert!(
        keys.len() >= 2,
        "expected at least a root and an intermediate key in {}: {keys:?}",
        keys_dir.display()
    );
    for key in &keys {
        assert_mode(key, 0o600);
        assert_eq!(
            std::fs::metadata(key).unwrap().uid(),
            std::fs::metadata(ca.data_dir()).unwrap().uid()
        );
    }
    let dir_mode = std::fs::metadata(&keys_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode & 0o077, 0, "keys/ is open to others: {dir_mode:o}");
    assert_mode(ca.admin_socket(), 0o600);

    // Once more through the harness' one-step restart: still the same root.
    ca.restart().await.unwrap();
    assert_eq!(
        ca.bundle().unwrap().x509_authorities(),
        roots_before.as_slice(),
        "the root changed across a second restart"
    );
}

#[tokio::test]
async fn sigterm_closes_open_streams_and_exits_cleanly() {
    let mut ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let node = attest_node(&ca, "node-a").await.unwrap();
    let mut client = ca.node_client(Some(node.tls_identity())).await.unwrap();
    let mut bundles = client
        .watch_bundle(pb::WatchBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut entries = client
        .watch_authorized_entries(pb::WatchAuthorizedEntriesRequest {})
        .await
        .unwrap()
        .into_inner();
    bundles.message().await.unwrap().expect("first bundle");
    entries.message().await.unwrap().expect("snapshot");

    let status = ca.stop().await.unwrap();
    assert!(status.success(), "unclean exit with open streams: {status}");
    assert!(
        !ca.log().contains("grace period over"),
        "open watch streams held the shutdown until the grace period ran out"
    );
    // The streams end rather than hang.
    let wait = std::time::Duration::from_secs(5);
    assert!(
        tokio::time::timeout(wait, bundles.message()).await.is_ok(),
        "WatchBundle did not end with the server"
    );
    assert!(
        tokio::time::timeout(wait, entries.message()).await.is_ok(),
        "WatchAuthorizedEntries did not end with the server"
    );
}

#[tokio::test]
async fn a_data_directory_keeps_its_trust_domain() {
    let mut ca = CaProcess::start(CaOptions::new("example.org"))
        .await
        .unwrap();
    let status = ca.stop().await.unwrap();
    assert!(status.success());

    ca.options_mut().trust_domain = "other.org".into();
    let restarted = ca.start_again().await;
    if restarted.is_ok() {
        // Show what such a CA does before failing: it signs other.org
        // SVIDs under example.org's root and intermediate.
        let svid = ca.mint_cli(&ca.id("/web"), "web", &[]).await.unwrap();
        let names: Vec<Vec<String>> = svid.chain.iter().map(crate::uri_sans).collect();
        let root_names: Vec<Vec<String>> = svid.roots.iter().map(crate::uri_sans).collect();
        panic!(
            "BUG: signet-ca started with --trust-domain other.org on a data directory created \
             for example.org, reused example.org's root and intermediate, and issued \
             spiffe://other.org/web under them (URI SANs of the chain: {names:?}, of the \
             bundle's roots: {root_names:?}). It must refuse to start instead \
             (ca-server/src/ca/authorities.rs: load_or_create_root and load_signer never \
             compare the stored authorities' trust domain with the configured one)."
        );
    }
    // The error carries the refused run's log: it should say whose the data is.
    let refusal = format!("{:#}", restarted.unwrap_err());
    assert!(
        refusal.contains("example.org"),
        "the refusal should name the data directory's trust domain:\n{refusal}"
    );
}
