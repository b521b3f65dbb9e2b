//! (c) JWT signing keys rotate twice (`signet ca authority prepare jwt`,
//! then `activate` once every agent acknowledged the bundle that carries
//! the new key) while one workload keeps minting JWT-SVIDs (the `spiffe`
//! crate) and another keeps validating them (py-spiffe, under its own uid,
//! both locally against the JWT bundle the agent serves it and through the
//! agent's ValidateJWTSVID). Not one validation may fail.
//!
//! The CA's automatic JWT cycle cannot run in test time: the longest
//! JWT-SVID (1 h) must fit in jwt_key_ttl x rotation_activate_before, so a
//! key lives at least 2 h; the manual path goes through the same prepare,
//! publish, gate and activate steps.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use signet_proto::ca::v1 as pb;
use signet_tests::{AgentProcess, CaOptions, CaProcess};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use crate::{SAMPLE_INTERVAL, active, authorities, authority_cli, python, register};

/// The minting workload is this test process.
fn my_uid() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// The validating workload's uid.
const VALIDATOR_UID: u32 = 4333;

/// One token minted and validated every this often.
const MINT_INTERVAL: Duration = Duration::from_millis(100);

/// Tokens validated under a new key before the next step.
const PER_KEY: usize = 20;

/// What happened to one token.
#[derive(Debug, Clone)]
struct Checked {
    kid: String,
    result: Result<(), String>,
}

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["kid"].as_str().unwrap_or_default().to_owned()
}

/// Mints a token for a new audience every [`MINT_INTERVAL`] (a new
/// audience each time, so the agent's cache never answers with an old
/// token) and hands it to the validator; records every outcome.
async fn mint_and_validate(
    agent_endpoint: String,
    validator: &mut tokio::process::Child,
    running: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Checked>>>,
) {
    let client = spiffe::WorkloadApiClient::connect_to(&agent_endpoint)
        .await
        .unwrap();
    let mut stdin = validator.stdin.take().unwrap();
    let mut lines = BufReader::new(validator.stdout.take().unwrap()).lines();
    let mut n = 0u64;
    while running.load(Ordering::Relaxed) {
        n += 1;
        let audience = format!("trust-e2e-{n}");
        let checked = match client.fetch_jwt_svid([audience.as_str()], None).await {
            Err(e) => Checked {
                kid: String::new(),
                result: Err(format!("minting: {e}")),
            },
            Ok(svid) => {
                let token = svid.token().to_owned();
                let kid = kid_of(&token);
                stdin
                    .write_all(format!("{audience} {token}\n").as_bytes())
                    .await
                    .unwrap();
                let line = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
                    .await
                    .expect("the validator did not answer within 15 s")
                    .unwrap()
                    .expect("the validator ended");
                let v: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("validator printed {line:?}: {e}"));
                let result = if v["ok"] == true {
                    if v["kid"] == kid.as_str() {
                        Ok(())
                    } else {
                        Err(format!(
                            "validated under {} but minted under {kid}",
                            v["kid"]
                        ))
                    }
                } else {
                    Err(v["error"].as_str().unwrap_or("?").to_owned())
                };
                Checked { kid, result }
            }
        };
        log.lock().unwrap().push(checked);
        tokio::time::sleep(MINT_INTERVAL).await;
    }
}

/// Validated tokens per key id, and every failure.
fn tally(log: &Mutex<Vec<Checked>>) -> (BTreeMap<String, usize>, Vec<String>) {
    let log = log.lock().unwrap();
    let mut per_kid = BTreeMap::new();
    let mut failures = Vec::new();
    for (i, c) in log.iter().enumerate() {
        match &c.result {
            Ok(()) => *per_kid.entry(c.kid.clone()).or_insert(0) += 1,
            Err(e) => failures.push(format!("token {i} (kid {}): {e}", c.kid)),
        }
    }
    (per_kid, failures)
}

/// Waits until `n` tokens signed by `kid` have been validated, failing at
/// the first failed validation.
async fn wait_validated(
    log: &Mutex<Vec<Checked>>,
    kid: &str,
    n: usize,
    agent: &AgentProcess,
    ca: &CaProcess,
) {
    let started = Instant::now();
    loop {
        let (per_kid, failures) = tally(log);
        assert!(
            failures.is_empty(),
            "{} JWT-SVID validations failed:\n{}\n--- agent log ---\n{}",
            failures.len(),
            failures.join("\n"),
            agent.log()
        );
        if per_kid.get(kid).copied().unwrap_or(0) >= n {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "fewer than {n} tokens under key {kid} validated in 60 s: {per_kid:?}\n--- CA log ---\n{}",
            ca.log()
        );
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
}

/// Prepares a JWT key, waits until every connected agent acknowledged the
/// bundle that carries it, and activates it (without --force: the gate
/// must pass). Returns its id.
async fn rotate_jwt(ca: &CaProcess) -> String {
    let prepared = authority_cli(ca, &["prepare", "jwt"]).await;
    let id = prepared["authority"]["id"].as_str().unwrap().to_owned();
    assert_eq!(prepared["authority"]["state"], "prepared", "{prepared}");
    let started = Instant::now();
    loop {
        let all = authorities(ca).await;
        let a = all.iter().find(|a| a.id == id).unwrap();
        if a.agents_connected >= 1 && a.agents_acknowledged >= a.agents_connected {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the agent did not acknowledge the bundle with JWT key {id} in 30 s: {a:?}"
        );
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
    let activated = authority_cli(ca, &["activate", &id]).await;
    assert_eq!(activated["authority"]["state"], "active", "{activated}");
    id
}

/// The test (c).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_keys_rotate_while_one_workload_mints_and_another_validates() {
    let python = python();
    let ca = CaProcess::start(CaOptions::default().flag("agent-sync-interval", "1s"))
        .await
        .unwrap();
    let agent = AgentProcess::start(&ca, "jwt", &[]).await.unwrap();
    register(&ca, "jwt", &ca.id("/minter"), my_uid(), "1h", &[]).await;
    register(&ca, "jwt", &ca.id("/validator"), VALIDATOR_UID, "1h", &[]).await;

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join("jwt_validator.py");
    let uid = VALIDATOR_UID.to_string();
    let mut validator = tokio::process::Command::new("setpriv")
        .args(["--reuid", &uid, "--regid", &uid, "--clear-groups"])
        .arg(&python)
        .arg(&script)
        .arg("--socket")
        .arg(agent.workload_api_socket())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let validator_pid = validator.id().unwrap();

    let first = active(&ca, pb::AuthorityKind::Jwt).await;
    let running = Arc::new(AtomicBool::new(true));
    let log = Arc::new(Mutex::new(Vec::new()));
    let driver = tokio::spawn({
        let endpoint = agent.workload_api_endpoint();
        let running = running.clone();
        let log = log.clone();
        async move {
            mint_and_validate(endpoint, &mut validator, running, log).await;
            validator
        }
    });
    wait_validated(&log, &first.id, PER_KEY, &agent, &ca).await;
    let second = rotate_jwt(&ca).await;
    wait_validated(&log, &second, PER_KEY, &agent, &ca).await;
    let third = rotate_jwt(&ca).await;
    wait_validated(&log, &third, PER_KEY, &agent, &ca).await;

    running.store(false, Ordering::Relaxed);
    let mut validator = driver.await.unwrap();
    let (per_kid, failures) = tally(&log);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        per_kid.keys().cloned().collect::<Vec<_>>().len(),
        3,
        "tokens under other keys than the three: {per_kid:?}"
    );
    eprintln!(
        "{} JWT-SVIDs minted and validated across two key rotations, none failed: {per_kid:?}",
        per_kid.values().sum::<usize>()
    );
    // The validator ends with its input.
    assert_eq!(validator.id(), Some(validator_pid));
    drop(validator.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(10), validator.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "the validator exited with {status}");
    let mut agent = agent;
    agent.stop().await.unwrap();
}
