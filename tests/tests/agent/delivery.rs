//! File delivery: the agent writes one identity's SVID, key and bundle to a
//! directory and runs a command, for workloads that only read files.

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use signet_tests::{Purpose, openssl_verify, read_certs, signet};

use crate::{Node, WAIT, me};

#[tokio::test]
async fn the_agent_writes_svid_files_and_runs_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("svid");
    let ran = dir.path().join("ran");
    let id = format!("spiffe://{}/files", signet_tests::DEFAULT_TRUST_DOMAIN);
    let command = format!("touch {}", ran.display());
    let out_arg = out.display().to_string();
    let node = Node::start(&[
        "--svid-dir",
        &out_arg,
        "--svid-dir-spiffe-id",
        &id,
        "--svid-dir-command",
        &command,
    ])
    .await;
    node.entry("/files", &me(), &[]).await;

    let deadline = Instant::now() + WAIT;
    while !ran.exists() {
        assert!(
            Instant::now() < deadline,
            "the command did not run within {WAIT:?}; files: {:?}\n--- agent log ---\n{}",
            std::fs::read_dir(&out).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>()),
            node.agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let svid = out.join("svid.pem");
    let key = out.join("svid_key.pem");
    let bundle = out.join("bundle.pem");
    for file in [&svid, &key, &bundle] {
        assert!(file.is_file(), "{} missing", file.display());
    }
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key file is {mode:o}");

    let inspect = signet([std::ffi::OsStr::new("inspect"), svid.as_os_str()])
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert!(inspect.stdout.contains(&id), "{inspect}");
    let verify = signet([
        std::ffi::OsStr::new("verify"),
        std::ffi::OsStr::new("--bundle"),
        bundle.as_os_str(),
        svid.as_os_str(),
    ])
    .await
    .unwrap()
    .ok()
    .unwrap();
    assert!(verify.stdout.starts_with(&format!("OK: {id}")), "{verify}");

    // And openssl agrees, with the CA's own bundle.pem as the root.
    let chain = read_certs(&svid).unwrap();
    let (ok, text) = openssl_verify(Purpose::SslClient, &node.ca.bundle_path(), &chain).unwrap();
    assert!(ok, "{text}");
}
