//! signet-bench: X.509-SVID issuance end to end over gRPC + mTLS against a
//! real `signet-ca` process, beside the ceiling of this machine measured in
//! the same run (one CSR signature check plus one certificate signature with
//! ring, on every core). Prints figures; asserts nothing.
//!
//! Usage: `cargo build --release --bins && target/release/signet-bench [--seconds N] [--store URL]`
//! (SIGNET_BIN_DIR selects the binaries; by default those beside this one).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, UnparsedPublicKey};
use signet_proto::ca::v1 as pb;
use signet_tests::{CaOptions, CaProcess, attest_node, new_key_and_csr};

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
