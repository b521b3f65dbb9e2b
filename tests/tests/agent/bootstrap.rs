//! First-start trust: an agent given a pinned SHA-256 of the CA's root (and
//! no bundle file) attests; a wrong pin makes it refuse the CA before the
//! join token is sent, so the token stays usable; and with neither a bundle,
//! a pin nor an explicit --insecure-bootstrap it refuses to start.

use std::process::Stdio;
use std::time::{Duration, Instant};

use signet_tests::{CaOptions, CaProcess, binary};

/// `sha256:<hex>` of the CA's root certificate (DER).
fn root_pin(ca: &CaProcess) -> String {
    let root = ca.bundle().unwrap().x509_authorities()[0].clone();
    let digest = ring::digest::digest(&ring::digest::SHA256, &root);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Runs `signet-agent run` with `trust` flags; returns the child and its dir.
fn spawn_agent(
    ca: &CaProcess,
    token: &str,
    trust: &[&str],
) -> (std::process::Child, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(binary("signet-agent").unwrap());
    cmd.arg("run")
        .args(["--trust-domain", ca.trust_domain().as_str()])
        .args(["--ca-address", &format!("127.0.0.1:{}", ca.port())])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--workload-api-socket")
        .arg(dir.path().join("api.sock"))
        .arg("--sds-socket")
        .arg(dir.path().join("sds.sock"))
        .args(trust)
        .env("SIGNET_JOIN_TOKEN", token)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap());
    (cmd.spawn().unwrap(), dir)
}

/// Waits for the child to exit (at most `within`); kills it otherwise.
fn wait_exit(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[tokio::test]
async fn a_pinned_root_hash_is_enough_and_a_wrong_one_is_refused_before_the_token_is_sent() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let token = ca.token_cli("pinned", None).await.unwrap();

    // A wrong pin: the agent must give up without attesting.
    let wrong = format!("sha256:{}", "00".repeat(32));
    let (mut child, dir) = spawn_agent(&ca, &token, &["--ca-root-hash", &wrong]);
    let status = wait_exit(&mut child, Duration::from_secs(20))
        .expect("the agent kept running with a wrong pin");
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    assert!(
        log.contains("pinned root"),
        "the refusal should name the pin: {log}"
    );

    // The token was never presented, so it still works with the right pin.
    let (mut child, dir) = spawn_agent(&ca, &token, &["--ca-root-hash", &root_pin(&ca)]);
    let socket = dir.path().join("api.sock");
    let end = Instant::now() + Duration::from_secs(20);
    while !socket.exists() && Instant::now() < end {
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
            panic!("the agent exited ({status}) with the right pin: {log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(socket.exists(), "the agent did not start serving: {log}");
    assert!(log.contains("attested to the CA"), "{log}");
}

#[tokio::test]
async fn without_any_first_start_trust_the_agent_refuses_to_start() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let token = ca.token_cli("untrusting", None).await.unwrap();
    let (mut child, dir) = spawn_agent(&ca, &token, &[]);
    let status = wait_exit(&mut child, Duration::from_secs(20))
        .expect("the agent started without any trust");
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    assert!(
        log.contains("--insecure-bootstrap"),
        "the message should name the ways to trust the CA: {log}"
    );
    // The token is untouched: an agent given the bundle can still use it.
    let (mut child, dir) = spawn_agent(
        &ca,
        &token,
        &["--trust-bundle", ca.bundle_path().to_str().unwrap()],
    );
    let socket = dir.path().join("api.sock");
    let end = Instant::now() + Duration::from_secs(20);
    while !socket.exists() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(socket.exists(), "the token should still be valid");
}
