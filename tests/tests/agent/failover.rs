//! Failover between CA replicas: two signet-ca processes of one trust
//! domain, the second started from a consistent copy of the first's data
//! directory after the agent attested (`CaProcess::start_copy`; replicas
//! that share a database come with the PostgreSQL store: this tests the
//! agent's failover mechanics only), and one agent configured with both
//! addresses. Workloads watch their X.509 SVIDs with the `spiffe` crate and
//! with py-spiffe; neither may see an error while the agent moves.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt as _;
use signet_tests::{AgentProcess, CaOptions, CaProcess, Scrape, free_loopback_addr, scrape_until};

use crate::{Node, me, serial_of};

/// The workload SVID's lifetime: renewed 9 to 11 s after it arrives, time
/// enough for the agent to move first.
const TTL: &str = "20s";

/// Longest wait for a renewal, a move or a metric.
const LONG_WAIT: Duration = Duration::from_secs(30);

struct Replicas {
    /// The agent and the first CA (the one it attested with).
    node: Node,
    second: CaProcess,
    agent_metrics: SocketAddr,
    second_metrics: SocketAddr,
    /// `spiffe://<td>/web`.
    id: String,
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The first CA, an agent given both addresses (the second not up yet, so
/// the agent attests with, and stays on, the first), an entry for this
/// process, then the second CA from a copy of the first's state.
async fn replicas() -> Replicas {
    let first = CaProcess::start(CaOptions::default().flag("shutdown-grace", "10s"))
        .await
        .unwrap();
    let second_port = free_port();
    let addresses = format!("127.0.0.1:{},127.0.0.1:{second_port}", first.port());
    let agent_metrics = free_loopback_addr().unwrap();
    let agent = AgentProcess::start(
        &first,
        "node-a",
        &[
            "--ca-address",
            &addresses,
            "--metrics-listen",
            &agent_metrics.to_string(),
        ],
    )
    .await
    .unwrap();
    let node = Node { agent, ca: first };
    node.entry("/web", &me(), &["--ttl", TTL]).await;
    node.wait_for_svid("/web").await;
    let second_metrics = free_loopback_addr().unwrap();
    let second = node
        .ca
        .start_copy(
            second_port,
            CaOptions::default()
                .flag("shutdown-grace", "10s")
                .flag("metrics-listen", second_metrics.to_string()),
        )
        .await
        .unwrap();
    Replicas {
        id: node.ca.id("/web"),
        node,
        second,
        agent_metrics,
        second_metrics,
    }
}

fn failovers(s: &Scrape, reason: &str) -> f64 {
    s.value("signet_agent_ca_failovers_total", &[("reason", reason)])
        .unwrap_or(0.0)
}

/// Waits until the agent has moved (by `reason`) and the second CA holds
/// its bundle stream.
async fn wait_for_move(r: &Replicas, reason: &str) {
    let moved = scrape_until(r.agent_metrics, LONG_WAIT, |s| failovers(s, reason) >= 1.0).await;
    assert!(
        moved.is_ok(),
        "the agent did not move ({reason}): {moved:?}\n--- agent log ---\n{}",
        r.node.agent.log()
    );
    let held = scrape_until(r.second_metrics, LONG_WAIT, |s| {
        s.value("signet_ca_connected_agents", &[]) == Some(1.0)
    })
    .await;
    assert!(
        held.is_ok(),
        "the second CA has no agent stream: {held:?}\n--- agent log ---\n{}",
        r.node.agent.log()
    );
}

/// The serials of `sign_x509_svid` calls `ca` issued for `id` after `mark`.
fn issued(ca: &CaProcess, mark: i64, id: &str) -> Vec<String> {
    ca.audit_since(mark)
        .unwrap()
        .into_iter()
        .filter(|r| r.action == "sign_x509_svid" && r.result == "issued" && r.spiffe_id == id)
        .map(|r| r.serial)
        .collect()
}

/// Follows the `spiffe` crate's X.509 context stream until it shows a
/// serial other than `than`; every item must be a context (no error) and
/// the stream must not end.
async fn next_serial(
    stream: &mut (
             impl futures::Stream<Item = Result<spiffe::X509Context, spiffe::WorkloadApiError>> + Unpin
         ),
    than: &str,
    agent: &AgentProcess,
) -> String {
    loop {
        let item = tokio::time::timeout(LONG_WAIT, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no new SVID on the stream\n--- agent log ---\n{}",
                    agent.log()
                )
            });
        let context = match item {
            Some(Ok(c)) => c,
            Some(Err(e)) => panic!(
                "the workload's stream failed: {e:?}\n--- agent log ---\n{}",
                agent.log()
            ),
            None => panic!(
                "the workload's stream ended\n--- agent log ---\n{}",
                agent.log()
            ),
        };
        let svid = context.default_svid().expect("an SVID in every context");
        let serial = serial_of(svid);
        if serial != than {
            return serial;
        }
    }
}

/// py-spiffe's `watch` on the agent's socket, in the background: it reports
/// every update until it sees a second serial.
fn py_spiffe_watch(socket: &Path) -> tokio::process::Child {
    let python = std::env::var_os("SIGNET_PYTHON").unwrap_or_else(|| {
        panic!("SIGNET_PYTHON is not set: point it at a Python with spiffe==0.3.2 (scripts/test.sh sets it)")
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/pyspiffe_client.py");
    tokio::process::Command::new(python)
        .arg(script)
        .args(["watch", "--socket"])
        .arg(socket)
        .args(["--timeout", "60"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// py-spiffe's report: no error on its stream, and the renewed SVID seen.
async fn py_spiffe_report(child: tokio::process::Child, renewed: &str, agent: &AgentProcess) {
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("py-spiffe's watch ran past its own timeout")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "py-spiffe failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["errors"],
        serde_json::json!([]),
        "py-spiffe's stream failed: {report:#}\n--- agent log ---\n{}",
        agent.log()
    );
    // py-spiffe prints the serial as a number in hex: no leading zeros.
    let serials: Vec<&str> = report["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["serial"].as_str().unwrap().trim_start_matches('0'))
        .collect();
    let renewed = renewed.trim_start_matches('0');
    assert!(
        serials.contains(&renewed),
        "py-spiffe did not see the SVID the second CA issued ({renewed}): {serials:?}"
    );
}

#[tokio::test]
async fn sigterm_moves_the_agent_to_the_other_replica_without_a_workload_error() {
    let mut r = replicas().await;
    let client = r.node.client().await;
    let mut stream = Box::pin(client.stream_x509_contexts().await.unwrap());
    let first = next_serial(&mut stream, "", &r.node.agent).await;
    let py = py_spiffe_watch(r.node.agent.workload_api_socket());
    let mark = r.second.audit_mark().unwrap();

    // Drain the replica the agent is on; it exits within its grace period.
    let sigterm = std::time::Instant::now();
    let status = r.node.ca.stop().await.unwrap();
    assert!(
        status.success(),
        "the first CA exited with {status}\n{}",
        r.node.ca.log()
    );
    let exited = sigterm.elapsed();
    wait_for_move(&r, "drain").await;
    // A figure, not a check (metrics are polled: an upper bound).
    eprintln!(
        "SIGTERM to exit: {exited:?}; SIGTERM to the agent's move seen in its metrics: {:?}",
        sigterm.elapsed()
    );
    // The agent took the drain status as "move now", not as a failure.
    let log = r.node.agent.log();
    assert!(
        log.contains("the CA replica drains; moving the bundle stream")
            && log.contains("the CA replica drains; moving the entry stream"),
        "the agent did not recognise the drain\n--- agent log ---\n{log}"
    );
    // The agent's own timestamps of the drain and the move, for the record.
    for line in log
        .lines()
        .filter(|l| l.contains("replica drains") || l.contains("moved to another CA replica"))
    {
        eprintln!("agent: {line}");
    }
    assert!(
        !log.contains("stream interrupted"),
        "a stream backed off instead of moving\n--- agent log ---\n{log}"
    );

    // The renewal after the move is the second CA's.
    let renewed = next_serial(&mut stream, &first, &r.node.agent).await;
    assert!(
        issued(&r.second, mark, &r.id).contains(&renewed),
        "the renewed SVID {renewed} is not in the second CA's audit log\n--- agent log ---\n{}",
        r.node.agent.log()
    );
    py_spiffe_report(py, &renewed, &r.node.agent).await;
}

#[tokio::test]
async fn sigkill_then_every_replica_down_then_one_back() {
    let mut r = replicas().await;
    let client = r.node.client().await;
    let mut stream = Box::pin(client.stream_x509_contexts().await.unwrap());
    let first = next_serial(&mut stream, "", &r.node.agent).await;
    let py = py_spiffe_watch(r.node.agent.workload_api_socket());
    let mark = r.second.audit_mark().unwrap();

    // A crash: no drain status, only connection errors.
    r.node.ca.kill_hard();
    wait_for_move(&r, "unreachable").await;
    let renewed = next_serial(&mut stream, &first, &r.node.agent).await;
    assert!(
        issued(&r.second, mark, &r.id).contains(&renewed),
        "the renewed SVID {renewed} is not in the second CA's audit log\n--- agent log ---\n{}",
        r.node.agent.log()
    );
    py_spiffe_report(py, &renewed, &r.node.agent).await;

    // Every replica down: the agent keeps serving the SVID it holds.
    r.second.kill_hard();
    let held = r.node.wait_for_svid("/web").await;
    assert_eq!(serial_of(&held), renewed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = r.node.wait_for_svid("/web").await;
    assert_eq!(
        serial_of(&still),
        renewed,
        "the agent stopped serving its valid SVID"
    );

    // One comes back: the agent returns to it and its next SVID is that one's.
    let mark_first = r.node.ca.audit_mark().unwrap();
    r.node.ca.start_again().await.unwrap();
    let recovered = next_serial(&mut stream, &renewed, &r.node.agent).await;
    assert!(
        issued(&r.node.ca, mark_first, &r.id).contains(&recovered),
        "the SVID after recovery ({recovered}) is not in the first CA's audit log\n--- agent log ---\n{}",
        r.node.agent.log()
    );
}
