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
    let old = ca.mint_cli(&ca.id("/before"), "before", &[]).await.unwrap();
    let node = attest_node(&ca, "node-a").await.unwrap();

    let status = ca.stop().await.unwrap();
    assert!(status.success(), "SIGTERM should end signet-ca cleanly: {status}");
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
}
