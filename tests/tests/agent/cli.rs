//! `signet agent ...`: the CLI as a Workload API client of a real agent,
//! and its output accepted by `signet verify`/`inspect` and openssl.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt as _;
use std::process::Stdio;
use std::time::Duration;

use signet_tests::{CliOutput, Purpose, binary, openssl_verify, read_certs, signet};
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::{Node, me};

/// `signet --socket <how> agent ARGS`... with the socket given as `how`
/// says: a flag value or the environment.
async fn agent_cli(node: &Node, args: &[&str]) -> CliOutput {
    let socket = node.agent.workload_api_socket().display().to_string();
    let mut full = vec!["agent", "--socket", &socket];
    full.extend_from_slice(args);
    signet(full).await.unwrap()
}

#[tokio::test]
async fn svid_fetch_writes_files_that_verify() {
    let node = Node::start(&[]).await;

    // No entry yet: refused, with the status a person can act on.
    let denied = agent_cli(&node, &["svid", "fetch"]).await;
    assert_eq!(denied.code(), Some(1), "{denied}");
    assert!(denied.stderr.contains("PermissionDenied"), "{denied}");

    node.entry("/web", &me(), &[]).await;
    node.entry("/api", &me(), &[]).await;
    node.wait_for_svid("/web").await;
    node.wait_for_svid("/api").await;

    // The socket as a unix:/// URI this time.
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let uri = format!("unix://{}", node.agent.workload_api_socket().display());
    let out = signet([
        OsStr::new("agent"),
        OsStr::new("--socket"),
        OsStr::new(&uri),
        OsStr::new("svid"),
        OsStr::new("fetch"),
        OsStr::new("--all"),
        OsStr::new("--out"),
        out_dir.as_os_str(),
    ])
    .await
    .unwrap()
    .ok()
    .unwrap();
    assert!(out.stdout.contains("SPIFFE ID:"), "{out}");
    for name in [
        "svid.pem",
        "svid_key.pem",
        "bundle.pem",
        "svid_0.pem",
        "svid_1.pem",
        "svid_1_key.pem",
        "bundle_1.pem",
    ] {
        assert!(out_dir.join(name).is_file(), "{name} missing\n{out}");
    }
    for key in ["svid_key.pem", "svid_0_key.pem", "svid_1_key.pem"] {
        let mode = std::fs::metadata(out_dir.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }

    let svid = out_dir.join("svid.pem");
    let bundle = out_dir.join("bundle.pem");
    let verify = signet([
        OsStr::new("verify"),
        OsStr::new("--bundle"),
        bundle.as_os_str(),
        svid.as_os_str(),
    ])
    .await
    .unwrap()
    .ok()
    .unwrap();
    assert!(verify.stdout.starts_with("OK: spiffe://"), "{verify}");
    let inspect = signet([OsStr::new("inspect"), svid.as_os_str()])
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert!(
        inspect.stdout.contains("spiffe://example.org/"),
        "{inspect}"
    );
    let inspect_bundle = signet([OsStr::new("inspect"), bundle.as_os_str()])
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert!(!inspect_bundle.stdout.is_empty());

    // openssl: the chain against the CA's bundle.pem, and the key is the
    // leaf's (openssl compares the public keys).
    let chain = read_certs(&svid).unwrap();
    let (ok, text) = openssl_verify(Purpose::SslClient, &node.ca.bundle_path(), &chain).unwrap();
    assert!(ok, "{text}");
    let key_matches = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-in"])
        .arg(&svid)
        .arg("-pubkey")
        .output()
        .unwrap();
    let key_pub = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(out_dir.join("svid_key.pem"))
        .output()
        .unwrap();
    assert!(key_pub.status.success());
    assert_eq!(
        key_matches.stdout, key_pub.stdout,
        "key and certificate differ"
    );

    // JSON: both SVIDs, the default first, with serials.
    let json = agent_cli(&node, &["svid", "fetch", "--output", "json"])
        .await
        .ok()
        .unwrap();
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(value["svids"].as_array().unwrap().len(), 2, "{json}");
    assert!(value["svids"][0]["serial"].as_str().unwrap().len() >= 16);
}

#[tokio::test]
async fn jwt_fetch_and_validate_from_the_cli() {
    let node = Node::start(&[]).await;
    node.entry("/web", &me(), &[]).await;
    node.wait_for_svid("/web").await;
    let web = node.ca.id("/web");

    let fetched = agent_cli(&node, &["svid", "fetch", "--jwt", "--audience", "x"])
        .await
        .ok()
        .unwrap();
    let token = fetched.first_line().to_owned();
    assert_eq!(token.split('.').count(), 3, "{fetched}");
    assert!(
        fetched.stdout.contains(&format!("SPIFFE ID:    {web}")),
        "{fetched}"
    );
    assert!(fetched.stdout.contains("Audience:     x"), "{fetched}");

    let json = agent_cli(
        &node,
        &[
            "svid",
            "fetch",
            "--jwt",
            "--audience",
            "x",
            "--output",
            "json",
        ],
    )
    .await
    .ok()
    .unwrap();
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(value["svids"][0]["claims"]["sub"], web.as_str());

    let ok = agent_cli(&node, &["jwt", "validate", "--audience", "x", &token])
        .await
        .ok()
        .unwrap();
    assert_eq!(ok.first_line(), format!("OK: {web}"));
    assert!(ok.stdout.contains("  aud: x"), "{ok}");
    assert!(ok.stdout.contains(&format!("  sub: {web}")), "{ok}");

    let refused = agent_cli(&node, &["jwt", "validate", "--audience", "y", &token]).await;
    assert_eq!(refused.code(), Some(1), "{refused}");
    assert!(refused.stderr.contains("InvalidArgument"), "{refused}");
}

#[tokio::test]
async fn bundle_show_matches_the_ca_in_both_formats() {
    let node = Node::start(&[]).await;
    let pem = agent_cli(&node, &["bundle", "show"]).await.ok().unwrap();
    let served: Vec<Vec<u8>> = pem::parse_many(&pem.stdout)
        .unwrap()
        .into_iter()
        .map(pem::Pem::into_contents)
        .collect();
    let expected: Vec<Vec<u8>> = node
        .ca
        .bundle()
        .unwrap()
        .x509_authorities()
        .iter()
        .map(|c| c.to_vec())
        .collect();
    assert_eq!(served, expected);

    let jwks = agent_cli(&node, &["bundle", "show", "--format", "jwks"])
        .await
        .ok()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.json");
    std::fs::write(&path, &jwks.stdout).unwrap();
    let inspect = signet([
        OsStr::new("--output"),
        OsStr::new("json"),
        OsStr::new("inspect"),
        path.as_os_str(),
    ])
    .await
    .unwrap()
    .ok()
    .unwrap();
    let report: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    assert_eq!(report["bundle"]["trust_domain"], "example.org", "{inspect}");
    assert_eq!(
        report["bundle"]["x509_authorities"].as_u64().unwrap() as usize,
        expected.len()
    );
    assert!(
        !report["bundle"]["jwt_authorities"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{inspect}"
    );
}

#[tokio::test]
async fn svid_watch_prints_updates_and_ends_on_sigint() {
    let node = Node::start(&[]).await;
    node.entry("/web", &me(), &[]).await;
    node.wait_for_svid("/web").await;

    let mut child = tokio::process::Command::new(binary("signet").unwrap())
        .args(["agent", "svid", "watch"])
        // The socket through the standard's variable this time.
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix:{}", node.agent.workload_api_socket().display()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("no update line within 10 s")
        .unwrap()
        .expect("watch ended without a line");
    assert!(
        line.contains(&format!("  {}  serial ", node.ca.id("/web"))),
        "{line}"
    );
    assert!(line.contains("  not after "), "{line}");

    // Another entry is another update.
    node.entry("/api", &me(), &[]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("the new entry did not show")
            .unwrap()
            .expect("watch ended");
        if line.contains(&node.ca.id("/api")) {
            break;
        }
    }

    let pid = child.id().unwrap();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("watch ignored SIGINT")
        .unwrap();
    assert!(status.success(), "watch exited with {status}");
}
