//! signet-bench: X.509-SVID issuance end to end over gRPC + mTLS against a
//! real `signet-ca` process, beside the ceiling of this machine measured in
//! the same run (one CSR signature check plus one certificate signature with
//! ring, on every core). Prints figures; asserts nothing.
//!
//! Usage: `cargo build --release --bins && target/release/signet-bench [--seconds N] [--store URL]`
//! (SIGNET_BIN_DIR selects the binaries; by default those beside this one).
//!
//! `--replicas` runs the replica comparison instead: batched and single
//! issuance on SQLite, on one PostgreSQL replica and on two replicas of one
//! database (load spread over both), with the store statements each SVID
//! cost (the CA's `signet_ca_store_statements_total`), then how long an
//! entry created through one replica takes to reach a node's entry stream
//! on the other. The database is made by the test fixture (`SIGNET_TEST_PG`,
//! or a private server; `SIGNET_TEST_PG_DURABLE=1` keeps fsync on), and the
//! scrapes need `SIGNET_PYTHON` as the tests do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, UnparsedPublicKey};
use signet_proto::ca::v1 as pb;
use signet_tests::postgres::Database;
use signet_tests::{
    CaOptions, CaProcess, attest_node, free_loopback_addr, new_key_and_csr, scrape,
};

struct Figures {
    label: String,
    svids: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.svids as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let mut l = self.latencies.clone();
        l.sort();
        l[((l.len() as f64 - 1.0) * p).round() as usize]
    }
}

/// ECDSA P-256 verify (the CSR check) + sign (the certificate) per SVID,
/// on `threads` threads for `dur`.
fn ceiling(threads: usize, dur: Duration) -> f64 {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let rng = SystemRandom::new();
                let Ok(pkcs8) =
                    EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                else {
                    return 0u64;
                };
                let Ok(pair) = EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                    pkcs8.as_ref(),
                    &rng,
                ) else {
                    return 0;
                };
                // Sizes of a real CSR body and a real leaf TBSCertificate.
                let csr_body = vec![0x5a_u8; 180];
                let tbs = vec![0xa5_u8; 420];
                let Ok(csr_sig) = pair.sign(&rng, &csr_body) else {
                    return 0;
                };
                let public = UnparsedPublicKey::new(
                    &signature::ECDSA_P256_SHA256_ASN1,
                    pair.public_key().as_ref().to_vec(),
                );
                let start = Instant::now();
                let mut n = 0u64;
                while start.elapsed() < dur {
                    if public.verify(&csr_body, csr_sig.as_ref()).is_err()
                        || pair.sign(&rng, &tbs).is_err()
                    {
                        return 0;
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    total as f64 / dur.as_secs_f64()
}

struct Node {
    client: pb::node_client::NodeClient<tonic::transport::Channel>,
    entries: Vec<String>,
}

async fn setup(
    ca: &CaProcess,
    run: &str,
    nodes: usize,
    entries_per_node: usize,
) -> anyhow::Result<Vec<Node>> {
    let mut out = Vec::with_capacity(nodes);
    let mut admin = ca.admin().await?;
    for n in 0..nodes {
        let name = format!("{run}-{n}");
        let identity = attest_node(ca, &name).await?;
        let mut entries = Vec::with_capacity(entries_per_node);
        for e in 0..entries_per_node {
            let entry = admin
                .create_entry(pb::CreateEntryRequest {
                    spiffe_id: ca.id(&format!("/bench/{run}/{n}/{e}")),
                    parent_id: ca.node_id(&name),
                    selectors: vec![pb::Selector {
                        r#type: "unix".into(),
                        value: format!("uid:{}", 10_000 + e),
                    }],
                    x509_svid_ttl_seconds: 0,
                    dns_names: vec![],
                    federates_with: vec![],
                })
                .await?
                .into_inner();
            entries.push(entry.id);
        }
        let client = ca.node_client(Some(identity.tls_identity())).await?;
        out.push(Node { client, entries });
    }
    Ok(out)
}

/// Every node sends requests of `batch` items for `dur`: back to back, or
/// one every `interval`.
async fn drive(
    label: &str,
    nodes: Vec<Node>,
    batch: usize,
    dur: Duration,
    interval: Option<Duration>,
) -> anyhow::Result<Figures> {
    // CSRs are prepared before timing; each request reuses a pool of them
    // (the CA checks each one anew every time).
    let pool: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..batch.max(64))
            .map(|_| new_key_and_csr().map(|(_, c)| c))
            .collect::<Result<_, _>>()?,
    );
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    let count = nodes.len() as u32;
    for (index, mut node) in nodes.into_iter().enumerate() {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut issued = 0u64;
            let mut i = 0usize;
            // Open loop: requests leave on a fixed schedule whatever the
            // latency; closed loop (None): back to back.
            // Nodes are spread evenly over the interval, as independent
            // agents would be, rather than all sending at the same instant.
            let mut ticker = interval.map(|d| {
                let offset = d * index as u32 / count.max(1);
                let mut t = tokio::time::interval_at(tokio::time::Instant::now() + offset, d);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            while Instant::now() < deadline {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let items = (0..batch)
                    .map(|k| pb::SignRequestItem {
                        entry_id: node.entries[(i + k) % node.entries.len()].clone(),
                        csr: pool[(i + k) % pool.len()].clone(),
                        ttl_seconds: 0,
                    })
                    .collect();
                i += batch;
                let t = Instant::now();
                let resp = node
                    .client
                    .batch_sign_x509_svid(pb::BatchSignX509SvidRequest { items })
                    .await?
                    .into_inner();
                lat.push(t.elapsed());
                for r in resp.results {
                    match r.result {
                        Some(pb::sign_result::Result::Svid(_)) => issued += 1,
                        other => anyhow::bail!("item failed: {other:?}"),
                    }
                }
            }
            Ok::<_, anyhow::Error>((issued, lat))
        }));
    }
    let mut svids = 0;
    let mut latencies = Vec::new();
    for t in tasks {
        let (n, l) = t.await??;
        svids += n;
        latencies.extend(l);
    }
    Ok(Figures {
        label: label.to_owned(),
        svids,
        elapsed: start.elapsed(),
        latencies,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("--seconds takes a number")?
        .unwrap_or(10);
    let dur = Duration::from_secs(seconds);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    println!(
        "# signet-bench: X.509-SVID issuance over gRPC+mTLS ({cores} cores, {seconds} s per run)"
    );
    let one = ceiling(1, Duration::from_secs(2));
    let all = ceiling(cores, Duration::from_secs(2));
    println!(
        "ceiling (ring: P-256 CSR verify + P-256 sign): 1 core {one:.0}/s, {cores} cores {all:.0}/s"
    );

    if std::env::args().any(|a| a == "--replicas") {
        return replicas(dur, all).await;
    }

    // `--store URL`: the CA's store (PostgreSQL), instead of its SQLite file.
    let store: Option<String> = std::env::args().skip_while(|a| a != "--store").nth(1);
    let mut opts = CaOptions::default().flag("max-batch", "1000");
    if let Some(url) = &store {
        opts = opts.flag("store", url.clone());
        println!("store: PostgreSQL");
    } else {
        println!("store: SQLite");
    }
    let ca = CaProcess::start(opts).await?;
    let mut results = Vec::new();
    results.push(
        drive(
            "single requests, 1 node, back to back",
            setup(&ca, "one", 1, 4).await?,
            1,
            dur,
            None,
        )
        .await?,
    );
    results.push(
        drive(
            "single requests, 50 concurrent nodes, back to back",
            setup(&ca, "single", 50, 4).await?,
            1,
            dur,
            None,
        )
        .await?,
    );
    results.push(
        drive(
            "single requests, 50 concurrent nodes, 20/s each (1,000/s)",
            setup(&ca, "paced", 50, 4).await?,
            1,
            dur,
            Some(Duration::from_millis(50)),
        )
        .await?,
    );
    results.push(
        drive(
            "single requests, 50 concurrent nodes, 50/s each (2,500/s)",
            setup(&ca, "paced2", 50, 4).await?,
            1,
            dur,
            Some(Duration::from_millis(20)),
        )
        .await?,
    );
    results.push(
        drive(
            "batches of 100, 4 concurrent nodes",
            setup(&ca, "batch4", 4, 100).await?,
            100,
            dur,
            None,
        )
        .await?,
    );
    results.push(
        drive(
            "batches of 100, 50 concurrent nodes",
            setup(&ca, "batch50", 50, 100).await?,
            100,
            dur,
            None,
        )
        .await?,
    );

    println!();
    println!("| run | SVIDs/s | p50 | p99 | of {cores}-core ceiling |");
    println!("|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {:.0} | {:.2} ms | {:.2} ms | {:.0}% |",
            r.label,
            r.rate(),
            r.pct(0.50).as_secs_f64() * 1e3,
            r.pct(0.99).as_secs_f64() * 1e3,
            100.0 * r.rate() / all
        );
    }
    Ok(())
}

/// A CA of the replica comparison with its metrics address.
struct Replica {
    ca: CaProcess,
    metrics: std::net::SocketAddr,
}

fn replica_options(store: Option<&str>) -> anyhow::Result<(CaOptions, std::net::SocketAddr)> {
    let metrics = free_loopback_addr()?;
    let mut opts = CaOptions::default()
        .flag("max-batch", "1000")
        .flag("metrics-listen", metrics.to_string());
    if let Some(url) = store {
        opts = opts.flag("store", url.to_owned());
    }
    Ok((opts, metrics))
}

/// The second replica, on the first's database, with a data directory of
/// its own (its own root, intermediate and keys).
async fn second_replica(first: &Replica, store: &str) -> anyhow::Result<Replica> {
    let (opts, metrics) = replica_options(Some(store))?;
    let ca = first.ca.start_replica(0, opts).await?;
    Ok(Replica { ca, metrics })
}

/// Store statements sent so far by `replicas`, summed.
async fn statements(replicas: &[&Replica]) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for r in replicas {
        let s = scrape(r.metrics).await?;
        for backend in ["sqlite", "postgres"] {
            total += s
                .value("signet_ca_store_statements_total", &[("backend", backend)])
                .with_context(|| {
                    format!("no signet_ca_store_statements_total{{backend={backend}}}")
                })?;
        }
    }
    Ok(total)
}

/// A run with the store statements it cost per SVID.
struct Counted {
    figures: Figures,
    per_svid: f64,
}

/// `drive` over nodes spread evenly on `replicas`, counting statements.
/// What scraping itself and the replicas' own background work (heartbeats)
/// cost is measured over an idle second just before and taken off.
async fn counted(
    label: &str,
    replicas: &[&Replica],
    run: &str,
    nodes_per_replica: usize,
    batch: usize,
    dur: Duration,
) -> anyhow::Result<Counted> {
    let mut nodes = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        nodes.extend(
            setup(
                &r.ca,
                &format!("{run}-r{i}"),
                nodes_per_replica,
                batch.max(4),
            )
            .await?,
        );
    }
    // Each difference of two scrape rounds holds the first round's own
    // queries (the counter is read before them) and the background work
    // between the two: back to back that is one round's cost, a second
    // apart it adds a second of background.
    let t0 = statements(replicas).await?;
    let t1 = statements(replicas).await?;
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t2 = statements(replicas).await?;
    let round = t1 - t0;
    let per_second = ((t2 - t1 - round) / start.elapsed().as_secs_f64()).max(0.0);
    let before = statements(replicas).await?;
    let figures = drive(label, nodes, batch, dur, None).await?;
    let after = statements(replicas).await?;
    let background = round + per_second * figures.elapsed.as_secs_f64();
    let per_svid = ((after - before - background) / figures.svids.max(1) as f64).max(0.0);
    Ok(Counted { figures, per_svid })
}

/// Creates entries through `a` one after another and times each until a
/// node's entry stream on `b` delivers it.
async fn propagation(a: &Replica, b: &Replica, samples: usize) -> anyhow::Result<Vec<Duration>> {
    let node = "propagation-b";
    let identity = attest_node(&b.ca, node).await?;
    let mut client = b.ca.node_client(Some(identity.tls_identity())).await?;
    let mut stream = client
        .watch_authorized_entries(pb::WatchAuthorizedEntriesRequest {})
        .await?
        .into_inner();
    let limit = Duration::from_secs(10);
    tokio::time::timeout(limit, stream.message())
        .await
        .context("no snapshot")??
        .context("stream ended")?;
    let mut admin = a.ca.admin().await?;
    let mut out = Vec::with_capacity(samples);
    for n in 0..samples {
        let start = Instant::now();
        let id = admin
            .create_entry(pb::CreateEntryRequest {
                spiffe_id: a.ca.id(&format!("/bench/propagation/{n}")),
                parent_id: a.ca.node_id(node),
                selectors: vec![pb::Selector {
                    r#type: "unix".into(),
                    value: format!("uid:{}", 20_000 + n),
                }],
                x509_svid_ttl_seconds: 0,
                dns_names: vec![],
                federates_with: vec![],
            })
            .await?
            .into_inner()
            .id;
        loop {
            let update = tokio::time::timeout(limit, stream.message())
                .await
                .with_context(|| {
                    format!("entry {n} did not reach the other replica in {limit:?}")
                })??
                .context("stream ended")?;
            if update.upserted.iter().any(|e| e.id == id) {
                break;
            }
        }
        out.push(start.elapsed());
    }
    Ok(out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn replicas(dur: Duration, ceiling_all: f64) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let db = Database::create();
    println!(
        "replicas: SQLite, then PostgreSQL ({}) with 1 and 2 replicas",
        if std::env::var_os("SIGNET_TEST_PG_DURABLE").is_some() {
            "durable: SIGNET_TEST_PG_DURABLE"
        } else {
            "the fixture's server as configured"
        }
    );
    let mut rows: Vec<(String, Counted)> = Vec::new();

    let (opts, metrics) = replica_options(None)?;
    let sqlite = Replica {
        ca: CaProcess::start(opts).await?,
        metrics,
    };
    for (k, (what, nodes, batch)) in [
        ("single requests, 1 node", 1, 1),
        ("batches of 100, 4 nodes", 4, 100),
    ]
    .into_iter()
    .enumerate()
    {
        let c = counted(what, &[&sqlite], &format!("sq{k}"), nodes, batch, dur).await?;
        rows.push(("SQLite, 1 CA".into(), c));
    }
    drop(sqlite);

    let (opts, metrics) = replica_options(Some(db.url()))?;
    let a = Replica {
        ca: CaProcess::start(opts).await?,
        metrics,
    };
    for (k, (what, nodes, batch)) in [
        ("single requests, 1 node", 1, 1),
        ("batches of 100, 4 nodes", 4, 100),
    ]
    .into_iter()
    .enumerate()
    {
        let c = counted(what, &[&a], &format!("pg1{k}"), nodes, batch, dur).await?;
        rows.push(("PostgreSQL, 1 replica".into(), c));
    }
    let b = second_replica(&a, db.url()).await?;
    for (k, (what, nodes, batch)) in [
        ("single requests, 1 node per replica", 1, 1),
        ("batches of 100, 2 nodes per replica", 2, 100),
    ]
    .into_iter()
    .enumerate()
    {
        let c = counted(what, &[&a, &b], &format!("pg2{k}"), nodes, batch, dur).await?;
        rows.push(("PostgreSQL, 2 replicas".into(), c));
    }

    println!();
    println!(
        "| store | run | SVIDs/s | p50 | p99 | of {cores}-core ceiling | statements per SVID |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (store, c) in &rows {
        let r = &c.figures;
        println!(
            "| {store} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.0}% | {:.1} |",
            r.label,
            r.rate(),
            ms(r.pct(0.50)),
            ms(r.pct(0.99)),
            100.0 * r.rate() / ceiling_all,
            c.per_svid,
        );
    }

    let mut samples = propagation(&a, &b, 200).await?;
    samples.sort();
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    println!();
    println!(
        "entry created through replica A until a node stream on replica B delivers it ({} samples): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        samples.len(),
        ms(at(0.50)),
        ms(at(0.99)),
        ms(at(1.0)),
    );
    Ok(())
}
