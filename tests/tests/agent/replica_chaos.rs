//! The chaos test of several replicas (issue 9, Deliver 5, first bullet):
//! one real PostgreSQL, two CA replicas on it, two agents (one per node)
//! given both replicas' addresses, and a client Envoy on one node talking
//! mTLS to a server Envoy on the other under continuous traffic, every
//! request on a new handshake. Then: SIGKILL the replica both agents use,
//! restart it, stop PostgreSQL for 20 s, start it again, run on.
//!
//! Judged from outside the product: every request must succeed, and the
//! certificate each Envoy presents (read from Envoy's admin API) must at
//! every sample be inside its validity with a margin to spare, must chain
//! to the replicas' bundle by `openssl verify`, and must have been renewed
//! several times over the run.
//!
//! Needs the workspace binaries, Envoy (`SIGNET_ENVOY`), `setpriv`,
//! openssl and PostgreSQL's server binaries (scripts/test.sh sets these up).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::CertificateDer;
use signet_tests::postgres::Database;
use signet_tests::{
    AgentProcess, CaOptions, CaProcess, EnvoyOptions, EnvoyProcess, Purpose, SERVER_BODY, Scrape,
    Traffic, Validation, envoy_binary, free_loopback_addr, health_check, openssl_verify, scrape,
};
use tonic_health::pb::health_check_response::ServingStatus;

/// Every workload SVID's lifetime. The agent renews at about half of it;
/// the renewals that fall into the 20 s database outage are retried (never
/// later than an eighth of the life left) and land well before expiry.
const SVID_TTL: &str = "60s";

/// How long PostgreSQL stays down.
const OUTAGE: Duration = Duration::from_secs(20);

/// PostgreSQL is stopped once both presented SVIDs have this much life
/// left: their renewal (at about half of SVID_TTL) falls inside the outage.
const OUTAGE_STARTS_AT_LEFT: Duration = Duration::from_secs(40);

/// A served SVID must never have less than this left: an agent that
/// renews at half the lifetime keeps about 30 s.
const MARGIN: Duration = Duration::from_secs(5);

/// One request through the mesh every this often.
const REQUEST_INTERVAL: Duration = Duration::from_millis(75);

/// How often the test reads what the Envoys present.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);

/// Longest wait for a move, a renewal or a replica's health; generous, it
/// only bounds a failing test.
const LONG_WAIT: Duration = Duration::from_secs(90);

/// Each Envoy must have presented at least this many SVIDs (the first and
/// two renewals).
const SERIALS: usize = 3;

/// Traffic goes on this long after everything else was seen.
const TRAILING: Duration = Duration::from_secs(5);

const CLIENT_UID: u32 = 4331;
const SERVER_UID: u32 = 4332;

fn replica_options(db: &Database, metrics: SocketAddr) -> CaOptions {
    CaOptions::default()
        .flag("store", db.url())
        .flag("metrics-listen", metrics.to_string())
}

/// The second replica, on `port`: a data directory of its own (its own
/// root, intermediate and keys) on the same database.
async fn second_replica(first: &CaProcess, port: u16, opts: CaOptions) -> CaProcess {
    first.start_replica(port, opts).await.unwrap()
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The certificate an Envoy presents in new handshakes.
struct Presented {
    serial: String,
    not_after: SystemTime,
    chain: Vec<CertificateDer<'static>>,
}

async fn presented(envoy: &EnvoyProcess) -> Result<Presented, String> {
    let chains = envoy
        .secret_chains()
        .await
        .map_err(|e| format!("{}: {e:#}", envoy.name()))?;
    let [chain] = <[Vec<Vec<u8>>; 1]>::try_from(chains)
        .map_err(|c| format!("{} holds {} certificate chains", envoy.name(), c.len()))?;
    let chain: Vec<CertificateDer<'static>> = chain.into_iter().map(CertificateDer::from).collect();
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|e| format!("{}: leaf does not parse: {e}", envoy.name()))?;
    let seconds = u64::try_from(leaf.validity().not_after.timestamp())
        .map_err(|_| format!("{}: notAfter before 1970", envoy.name()))?;
    Ok(Presented {
        serial: crate::hex_lower(leaf.raw_serial()),
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(seconds),
        chain,
    })
}

/// What the Envoys presented over the run.
struct Watch {
    started: Instant,
    /// Per Envoy (client, server): every serial seen, in order.
    serials: [Vec<String>; 2],
    /// Per Envoy: the least lifetime left seen on a presented SVID.
    least_left: [Duration; 2],
    /// Per Envoy: the lifetime left of what it presented at the last sample.
    last_left: [Duration; 2],
    /// Anything wrong: a certificate too close to expiry, one openssl
    /// refused, an Envoy that could not be read.
    problems: Vec<String>,
    /// Where the replicas' bundles are written for openssl.
    roots: tempfile::NamedTempFile,
    samples: usize,
}

impl Watch {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            serials: [Vec::new(), Vec::new()],
            least_left: [Duration::MAX; 2],
            last_left: [Duration::MAX; 2],
            problems: Vec::new(),
            roots: tempfile::NamedTempFile::new().unwrap(),
            samples: 0,
        }
    }

    /// Reads what each Envoy presents now; a new serial is checked with
    /// openssl against the union of both replicas' bundles.
    async fn sample(&mut self, envoys: [&EnvoyProcess; 2], replicas: [&CaProcess; 2]) {
        self.samples += 1;
        let at = self.started.elapsed();
        for (i, envoy) in envoys.into_iter().enumerate() {
            let p = match presented(envoy).await {
                Ok(p) => p,
                Err(e) => {
                    self.problems.push(format!("at {at:.1?}: {e}"));
                    continue;
                }
            };
            let left = p
                .not_after
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            self.least_left[i] = self.least_left[i].min(left);
            self.last_left[i] = left;
            if left < MARGIN {
                self.problems.push(format!(
                    "at {at:.1?}: {} presents {} with {left:.1?} left",
                    envoy.name(),
                    p.serial
                ));
            }
            if self.serials[i].last() != Some(&p.serial) {
                eprintln!(
                    "at {at:.1?}: {} presents {} ({left:.1?} left)",
                    envoy.name(),
                    p.serial
                );
                self.verify(envoy.name(), i, &p, replicas);
                self.serials[i].push(p.serial);
            }
        }
    }

    fn verify(&mut self, name: &str, i: usize, p: &Presented, replicas: [&CaProcess; 2]) {
        // Both bundle files, as each replica wrote it: the union once each
        // replica has an authority of its own.
        let mut pem = String::new();
        for ca in replicas {
            pem.push_str(&ca.bundle_pem().unwrap());
        }
        std::fs::write(self.roots.path(), pem).unwrap();
        let purpose = if i == 0 {
            Purpose::SslClient
        } else {
            Purpose::SslServer
        };
        let (ok, text) = openssl_verify(purpose, self.roots.path(), &p.chain).unwrap();
        if !ok {
            self.problems.push(format!(
                "openssl refused {name}'s SVID {}: {text}",
                p.serial
            ));
        }
    }

    /// Samples for `d`.
    async fn run_for(&mut self, d: Duration, envoys: [&EnvoyProcess; 2], cas: [&CaProcess; 2]) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.sample(envoys, cas).await;
            tokio::time::sleep(SAMPLE_INTERVAL).await;
        }
    }

    /// Serials first seen after `before` serials of Envoy `i`.
    fn new_since(&self, i: usize, before: usize) -> usize {
        self.serials[i].len().saturating_sub(before)
    }
}

fn connected(s: &Scrape) -> f64 {
    s.value("signet_ca_connected_agents", &[]).unwrap_or(0.0)
}

fn unreachable_moves(s: &Scrape) -> f64 {
    s.value(
        "signet_agent_ca_failovers_total",
        &[("reason", "unreachable")],
    )
    .unwrap_or(0.0)
}

/// The replica's gRPC health for the agents' service, `None` when it
/// cannot be asked.
async fn health(ca: &CaProcess) -> Option<ServingStatus> {
    let channel = ca.node_channel(None).await.ok()?;
    health_check(channel, "signet.ca.v1.Node").await.ok()
}

fn logs(agents: [&AgentProcess; 2], cas: [&CaProcess; 2]) -> String {
    format!(
        "--- agent node-a ---\n{}\n--- agent node-b ---\n{}\n--- replica A ---\n{}\n--- replica B ---\n{}",
        agents[0].log(),
        agents[1].log(),
        cas[0].log(),
        cas[1].log()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_carry_traffic_through_a_replica_crash_and_a_database_outage() {
    envoy_binary().unwrap();
    let took = Instant::now();
    let mut db = Database::on_private_server();
    let (a_metrics, b_metrics) = (free_loopback_addr().unwrap(), free_loopback_addr().unwrap());
    let mut a = CaProcess::start(replica_options(&db, a_metrics))
        .await
        .unwrap();
    let b_port = free_port();
    let addresses = format!("127.0.0.1:{},127.0.0.1:{b_port}", a.port());

    // Both agents attest while only A runs: both start on A.
    let mut agents = Vec::new();
    let mut agent_metrics = Vec::new();
    for node in ["node-a", "node-b"] {
        let metrics = free_loopback_addr().unwrap();
        let metrics_flag = metrics.to_string();
        let agent = AgentProcess::start(
            &a,
            node,
            &[
                "--ca-address",
                &addresses,
                "--metrics-listen",
                &metrics_flag,
            ],
        )
        .await
        .unwrap();
        agents.push(agent);
        agent_metrics.push(metrics);
    }
    let [mut server_agent, mut client_agent] = <[AgentProcess; 2]>::try_from(agents).ok().unwrap();
    let client_id = a.id("/client");
    let server_id = a.id("/server");
    for (id, node, uid) in [
        (&server_id, "node-a", SERVER_UID),
        (&client_id, "node-b", CLIENT_UID),
    ] {
        let selector = format!("unix:uid:{uid}");
        a.entry_cli(&[
            "--spiffe-id",
            id,
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
    let mut b = second_replica(&a, b_port, replica_options(&db, b_metrics)).await;
    let on_a = signet_tests::scrape_until(a_metrics, LONG_WAIT, |s| connected(s) == 2.0).await;
    assert!(
        on_a.is_ok(),
        "both agents should be on replica A: {on_a:?}\n{}",
        logs([&server_agent, &client_agent], [&a, &b])
    );

    // The server Envoy on node-a checks the client with the plain roots; the
    // client Envoy on node-b checks the server with the SPIFFE validator.
    let mut server = EnvoyProcess::start(
        EnvoyOptions::server("server", SERVER_UID, server_agent.sds_socket(), &client_id)
            .validation(Validation::RootCa),
    )
    .await
    .unwrap();
    let mut client = EnvoyProcess::start(
        EnvoyOptions::client(
            "client",
            CLIENT_UID,
            client_agent.sds_socket(),
            server.port().unwrap(),
            &server_id,
        )
        .validation(Validation::SpiffeAll),
    )
    .await
    .unwrap();
    let first = client.get("/").await.unwrap();
    assert_eq!(
        (first.status, first.body.as_str()),
        (200, SERVER_BODY),
        "the first request through client → server failed\n{}\n{}",
        client.log(),
        server.log()
    );
    let traffic = Traffic::start(client.port().unwrap(), REQUEST_INTERVAL, SERVER_BODY);
    let mut watch = Watch::new();
    watch
        .run_for(Duration::from_secs(3), [&client, &server], [&a, &b])
        .await;

    // 1. A crash of the replica both agents use: no drain, only refused
    //    connections. Both agents move to B, and their next SVIDs come
    //    from there.
    let before_kill = [watch.serials[0].len(), watch.serials[1].len()];
    eprintln!("at {:.1?}: SIGKILL replica A", watch.started.elapsed());
    a.kill_hard();
    let deadline = Instant::now() + LONG_WAIT;
    loop {
        watch.sample([&client, &server], [&a, &b]).await;
        let mut moved = scrape(b_metrics).await.is_ok_and(|s| connected(&s) == 2.0);
        for m in &agent_metrics {
            moved &= scrape(*m).await.is_ok_and(|s| unreachable_moves(&s) >= 1.0);
        }
        let renewed =
            watch.new_since(0, before_kill[0]) >= 1 && watch.new_since(1, before_kill[1]) >= 1;
        if moved && renewed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after SIGKILL of A: moved to B {moved}, renewed {renewed}\n{}",
            logs([&server_agent, &client_agent], [&a, &b])
        );
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
    eprintln!(
        "at {:.1?}: both agents on B, both SVIDs renewed",
        watch.started.elapsed()
    );

    // 2. A comes back on the same data directory and database.
    a.start_again().await.unwrap();
    eprintln!("at {:.1?}: replica A restarted", watch.started.elapsed());
    // The outage must cover a renewal: it starts once both SVIDs are
    // within OUTAGE_STARTS_AT_LEFT of expiry, so that their renewal points
    // (about half their life) fall while the database is away, and the
    // agents must renew them after it returns, before they lapse.
    let deadline = Instant::now() + LONG_WAIT;
    loop {
        watch.sample([&client, &server], [&a, &b]).await;
        if watch.last_left.iter().all(|l| *l <= OUTAGE_STARTS_AT_LEFT) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the SVIDs never came within {OUTAGE_STARTS_AT_LEFT:?} of expiry: {:?}",
            watch.last_left
        );
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }

    // 3. The database goes away for 20 s: both replicas say NOT_SERVING,
    //    the agents keep serving what they hold, the traffic goes on.
    eprintln!("at {:.1?}: PostgreSQL stopped", watch.started.elapsed());
    tokio::task::block_in_place(|| db.server_mut().unwrap().stop());
    let down = Instant::now();
    let mut not_serving = [false; 2];
    while down.elapsed() < OUTAGE {
        watch.sample([&client, &server], [&a, &b]).await;
        for (seen, ca) in not_serving.iter_mut().zip([&a, &b]) {
            if !*seen {
                *seen = health(ca).await == Some(ServingStatus::NotServing);
            }
        }
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
    assert_eq!(
        not_serving,
        [true, true],
        "each replica should report NOT_SERVING while the database is down\n{}",
        logs([&server_agent, &client_agent], [&a, &b])
    );
    tokio::task::block_in_place(|| db.server_mut().unwrap().start_again());
    eprintln!(
        "at {:.1?}: PostgreSQL started again",
        watch.started.elapsed()
    );

    // 4. Both replicas serve again, and each Envoy goes through renewals
    //    until it has presented SERIALS SVIDs; then a little more traffic.
    let deadline = Instant::now() + LONG_WAIT;
    let mut serving = [false; 2];
    loop {
        watch.sample([&client, &server], [&a, &b]).await;
        for (ok, ca) in serving.iter_mut().zip([&a, &b]) {
            if !*ok {
                *ok = health(ca).await == Some(ServingStatus::Serving);
            }
        }
        let renewed = watch.serials.iter().all(|s| s.len() >= SERIALS);
        if serving == [true, true] && renewed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the outage: serving {serving:?}, serials {:?}\n{}",
            watch.serials,
            logs([&server_agent, &client_agent], [&a, &b])
        );
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
    watch.run_for(TRAILING, [&client, &server], [&a, &b]).await;

    let outcomes = traffic.stop().await;
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            o.result
                .as_ref()
                .err()
                .map(|e| format!("at {:.1?}: {e}", o.at))
        })
        .collect();
    eprintln!(
        "{} requests, {} failed; {} samples; serials client {:?}, server {:?}; least lifetime left client {:.1?}, server {:.1?}; test took {:.1?}",
        outcomes.len(),
        failed.len(),
        watch.samples,
        watch.serials[0],
        watch.serials[1],
        watch.least_left[0],
        watch.least_left[1],
        took.elapsed()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed:\n{}\n{}\n{}\n{}",
        failed.len(),
        outcomes.len(),
        failed.join("\n"),
        client.summary().await,
        server.summary().await,
        logs([&server_agent, &client_agent], [&a, &b])
    );
    // A stalled driver would pass the check above by sending nothing.
    let expected = watch.started.elapsed().as_millis() / REQUEST_INTERVAL.as_millis() / 2;
    assert!(
        outcomes.len() as u128 >= expected,
        "only {} requests in {:?}",
        outcomes.len(),
        watch.started.elapsed()
    );
    assert!(
        watch.problems.is_empty(),
        "what the Envoys presented:\n{}\n{}",
        watch.problems.join("\n"),
        logs([&server_agent, &client_agent], [&a, &b])
    );
    // Distinct: an SVID presented again after another is no renewal.
    for (name, serials) in ["client", "server"].iter().zip(&watch.serials) {
        let distinct: BTreeSet<&String> = serials.iter().collect();
        assert_eq!(
            distinct.len(),
            serials.len(),
            "{name} went back to an old SVID: {serials:?}"
        );
    }

    for envoy in [&mut client, &mut server] {
        envoy.stop().await.unwrap();
    }
    for agent in [&mut client_agent, &mut server_agent] {
        agent.stop().await.unwrap();
    }
    for ca in [&mut a, &mut b] {
        ca.stop().await.unwrap();
    }
}
