//! signet-flood-bench: how a connection flood on the node port affects
//! legitimate callers of a real `signet-ca` process. Measures, without and
//! then during a flood, the latency of (a) a node opening a fresh mTLS
//! connection and signing one SVID, (b) an administrator minting an SVID
//! over the admin socket; and the CA's resident memory and open descriptors
//! at the end of each phase. Prints figures; asserts nothing.
//!
//! The flood: `--flooders N` tasks (default 4000), each holding one idle
//! connection from one of 8 loopback source addresses, half never starting
//! TLS, half finishing TLS without a client certificate and then sending
//! nothing; when the CA closes one, its task reconnects after a second.
//!
//! Usage: `cargo build --release --bins && SIGNET_BIN_DIR=target/release
//! target/release/signet-flood-bench [--requests N] [--flooders N]`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use signet_proto::ca::v1 as pb;
use signet_tests::{
    CaOptions, CaProcess, attest_node, crypto_provider, new_key_and_csr, root_store,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

fn arg(name: &str, default: usize) -> anyhow::Result<usize> {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .with_context(|| format!("{name} takes a number"))
        .map(|v| v.unwrap_or(default))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Row {
    label: String,
    latencies: Vec<Duration>,
    failures: usize,
}

impl Row {
    fn print(&mut self) {
        self.latencies.sort();
        println!(
            "| {} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            self.label,
            self.latencies.len(),
            pct(&self.latencies, 0.5).as_secs_f64() * 1e3,
            pct(&self.latencies, 0.99).as_secs_f64() * 1e3,
            self.latencies
                .last()
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
                * 1e3,
            self.failures
        );
    }
}

/// `requests` times: a fresh mTLS connection with the node SVID, then one
/// single-item BatchSign on it.
async fn node_calls(
    ca: &CaProcess,
    identity: &signet_tests::NodeIdentity,
    entry: &str,
    requests: usize,
    label: &str,
) -> Row {
    let mut row = Row {
        label: label.to_owned(),
        latencies: Vec::with_capacity(requests),
        failures: 0,
    };
    for _ in 0..requests {
        let Ok((_, csr)) = new_key_and_csr() else {
            row.failures += 1;
            continue;
        };
        let start = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(30), async {
            let mut client = ca.node_client(Some(identity.tls_identity())).await?;
            client
                .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
                    items: vec![pb::SignRequestItem {
                        entry_id: entry.to_owned(),
                        csr,
                        ttl_seconds: 0,
                    }],
                })
                .await?;
            anyhow::Ok(())
        })
        .await;
        match result {
            Ok(Ok(())) => row.latencies.push(start.elapsed()),
            _ => row.failures += 1,
        }
    }
    row
}

/// `requests` admin mints (as `signet ca mint` does), each on a fresh
/// admin-socket connection.
async fn admin_mints(ca: &CaProcess, requests: usize, label: &str) -> Row {
    let mut row = Row {
        label: label.to_owned(),
        latencies: Vec::with_capacity(requests),
        failures: 0,
    };
    for i in 0..requests {
        let Ok((_, csr)) = new_key_and_csr() else {
            row.failures += 1;
            continue;
        };
        let start = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(30), async {
            ca.admin()
                .await?
                .mint_x509_svid(pb::MintX509SvidRequest {
                    spiffe_id: ca.id(&format!("/bench/minted/{i}")),
                    csr,
                    ttl_seconds: 0,
                    dns_names: vec![],
                })
                .await?;
            anyhow::Ok(())
        })
        .await;
        match result {
            Ok(Ok(())) => row.latencies.push(start.elapsed()),
            _ => row.failures += 1,
        }
    }
    row
}

/// One flooder: holds a connection until the CA closes it, then waits a
/// second and opens the next. Counts connections opened.
async fn flooder(
    port: u16,
    source: [u8; 4],
    tls: Option<TlsConnector>,
    opened: Arc<AtomicU64>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    while !*stop.borrow() {
        let held = async {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from((source, 0)))?;
            let tcp = socket.connect(target).await?;
            opened.fetch_add(1, Ordering::Relaxed);
            let mut buf = [0u8; 64];
            match &tls {
                None => {
                    let mut tcp = tcp;
                    while tcp.read(&mut buf).await? > 0 {}
                }
                Some(tls) => {
                    let name = ServerName::try_from("localhost")
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                    let mut s = tls.connect(name, tcp).await?;
                    while s.read(&mut buf).await? > 0 {}
                }
            }
            std::io::Result::Ok(())
        };
        let mut stop2 = stop.clone();
        tokio::select! {
            _ = held => {}
            _ = stop2.changed() => return,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn proc_figures(pid: u32) -> String {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    format!("RSS {rss}, {fds} open descriptors")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let requests = arg("--requests", 200)?;
    let flooders = arg("--flooders", 4000)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "# signet-flood-bench: {requests} calls per row, {flooders} flooding connections, {cores} cores"
    );

    let ca = CaProcess::start(CaOptions::default()).await?;
    let pid = ca.pid().context("the CA runs")?;
    let identity = attest_node(&ca, "bench-node").await?;
    let entry = ca
        .admin()
        .await?
        .create_entry(pb::CreateEntryRequest {
            spiffe_id: ca.id("/bench/web"),
            parent_id: ca.node_id("bench-node"),
            selectors: vec![pb::Selector {
                r#type: "unix".into(),
                value: "uid:1000".into(),
            }],
            x509_svid_ttl_seconds: 0,
            dns_names: vec![],
            federates_with: vec![],
        })
        .await?
        .into_inner()
        .id;

    println!("| run | calls | p50 | p99 | max | failed |");
    println!("|---|---|---|---|---|---|");
    let mut rows = vec![
        node_calls(
            &ca,
            &identity,
            &entry,
            requests,
            "node: connect + sign, no flood",
        )
        .await,
        admin_mints(&ca, requests, "admin: mint, no flood").await,
    ];
    for row in &mut rows {
        row.print();
    }
    let quiet = proc_figures(pid);

    let roots = ca.bundle()?.x509_authorities().to_vec();
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(root_store(&roots)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tls = TlsConnector::from(Arc::new(config));
    let opened = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::with_capacity(flooders);
    for i in 0..flooders {
        let source = [127, 0, 0, 2 + (i % 8) as u8];
        let tls = (i % 2 == 1).then(|| tls.clone());
        tasks.push(tokio::spawn(flooder(
            ca.port(),
            source,
            tls,
            opened.clone(),
            stop_rx.clone(),
        )));
    }
    // Let the flood build up.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let flood_start = Instant::now();
    let opened_before = opened.load(Ordering::Relaxed);
    let mut rows = vec![
        node_calls(
            &ca,
            &identity,
            &entry,
            requests,
            "node: connect + sign, during flood",
        )
        .await,
        admin_mints(&ca, requests, "admin: mint, during flood").await,
    ];
    let flooded = proc_figures(pid);
    let rate = (opened.load(Ordering::Relaxed) - opened_before) as f64
        / flood_start.elapsed().as_secs_f64();
    for row in &mut rows {
        row.print();
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    println!();
    println!("CA without flood: {quiet}");
    println!("CA during flood: {flooded}; flood opened {rate:.0} connections/s");
    Ok(())
}
