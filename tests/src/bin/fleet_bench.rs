//! signet-fleet-bench: one real `signet-ca` with N simulated agents. Prints;
//! asserts nothing.
//!
//! Each simulated agent is an attested node (join token, AttestNode) with
//! its own mTLS connection (its node SVID), an open `WatchBundle` stream,
//! and a `ReportStatus` of every bundle sequence it receives, as the real
//! agent does.
//!
//! 1. The CA's resident memory (`/proc/PID/status` VmRSS): idle, after N
//!    attestations, and with the N streams open.
//! 2. Rounds of `PrepareAuthority(ROOT)`: the time from the admin call to
//!    - the last agent receiving the bundle that carries the new root,
//!    - the last agent's `ReportStatus` of it returning,
//!    - the CA seeing every agent acknowledge it: `ListAuthorities` shows
//!      agents_acknowledged = agents_connected for the new root (or, from
//!      a CA that does not count acknowledgements, `ListAgents` shows every
//!      agent at the new sequence; polled every 10 ms).
//! 3. The ceiling, measured in the same run: the same fan-out with nothing
//!    of Signet in it. One tokio-rustls server holding N TLS 1.3 loopback
//!    connections writes a message as large as the new bundle to each, and
//!    each client answers with a few bytes: the time until all N answers
//!    are back. No HTTP/2, gRPC, protobuf, database or certificate work.
//!
//! Usage: `cargo build --release -p signet-tests --bin signet-fleet-bench`
//! (with the workspace binaries built too), then
//! `SIGNET_BIN_DIR=target/release target/release/signet-fleet-bench [--agents 1000] [--rounds 3]`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use prost::Message as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use signet_proto::ca::v1 as pb;
use signet_tests::{CaOptions, CaProcess, NodeIdentity, attest_with_token, crypto_provider};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

/// Attestations in flight at once: below the CA's default limit of 32
/// unauthenticated connections per source address.
const ATTEST_CONCURRENCY: usize = 16;

/// Longest wait for one round to complete everywhere.
const ROUND_TIMEOUT: Duration = Duration::from_secs(120);

/// How often the CA is asked whether every agent acknowledged.
const POLL: Duration = Duration::from_millis(10);

fn arg(name: &str, default: usize) -> anyhow::Result<usize> {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .map(|s| s.parse().with_context(|| format!("{name} takes a number")))
        .transpose()
        .map(|v| v.unwrap_or(default))
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// What a simulated agent tells the bench: (agent, event, sequence, when).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// A bundle arrived on WatchBundle.
    Received,
    /// Its ReportStatus returned.
    Reported,
}

/// Attests `n` nodes, at most [`ATTEST_CONCURRENCY`] at a time.
async fn attest_all(ca: &Arc<CaProcess>, n: usize) -> anyhow::Result<Vec<NodeIdentity>> {
    let mut admin = ca.admin().await?;
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        let token = admin
            .create_join_token(pb::CreateJoinTokenRequest {
                node_name: format!("sim-{i:04}"),
                ttl_seconds: 0,
            })
            .await
            .context("CreateJoinToken")?
            .into_inner()
            .token;
        tokens.push(token);
    }
    let tokens = Arc::new(tokio::sync::Mutex::new(tokens.into_iter().enumerate()));
    let mut workers = Vec::new();
    for _ in 0..ATTEST_CONCURRENCY {
        let tokens = tokens.clone();
        let ca = ca.clone();
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let next = tokens.lock().await.next();
                let Some((i, token)) = next else {
                    return Ok::<_, anyhow::Error>(done);
                };
                done.push((i, attest_with_token(&ca, &token).await?));
            }
        }));
    }
    let mut all = BTreeMap::new();
    for worker in workers {
        all.extend(worker.await??);
    }
    Ok(all.into_values().collect())
}

/// One simulated agent: its own connection, a WatchBundle stream, and a
/// ReportStatus of every sequence received.
async fn run_agent(
    ca: Arc<CaProcess>,
    i: usize,
    node: NodeIdentity,
    events: mpsc::UnboundedSender<(usize, Event, u64, Instant)>,
) -> anyhow::Result<()> {
    let mut client = ca.node_client(Some(node.tls_identity())).await?;
    let mut stream = client
        .watch_bundle(pb::WatchBundleRequest {})
        .await
        .context("WatchBundle")?
        .into_inner();
    tokio::spawn(async move {
        while let Ok(Some(bundle)) = stream.message().await {
            let seq = bundle.sequence;
            let _ = events.send((i, Event::Received, seq, Instant::now()));
            let reported = client
                .report_status(pb::ReportStatusRequest {
                    bundle_sequence: seq,
                    svid_count: 0,
                    chains_through: Vec::new(),
                })
                .await;
            match reported {
                Ok(_) => {
                    let _ = events.send((i, Event::Reported, seq, Instant::now()));
                }
                Err(e) => eprintln!("agent {i}: ReportStatus failed: {e}"),
            }
        }
        // The stream ends when the CA goes away at the end of the run.
    });
    Ok(())
}

/// Whether the CA counts every agent as having acknowledged `authority`
/// (published at `sequence`), and how it knows: `(done, acked, connected)`.
async fn ca_acknowledged(
    admin: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
    authority: &str,
    sequence: u64,
    agents: usize,
) -> anyhow::Result<(bool, usize, usize)> {
    let listed = admin
        .list_authorities(pb::ListAuthoritiesRequest {})
        .await?
        .into_inner();
    if let Some(a) = listed.authorities.iter().find(|a| a.id == authority)
        && a.agents_connected > 0
    {
        let (acked, connected) = (a.agents_acknowledged as usize, a.agents_connected as usize);
        return Ok((acked >= connected && connected >= agents, acked, connected));
    }
    // A CA that does not count acknowledgements per authority: what each
    // agent last reported.
    let listed = admin
        .list_agents(pb::ListAgentsRequest {})
        .await?
        .into_inner();
    let acked = listed
        .agents
        .iter()
        .filter(|a| a.name.starts_with("sim-") && a.bundle_sequence >= sequence)
        .count();
    Ok((acked >= agents, acked, agents))
}

/// The ceiling: a bare TLS fan-out of `size` bytes to `n` connections and
/// a small answer back from each; the median of `rounds` rounds.
async fn ceiling(n: usize, size: usize, rounds: usize) -> anyhow::Result<Duration> {
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?.self_signed(&key)?;
    let cert_der = CertificateDer::from(cert.der().to_vec());
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let server_config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key_der)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der)?;
    let client_config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;

    // Server side: one task per connection, as a server would have. It
    // accepts while the clients below connect.
    let (answers_tx, mut answers_rx) = mpsc::unbounded_channel::<()>();
    let server = tokio::spawn(async move {
        let mut pushers = Vec::with_capacity(n);
        for _ in 0..n {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            let (push_tx, mut push_rx) = mpsc::unbounded_channel::<Arc<Vec<u8>>>();
            pushers.push(push_tx);
            let answers = answers_tx.clone();
            tokio::spawn(async move {
                let mut answer = [0u8; 8];
                while let Some(message) = push_rx.recv().await {
                    if tls.write_all(&message).await.is_err() || tls.flush().await.is_err() {
                        return;
                    }
                    if tls.read_exact(&mut answer).await.is_err() {
                        return;
                    }
                    let _ = answers.send(());
                }
            });
        }
        Ok::<_, std::io::Error>(pushers)
    });
    // Clients: read a message of `size` bytes, answer 8 bytes; repeat.
    for _ in 0..n {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut tls = connector
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        tokio::spawn(async move {
            let mut buf = vec![0u8; size];
            while tls.read_exact(&mut buf).await.is_ok() {
                if tls.write_all(&[1u8; 8]).await.is_err() || tls.flush().await.is_err() {
                    return;
                }
            }
        });
    }
    let pushers = server.await??;
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let message = Arc::new(vec![7u8; size]);
        let t0 = Instant::now();
        for pusher in &pushers {
            pusher.send(message.clone())?;
        }
        for _ in 0..n {
            tokio::time::timeout(ROUND_TIMEOUT, answers_rx.recv())
                .await?
                .context("a ceiling connection ended")?;
        }
        times.push(t0.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let agents = arg("--agents", 1000)?;
    let rounds = arg("--rounds", 3)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "# signet-fleet-bench ({cores} cores): {agents} simulated agents on one CA, {rounds} root preparations"
    );

    let ca = Arc::new(
        CaProcess::start(
            CaOptions::default()
                // Every simulated agent has its own connection, all from
                // 127.0.0.1.
                .flag("max-connections", (agents + 256).to_string()),
        )
        .await?,
    );
    let pid = ca.pid().context("the CA is not running")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_kib(pid)?;

    let started = Instant::now();
    let nodes = attest_all(&ca, agents).await?;
    let attested_in = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let attested = rss_kib(pid)?;

    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    for (i, node) in nodes.into_iter().enumerate() {
        run_agent(ca.clone(), i, node, events_tx.clone()).await?;
    }
    // Every agent has its first bundle and has reported it.
    let mut reported = vec![false; agents];
    let mut count = 0;
    while count < agents {
        let (i, event, _, _) = tokio::time::timeout(ROUND_TIMEOUT, events_rx.recv())
            .await
            .context("not every agent reported its first bundle")?
            .context("every agent ended")?;
        if event == Event::Reported && !reported[i] {
            reported[i] = true;
            count += 1;
        }
    }
    let connected_in = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let streams = rss_kib(pid)?;

    println!();
    println!("## CA memory (VmRSS)");
    println!("| state | VmRSS |");
    println!("|---|---|");
    println!("| idle | {} |", mib(idle));
    println!(
        "| after {agents} attestations (took {attested_in:.1?}) | {} |",
        mib(attested)
    );
    println!(
        "| {agents} agents connected, WatchBundle open (all in {connected_in:.1?}) | {} |",
        mib(streams)
    );
    println!(
        "({:.1} KiB per connected agent over the attested state)",
        streams.saturating_sub(attested) as f64 / agents as f64
    );

    let mut admin = ca.admin().await?;
    let mut rows = Vec::new();
    let mut bundle_size = 0;
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Drop whatever arrived between rounds.
        while events_rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        let prepared = match admin
            .prepare_authority(pb::PrepareAuthorityRequest {
                kind: pb::AuthorityKind::Root.into(),
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(e) => {
                println!("round {round}: PrepareAuthority(ROOT) refused ({e}); stopping");
                break;
            }
        };
        let sequence = prepared.bundle_sequence;
        let authority = prepared.authority.map(|a| a.id).unwrap_or_default();
        let (mut received, mut acked) = (vec![None; agents], vec![None; agents]);
        let (mut n_received, mut n_acked) = (0, 0);
        let mut ca_done = None;
        let mut last_ca = (0, 0);
        let deadline = t0 + ROUND_TIMEOUT;
        let mut next_poll = Instant::now();
        while n_acked < agents || ca_done.is_none() {
            if Instant::now() > deadline {
                bail!(
                    "round {round}: after {ROUND_TIMEOUT:?}, {n_received} agents received sequence {sequence}, \
                     {n_acked} reported it, the CA counts {}/{}",
                    last_ca.0,
                    last_ca.1
                );
            }
            if ca_done.is_none() && Instant::now() >= next_poll {
                let (done, a, c) =
                    ca_acknowledged(&mut admin, &authority, sequence, agents).await?;
                last_ca = (a, c);
                if done {
                    ca_done = Some(t0.elapsed());
                }
                next_poll = Instant::now() + POLL;
            }
            let wait = next_poll.saturating_duration_since(Instant::now());
            if let Ok(Some((i, event, seq, at))) =
                tokio::time::timeout(wait.max(Duration::from_millis(1)), events_rx.recv()).await
                && seq >= sequence
            {
                let slot = match event {
                    Event::Received => &mut received[i],
                    Event::Reported => &mut acked[i],
                };
                if slot.is_none() {
                    *slot = Some(at.saturating_duration_since(t0));
                    match event {
                        Event::Received => n_received += 1,
                        Event::Reported => n_acked += 1,
                    }
                }
            }
        }
        if round == 0 {
            let bundle = admin
                .get_bundle(pb::GetBundleRequest {})
                .await?
                .into_inner();
            bundle_size = bundle.encoded_len();
        }
        let last = |v: &[Option<Duration>]| v.iter().flatten().max().copied().unwrap_or_default();
        rows.push((
            round,
            sequence,
            last(&received),
            last(&acked),
            ca_done.unwrap_or_default(),
        ));
    }

    let ceiling_time = ceiling(agents, bundle_size.max(1), 5).await?;

    println!();
    println!(
        "## PrepareAuthority(ROOT) → every agent acknowledged ({agents} agents; bundle {bundle_size} bytes)"
    );
    println!(
        "| round | sequence | last agent received | last ReportStatus returned | CA counts all acknowledged |"
    );
    println!("|---|---|---|---|---|");
    for (round, sequence, received, acked, ca) in &rows {
        println!(
            "| {round} | {sequence} | {} | {} | {} |",
            ms(*received),
            ms(*acked),
            ms(*ca)
        );
    }
    println!();
    println!(
        "ceiling (bare TLS 1.3 fan-out of {bundle_size} bytes to {agents} loopback connections, an answer back from each; median of 5): {}",
        ms(ceiling_time)
    );
    Ok(())
}
