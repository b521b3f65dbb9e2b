//! Envoy as the workload: two Envoys (client and server, each under its own
//! uid) get every certificate over SDS from one signet-agent and carry
//! HTTP over mTLS between them while the SVIDs rotate, the CA crashes and
//! comes back, and the agent restarts; Envoys the agent must not serve
//! (another SPIFFE ID, or no entry at all) get nowhere.
//!
//! Needs the workspace binaries (`cargo build --workspace --bins`), Envoy
//! (`SIGNET_ENVOY`, or `.venv-envoy` as `scripts/test.sh` installs it),
//! `setpriv`, and root (to run the Envoys under other uids). The SVIDs live
//! 30 s, so the tests take time: the rotation test keeps traffic flowing
//! for 70 s, the fault test for about 25 s.

// This whole crate is test code: a failed expectation should panic with
// its message, in helpers as in the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use signet_tests::{
    AgentProcess, CaOptions, CaProcess, EnvoyOptions, EnvoyProcess, SERVER_BODY, SerialHistory,
    Traffic, Validation, envoy_binary,
};

/// The uids the Envoys run under; the agent attests them as `unix:uid:N`.
const CLIENT_UID: u32 = 4241;
const SERVER_UID: u32 = 4242;
/// Has no registration entry at all.
const UNREGISTERED_UID: u32 = 4243;
/// Has an entry, for a SPIFFE ID the server does not accept.
const INTRUDER_UID: u32 = 4244;

/// The SVIDs' lifetime (`--ttl` of the entries, and the CA's default): the
/// agent renews at about half of it.
const SVID_TTL: &str = "30s";
const SVID_LIFETIME: Duration = Duration::from_secs(30);

/// One request through the mesh every this often.
const REQUEST_INTERVAL: Duration = Duration::from_millis(200);

/// How often `/certs` is read for new serials.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);

/// A CA, an agent, and the two entries of the mesh.
struct Mesh {
    ca: CaProcess,
    agent: AgentProcess,
    client_id: String,
    server_id: String,
}

impl Mesh {
    async fn start(node: &str) -> Self {
        // Before any process starts: a missing Envoy fails the test at once.
        envoy_binary().unwrap();
        let ca = CaProcess::start(
            CaOptions::default()
                .flag("default-x509-svid-ttl", SVID_TTL)
                .flag("max-x509-svid-ttl", "24h"),
        )
        .await
        .unwrap();
        let agent = AgentProcess::start(&ca, node, &[]).await.unwrap();
        let client_id = ca.id("/client");
        let server_id = ca.id("/server");
        register(&ca, node, &client_id, CLIENT_UID).await;
        register(&ca, node, &server_id, SERVER_UID).await;
        Self {
            ca,
            agent,
            client_id,
            server_id,
        }
    }

    /// Starts the server Envoy, then a client Envoy in front of it, both
    /// LIVE (every secret served) on return.
    async fn envoys(
        &self,
        server_validation: Validation,
        client_validation: Validation,
    ) -> (EnvoyProcess, EnvoyProcess) {
        let sds = self.agent.sds_socket();
        let server = EnvoyProcess::start(
            EnvoyOptions::server("server", SERVER_UID, sds, &self.client_id)
                .validation(server_validation),
        )
        .await
        .unwrap();
        let client = EnvoyProcess::start(
            EnvoyOptions::client(
                "client",
                CLIENT_UID,
                sds,
                server.port().unwrap(),
                &self.server_id,
            )
            .validation(client_validation),
        )
        .await
        .unwrap();
        assert_leaf_is(&server, &self.server_id).await;
        assert_leaf_is(&client, &self.client_id).await;
        let first = client.get("/").await.unwrap();
        assert_eq!(
            (first.status, first.body.as_str()),
            (200, SERVER_BODY),
            "the first request through client → server failed\n{}\n{}",
            client.log(),
            server.log()
        );
        (server, client)
    }

    /// The agent's log, for assertion messages.
    fn agent_log(&self) -> String {
        format!("--- signet-agent log ---\n{}", self.agent.log())
    }
}

/// `signet ca entry create` for a workload of `node` running as `uid`.
async fn register(ca: &CaProcess, node: &str, spiffe_id: &str, uid: u32) {
    let selector = format!("unix:uid:{uid}");
    ca.entry_cli(&[
        "--spiffe-id",
        spiffe_id,
        "--parent-node",
        node,
        "--selector",
        &selector,
        "--ttl",
        SVID_TTL,
    ])
    .await
    .unwrap();
}

/// Every leaf Envoy has loaded carries exactly `spiffe_id`.
async fn assert_leaf_is(envoy: &EnvoyProcess, spiffe_id: &str) {
    let certs = envoy.leaf_certs().await.unwrap();
    assert!(
        !certs.is_empty(),
        "{} has loaded no certificate",
        envoy.name()
    );
    for cert in &certs {
        assert_eq!(
            cert.uri_sans,
            vec![spiffe_id.to_owned()],
            "{} loaded a certificate for another identity: {cert:?}",
            envoy.name()
        );
    }
}

/// A request from the intruder is refused by the server's SAN check: the
/// intruder gets no 200, and the server counts a SAN verification failure.
async fn assert_intruder_refused(intruder: &EnvoyProcess, server: &EnvoyProcess) {
    let fail_san = EnvoyProcess::listener_ssl_stat("fail_verify_san");
    let before = server.stats(&[&fail_san]).await.unwrap()[0];
    let response = intruder.get("/").await.unwrap();
    assert_ne!(
        response.status, 200,
        "the server answered an intruder: {response:?}"
    );
    assert!(
        response.body.contains("upstream connect error"),
        "the intruder's request failed, but not at the TLS handshake: {response:?}"
    );
    // The server counts the failure when it finishes the handshake, which
    // may be just after the intruder has given up.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let after = server.stats(&[&fail_san]).await.unwrap()[0];
        if after > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not count the intruder's handshake as {fail_san} (still {after})\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every request of `traffic` so far succeeded; otherwise the message shows
/// what each Envoy holds and the agent's log.
async fn assert_no_failures(
    traffic: &Traffic,
    when: &str,
    mesh: &Mesh,
    envoys: &[&EnvoyProcess],
    history: &SerialHistory,
) {
    let failures = traffic.failures();
    if failures.is_empty() {
        return;
    }
    let mut summaries = Vec::new();
    for envoy in envoys {
        summaries.push(envoy.summary().await);
    }
    panic!(
        "{} of {} requests failed {when}:\n{}\n--- serials first seen (since {:.1?} ago) ---\n{}\n--- Envoys now ---\n{}\n{}",
        failures.len(),
        traffic.outcomes().len(),
        failures.join("\n"),
        traffic.elapsed(),
        history.timeline(),
        summaries.join("\n"),
        mesh.agent_log()
    );
}

/// Samples `/certs` until each Envoy has shown a serial outside `known`.
async fn wait_new_serials(
    history: &mut SerialHistory,
    envoys: &[&EnvoyProcess],
    known: &[BTreeSet<String>],
    timeout: Duration,
    mesh: &Mesh,
) -> Duration {
    let started = Instant::now();
    loop {
        history.sample(envoys).await.unwrap();
        let renewed = envoys
            .iter()
            .zip(known)
            .all(|(e, old)| !history.of(e.name()).is_subset(old));
        if renewed {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "no new certificate in {timeout:?}; serials first seen:\n{}\n{}",
            history.timeline(),
            mesh.agent_log()
        );
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
}

/// The acceptance test: client → server over mTLS, every
/// certificate from SDS, requests every 200 ms (each a new handshake)
/// across at least two rotations of both SVIDs, none failing; an Envoy
/// holding a valid SVID for another SPIFFE ID is refused by the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_between_envoys_across_rotations() {
    let mesh = Mesh::start("envoy-rotation").await;
    let intruder_id = mesh.ca.id("/intruder");
    register(&mesh.ca, "envoy-rotation", &intruder_id, INTRUDER_UID).await;
    // The server checks the client with the plain roots, the client checks
    // the server with Envoy's SPIFFE validator: both SDS validation shapes.
    let (server, client) = mesh.envoys(Validation::RootCa, Validation::SpiffeAll).await;
    let intruder = EnvoyProcess::start(EnvoyOptions::client(
        "intruder",
        INTRUDER_UID,
        mesh.agent.sds_socket(),
        server.port().unwrap(),
        &mesh.server_id,
    ))
    .await
    .unwrap();
    assert_leaf_is(&intruder, &intruder_id).await;
    assert_intruder_refused(&intruder, &server).await;

    let traffic = Traffic::start(client.port().unwrap(), REQUEST_INTERVAL, SERVER_BODY);
    let mut history = SerialHistory::default();
    // At least two rotations of each SVID (three serials per Envoy), and
    // traffic for longer than two lifetimes: an agent that stopped renewing
    // would let the certificates expire inside the window and fail requests.
    let min_run = 2 * SVID_LIFETIME + Duration::from_secs(10);
    let deadline = min_run + Duration::from_secs(30);
    let mut last_intruder_check = Instant::now();
    loop {
        history.sample(&[&server, &client]).await.unwrap();
        let rotated = ["server", "client"]
            .iter()
            .all(|n| history.of(n).len() >= 3);
        if rotated && traffic.elapsed() >= min_run {
            break;
        }
        for name in ["server", "client"] {
            let quiet = history.since_last_new(name);
            assert!(
                quiet < SVID_LIFETIME,
                "the {name} Envoy has had the same certificate for {quiet:.1?}, longer than \
                 the SVIDs' {SVID_LIFETIME:?} lifetime: the agent stopped renewing it \
                 (it should renew at about half the lifetime); serials first seen:\n{}\n{}",
                history.timeline(),
                mesh.agent_log()
            );
        }
        assert!(
            traffic.elapsed() < deadline,
            "fewer than two rotations in {deadline:?}; serials first seen:\n{}\n{}",
            history.timeline(),
            mesh.agent_log()
        );
        assert_no_failures(
            &traffic,
            "while the SVIDs rotated",
            &mesh,
            &[&server, &client],
            &history,
        )
        .await;
        // Refused before and after each rotation, not only at the start.
        if last_intruder_check.elapsed() > Duration::from_secs(5) {
            assert_intruder_refused(&intruder, &server).await;
            last_intruder_check = Instant::now();
        }
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
    let took = traffic.elapsed();
    assert_no_failures(
        &traffic,
        "while the SVIDs rotated",
        &mesh,
        &[&server, &client],
        &history,
    )
    .await;
    let outcomes = traffic.stop().await;
    // A stalled driver would pass the check above by sending nothing.
    let expected = took.as_millis() / REQUEST_INTERVAL.as_millis() / 2;
    assert!(
        outcomes.len() as u128 >= expected,
        "only {} requests in {took:?}",
        outcomes.len()
    );
    assert_leaf_is(&server, &mesh.server_id).await;
    assert_leaf_is(&client, &mesh.client_id).await;
    assert_intruder_refused(&intruder, &server).await;
    eprintln!(
        "{} requests in {took:.1?}, all 200; serials first seen:\n{}\n{}\n{}",
        outcomes.len(),
        history.timeline(),
        server.summary().await,
        client.summary().await
    );

    shut_down(mesh, vec![intruder, client, server]).await;
}

/// Faults while traffic flows: the CA dies (SIGKILL) and the Envoys keep
/// working on the SVIDs they hold; it comes back and rotation resumes; the
/// agent restarts and both Envoys are served again at once; an Envoy under
/// a uid with no entry gets nothing, and nothing else notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_ride_out_ca_crash_and_agent_restart() {
    let mut mesh = Mesh::start("envoy-faults").await;
    let intruder_id = mesh.ca.id("/intruder");
    register(&mesh.ca, "envoy-faults", &intruder_id, INTRUDER_UID).await;
    // The other way round from the rotation test: here the server checks
    // its clients with Envoy's SPIFFE validator (`ALL`), and must still
    // hold them to the one SPIFFE ID.
    let (server, client) = mesh.envoys(Validation::SpiffeAll, Validation::RootCa).await;
    let intruder = EnvoyProcess::start(EnvoyOptions::client(
        "intruder",
        INTRUDER_UID,
        mesh.agent.sds_socket(),
        server.port().unwrap(),
        &mesh.server_id,
    ))
    .await
    .unwrap();
    assert_intruder_refused(&intruder, &server).await;
    let traffic = Traffic::start(client.port().unwrap(), REQUEST_INTERVAL, SERVER_BODY);
    let envoys = [&server, &client];
    let mut history = SerialHistory::default();
    history.sample(&envoys).await.unwrap();

    // 1. The CA crashes, timed so that the outage spans the agent's
    //    renewal at about half the SVIDs' life (13.5 s to 16.5 s of 30 s):
    //    that renewal fails, and the Envoys keep working on the SVIDs they
    //    hold. Down from 10 s to about 16.5 s: short enough that the agent's
    //    retry backoff (0.5 s doubling) brings it back to the CA well
    //    before those SVIDs expire.
    let expiry = earliest_expiry(&envoys).await;
    if let Ok(wait) = (expiry - Duration::from_secs(20)).duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    mesh.ca.kill_hard();
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(6) {
        history.sample(&envoys).await.unwrap();
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
    assert_no_failures(&traffic, "while the CA was down", &mesh, &envoys, &history).await;

    // 2. The CA comes back on the same data directory and port: the agent
    //    reconnects and renews, and both Envoys get new certificates.
    mesh.ca.start_again().await.unwrap();
    let refusals = mesh
        .agent
        .log()
        .matches("signing SVIDs failed; still-valid SVIDs stay in service")
        .count();
    eprintln!(
        "the CA was down {:.1?}; the agent's renewal failed {refusals} times meanwhile",
        outage.elapsed()
    );
    let known: Vec<BTreeSet<String>> = envoys.iter().map(|e| history.of(e.name())).collect();
    let renewal = wait_new_serials(&mut history, &envoys, &known, SVID_LIFETIME, &mesh).await;
    eprintln!(
        "new SVIDs in both Envoys {renewal:.1?} after the CA came back; serials first seen:\n{}",
        history.timeline()
    );
    assert_no_failures(&traffic, "after the CA came back", &mesh, &envoys, &history).await;

    // 3. The agent restarts (SIGTERM, then the same data directory and
    //    sockets). Envoy reconnects on its own and is served again.
    let before = all_sds_counters(&envoys).await;
    let status = mesh.agent.stop().await.unwrap();
    assert!(
        status.success(),
        "signet-agent exited with {status} on SIGTERM\n{}",
        mesh.agent_log()
    );
    mesh.agent.start_again().await.unwrap();
    let back = Instant::now();
    loop {
        let now = all_sds_counters(&envoys).await;
        // Both streams connected again, and the certificate sent again.
        let served = now
            .iter()
            .zip(&before)
            .all(|(n, b)| n[0] == 1 && n[1] == 1 && n[2] > b[2]);
        if served {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(3),
            "the Envoys were not served again within 3 s of the agent's restart: \
             [default connected, validation connected, default updates] per Envoy \
             were {before:?}, are {now:?}\n{}\n{}\n{}",
            server.log(),
            client.log(),
            mesh.agent_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reconnect = back.elapsed();
    eprintln!("both Envoys served again {reconnect:.2?} after the agent's sockets came back");
    assert!(
        reconnect < Duration::from_secs(1),
        "the Envoys took {reconnect:?} to be served again after the agent restarted"
    );
    assert_leaf_is(&server, &mesh.server_id).await;
    assert_leaf_is(&client, &mesh.client_id).await;
    assert_no_failures(
        &traffic,
        "across the agent's restart",
        &mesh,
        &envoys,
        &history,
    )
    .await;

    // 4. A workload with no entry: the agent refuses its SDS streams, so it
    //    never gets a certificate and never goes live.
    let unregistered = EnvoyProcess::spawn(EnvoyOptions::client(
        "unregistered",
        UNREGISTERED_UID,
        mesh.agent.sds_socket(),
        server.port().unwrap(),
        &mesh.server_id,
    ))
    .await
    .unwrap();
    let refused = Instant::now();
    loop {
        let failures = unregistered
            .stats(&["sds.default.update_failure"])
            .await
            .unwrap()[0];
        if failures >= 2 && refused.elapsed() > Duration::from_secs(3) {
            break;
        }
        assert!(
            refused.elapsed() < Duration::from_secs(15),
            "the agent did not refuse the unregistered Envoy's SDS stream\n{}\n{}",
            unregistered.log(),
            mesh.agent_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let state = unregistered.ready_state().await.unwrap();
    assert_ne!(state, "LIVE", "an Envoy with no entry went live");
    let updates = unregistered
        .stats(&["sds.default.update_success"])
        .await
        .unwrap()[0];
    assert_eq!(updates, 0, "an Envoy with no entry was sent a certificate");
    assert!(
        unregistered.leaf_certs().await.unwrap().is_empty(),
        "an Envoy with no entry loaded a certificate"
    );
    let agent_log = mesh.agent.log();
    assert!(
        agent_log.contains(&format!("uid={UNREGISTERED_UID}"))
            && agent_log.contains("no registration entry matches the caller"),
        "the agent did not log why it refused uid {UNREGISTERED_UID}\n{agent_log}"
    );
    // Nothing else changed.
    for envoy in envoys {
        assert_eq!(envoy.ready_state().await.unwrap(), "LIVE");
        let now = sds_counters(envoy).await;
        assert_eq!(
            (now[0], now[1]),
            (1, 1),
            "{} lost its SDS streams",
            envoy.name()
        );
    }
    assert_no_failures(
        &traffic,
        "while an unregistered Envoy was refused",
        &mesh,
        &envoys,
        &history,
    )
    .await;

    let outcomes = traffic.stop().await;
    eprintln!(
        "{} requests, all 200, through a CA crash and an agent restart",
        outcomes.len()
    );
    shut_down(mesh, vec![unregistered, intruder, client, server]).await;
}

/// `[default connected, validation secret connected, default update_success]`.
async fn sds_counters(envoy: &EnvoyProcess) -> Vec<u64> {
    let [default, validation] = envoy.options().secret_names();
    envoy
        .stats(&[
            &format!("sds.{default}.control_plane.connected_state"),
            &format!("sds.{validation}.control_plane.connected_state"),
            &format!("sds.{default}.update_success"),
        ])
        .await
        .unwrap()
}

/// The earliest notAfter of the leaf certificates the Envoys hold.
async fn earliest_expiry(envoys: &[&EnvoyProcess]) -> SystemTime {
    let mut earliest: Option<SystemTime> = None;
    for envoy in envoys {
        for cert in envoy.leaf_certs().await.unwrap() {
            let t = cert.not_after().unwrap();
            earliest = Some(earliest.map_or(t, |e| e.min(t)));
        }
    }
    earliest.expect("the Envoys hold no certificate")
}

/// [`sds_counters`] of each Envoy.
async fn all_sds_counters(envoys: &[&EnvoyProcess]) -> Vec<Vec<u64>> {
    let mut all = Vec::with_capacity(envoys.len());
    for envoy in envoys {
        all.push(sds_counters(envoy).await);
    }
    all
}

/// Stops every process by its PID, Envoys first, and checks each exited.
async fn shut_down(mut mesh: Mesh, envoys: Vec<EnvoyProcess>) {
    for mut envoy in envoys {
        envoy.stop().await.unwrap();
        assert!(envoy.pid().is_none());
    }
    mesh.agent.stop().await.unwrap();
    mesh.ca.stop().await.unwrap();
}
