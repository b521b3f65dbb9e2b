//! signet-agent-bench: the node agent's figures, against real signet-ca and
//! signet-agent processes. Prints; asserts nothing.
//!
//! 1. Resident memory of the agent holding N entries with their SVIDs.
//! 2. Delay from a bundle change at the CA (a prepared root) to the push
//!    seen by a Workload API client (FetchX509Bundles) and an SDS client
//!    (ROOTCA), over repeated changes.
//! 3. SDS fan-out: time until M open StreamSecrets streams all received the
//!    push of one bundle change.
//!
//! Usage: `cargo build --release --bins && target/release/signet-agent-bench [--entries 1000] [--streams 1000]`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use signet_proto::ca::v1 as pb;
use signet_proto::workload as wl;
use signet_tests::{AgentProcess, CaOptions, CaProcess};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

fn arg(name: &str, default: usize) -> anyhow::Result<usize> {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .map(|s| s.parse().with_context(|| format!("{name} takes a number")))
        .transpose()
        .map(|v| v.unwrap_or(default))
}

async fn uds_channel(path: &Path) -> anyhow::Result<Channel> {
    let path: PathBuf = path.to_path_buf();
    Ok(Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }))
        .await?)
}

fn rss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// An SDS stream for `name` whose responses are ACKed and reported.
async fn sds_stream(
    channel: Channel,
    name: &str,
    id: usize,
    seen: mpsc::UnboundedSender<(usize, Instant)>,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(4);
    let name = name.to_owned();
    let request = move |version: String, nonce: String| DiscoveryRequest {
        version_info: version,
        node: Some(Node {
            id: format!("bench-{id}"),
            cluster: "bench".into(),
            ..Default::default()
        }),
        resource_names: vec![name.clone()],
        type_url: SECRET_TYPE.into(),
        response_nonce: nonce,
        ..Default::default()
    };
    tx.send(request(String::new(), String::new())).await?;
    let mut stream = SecretDiscoveryServiceClient::new(channel)
        .stream_secrets(ReceiverStream::new(rx))
        .await?
        .into_inner();
    tokio::spawn(async move {
        while let Ok(Some(DiscoveryResponse {
            version_info,
            nonce,
            ..
        })) = stream.message().await
        {
            let _ = seen.send((id, Instant::now()));
            if tx.send(request(version_info, nonce)).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let entries = arg("--entries", 1000)?;
    let streams = arg("--streams", 1000)?;
    let changes = arg("--changes", 20)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "# signet-agent-bench ({cores} cores): {entries} entries, {streams} SDS streams, {changes} bundle changes"
    );

    let ca = CaProcess::start(CaOptions::default()).await?;
    let agent = AgentProcess::start(&ca, "bench-node", &[]).await?;
    let pid = agent.pid().context("agent not running")?;
    let (idle_rss, _) = rss_kib(pid)?;
    let mut admin = ca.admin().await?;
    let node_id = ca.node_id("bench-node");
    // Entry 0 is this process (uid 0 when run as root; else our uid).
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m))?;
    let started = Instant::now();
    for i in 0..entries {
        let selector = if i == 0 {
            format!("uid:{uid}")
        } else {
            format!("uid:{}", 100_000 + i)
        };
        admin
            .create_entry(pb::CreateEntryRequest {
                spiffe_id: ca.id(&format!("/bench/w{i}")),
                parent_id: node_id.clone(),
                selectors: vec![pb::Selector {
                    r#type: "unix".into(),
                    value: selector,
                }],
                x509_svid_ttl_seconds: 0,
                dns_names: vec![],
                federates_with: vec![],
            })
            .await?;
    }
    let created = started.elapsed();
    // Wait until the agent holds every SVID (it reports its count to the CA).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let agents = admin
            .list_agents(pb::ListAgentsRequest {})
            .await?
            .into_inner()
            .agents;
        if agents
            .iter()
            .any(|a| a.spiffe_id == node_id && a.svid_count as usize >= entries)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the agent did not report {entries} SVIDs within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let synced = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss, hwm) = rss_kib(pid)?;
    println!();
    println!("## Agent memory");
    println!("| state | VmRSS | VmHWM |");
    println!("|---|---|---|");
    println!(
        "| idle, no entries | {:.1} MiB | |",
        idle_rss as f64 / 1024.0
    );
    println!(
        "| {entries} entries, {entries} SVIDs cached | {:.1} MiB | {:.1} MiB |",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "({entries} entries created in {created:.2?}; all SVIDs held {synced:.2?} after the first entry)"
    );

    // Bundle-change latency, Workload API and SDS.
    let mut wl_client = wl::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
        uds_channel(agent.workload_api_socket()).await?,
    );
    let mut req = tonic::Request::new(wl::X509BundlesRequest {});
    req.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    let mut bundles = wl_client.fetch_x509_bundles(req).await?.into_inner();
    bundles.message().await?.context("no first bundle")?;
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    sds_stream(uds_channel(agent.sds_socket()).await?, "ROOTCA", 0, seen_tx).await?;
    seen_rx.recv().await.context("no first SDS response")?;
    let (mut wl_delays, mut sds_delays) = (Vec::new(), Vec::new());
    for _ in 0..changes {
        let t0 = Instant::now();
        admin
            .prepare_authority(pb::PrepareAuthorityRequest {
                kind: pb::AuthorityKind::Root.into(),
            })
            .await?;
        let wl_at = tokio::time::timeout(Duration::from_secs(10), bundles.message())
            .await??
            .map(|_| Instant::now())
            .context("stream ended")?;
        let (_, sds_at) = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
            .await?
            .context("SDS stream ended")?;
        wl_delays.push(wl_at - t0);
        sds_delays.push(sds_at - t0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!();
    println!(
        "## Bundle change at the CA → push to clients ({changes} changes; from the admin call that adds a root)"
    );
    println!("| client | p50 | p99 | max |");
    println!("|---|---|---|---|");
    for (name, d) in [
        ("Workload API FetchX509Bundles", &wl_delays),
        ("SDS StreamSecrets ROOTCA", &sds_delays),
    ] {
        println!(
            "| {name} | {} | {} | {} |",
            ms(pct(d.clone(), 0.5)),
            ms(pct(d.clone(), 0.99)),
            ms(pct(d.clone(), 1.0))
        );
    }

    // SDS fan-out.
    let per_conn = 100;
    let (fan_tx, mut fan_rx) = mpsc::unbounded_channel();
    let mut opened = 0;
    while opened < streams {
        let channel = uds_channel(agent.sds_socket()).await?;
        for _ in 0..per_conn.min(streams - opened) {
            sds_stream(channel.clone(), "ROOTCA", opened, fan_tx.clone()).await?;
            opened += 1;
        }
    }
    let mut initial = vec![false; streams];
    let mut n = 0;
    while n < streams {
        let (id, _) = tokio::time::timeout(Duration::from_secs(30), fan_rx.recv())
            .await?
            .context("fan-out stream ended")?;
        if !initial[id] {
            initial[id] = true;
            n += 1;
        }
    }
    let (rss_streams, _) = rss_kib(pid)?;
    let t0 = Instant::now();
    admin
        .prepare_authority(pb::PrepareAuthorityRequest {
            kind: pb::AuthorityKind::Root.into(),
        })
        .await?;
    let mut got = vec![None; streams];
    let mut n = 0;
    while n < streams {
        let (id, at) = tokio::time::timeout(Duration::from_secs(30), fan_rx.recv())
            .await?
            .context("fan-out stream ended")?;
        if got[id].is_none() {
            got[id] = Some(at - t0);
            n += 1;
        }
    }
    let delays: Vec<Duration> = got.into_iter().flatten().collect();
    println!();
    println!(
        "## SDS fan-out: one bundle change pushed to {streams} open StreamSecrets streams ({} connections)",
        streams.div_ceil(per_conn)
    );
    println!("| first stream | p50 | p99 | last stream | agent VmRSS with the streams open |");
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {:.1} MiB |",
        ms(pct(delays.clone(), 0.0)),
        ms(pct(delays.clone(), 0.5)),
        ms(pct(delays.clone(), 0.99)),
        ms(pct(delays, 1.0)),
        rss_streams as f64 / 1024.0
    );
    Ok(())
}
