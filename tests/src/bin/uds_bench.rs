//! `signet-uds-bench`: what the unix-socket `:authority` normaliser costs.
//!
//! Prints, from one run on this machine:
//! - the ceiling: memcpy throughput of one core (what any pass-through of
//!   bytes costs at best);
//! - the rewriter alone, in process: header blocks per second for a gRPC
//!   request as grpc-core sends it (first block literal, then indexed), and
//!   DATA pass-through in bytes per second;
//! - unary gRPC calls (health Check) over a unix socket, tonic client and
//!   server in this process, served by plain tonic and by `signet_uds::serve`,
//!   back to back and with concurrent callers.
//!
//! Usage: `signet-uds-bench [--seconds N] [--concurrency N] [--only plain|wrapped|serve]`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use signet_uds::authority::{PREFACE, Rewriter};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn arg(name: &str, default: u64) -> anyhow::Result<u64> {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .map(|s| s.parse().with_context(|| format!("{name} takes a number")))
        .transpose()
        .map(|v| v.unwrap_or(default))
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(0).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Bytes per second one core copies, 1 MiB at a time.
fn memcpy_ceiling(dur: Duration) -> f64 {
    let src = vec![7u8; 1 << 20];
    let mut dst = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < dur {
        for _ in 0..64 {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
            bytes += 1 << 20;
        }
    }
    bytes as f64 / start.elapsed().as_secs_f64()
}

/// Header blocks per second through the rewriter, and the size of one
/// forwarded block. `requests` HEADERS frames on one connection, encoded as
/// one HPACK encoder would (the first literal, the rest mostly indexed).
fn rewrite_rate(requests: u32, socket: &str) -> anyhow::Result<(f64, usize, usize)> {
    let mut encoder = loona_hpack::Encoder::new();
    let authority = socket.replace('/', "%2F");
    let mut input = PREFACE.to_vec();
    input.extend(frame(0x4, 0, 0, &[]));
    let mut one_block = 0;
    for i in 0..requests {
        let headers: [(&[u8], &[u8]); 8] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
            (b":authority", authority.as_bytes()),
            (b"te", b"trailers"),
            (b"content-type", b"application/grpc"),
            (
                b"user-agent",
                b"grpc-python/1.85.0 grpc-c/51.0.0 (linux; chttp2)",
            ),
            (b"workload.spiffe.io", b"true"),
        ];
        let block = encoder.encode(headers);
        one_block = block.len();
        input.extend(frame(0x1, 0x4, 2 * i + 1, &block));
    }
    let mut out = Vec::with_capacity(input.len() * 4);
    let start = Instant::now();
    let mut rewriter = Rewriter::new();
    for chunk in input.chunks(16 * 1024) {
        rewriter
            .feed(chunk, &mut out)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let secs = start.elapsed().as_secs_f64();
    let forwarded = (out.len() - PREFACE.len() - 9) / requests as usize - 9;
    Ok((f64::from(requests) / secs, one_block, forwarded))
}

/// DATA bytes per second through the rewriter's copying path (`feed`).
fn data_rate(megabytes: usize) -> anyhow::Result<f64> {
    let payload = vec![1u8; 16 * 1024];
    let mut input = PREFACE.to_vec();
    for _ in 0..megabytes * 64 {
        input.extend(frame(0x0, 0, 1, &payload));
    }
    let mut out = Vec::with_capacity(input.len());
    let start = Instant::now();
    let mut rewriter = Rewriter::new();
    for chunk in input.chunks(16 * 1024) {
        rewriter
            .feed(chunk, &mut out)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(input.len() as f64 / start.elapsed().as_secs_f64())
}

async fn channel(path: &Path) -> anyhow::Result<Channel> {
    let path: PathBuf = path.to_path_buf();
    Ok(Endpoint::try_from("http://localhost")?
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

struct Row {
    calls: u64,
    secs: f64,
    p50: Duration,
    p99: Duration,
}

/// Unary Check calls for `dur`, `concurrency` callers sharing one channel.
async fn unary(path: &Path, concurrency: u64, dur: Duration) -> anyhow::Result<Row> {
    let channel = channel(path).await?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut client = HealthClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while start.elapsed() < dur {
                let t = Instant::now();
                client
                    .check(HealthCheckRequest::default())
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    let at = |q: f64| all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)));
    Ok(Row {
        calls: all.len() as u64,
        secs,
        p50: at(0.5).copied().unwrap_or_default(),
        p99: at(0.99).copied().unwrap_or_default(),
    })
}

async fn plain_server(path: &Path, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let listener = tokio::net::UnixListener::bind(path)?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    let mut stop = stop;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            ),
    );
    Ok(())
}

/// Plain tonic, but every connection wrapped in the normaliser: what the
/// rewriter alone costs, without the limits.
async fn wrapped_server(path: &Path, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let listener = tokio::net::UnixListener::bind(path)?;
    let incoming = futures::stream::unfold(listener, |l| async move {
        let conn = l
            .accept()
            .await
            .map(|(s, _)| signet_uds::NormalizedStream::new(s, None, None));
        Some((conn, l))
    });
    let (_reporter, health) = tonic_health::server::health_reporter();
    let mut stop = stop;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            }),
    );
    Ok(())
}

async fn normalised_server(path: &Path, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let bound = signet_uds::bind(path, 0o600).await?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(signet_uds::serve(
        bound,
        tonic::service::Routes::new(health),
        signet_uds::ServeOptions::default(),
        stop,
    ));
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds = arg("--seconds", 5)?;
    let concurrency = arg("--concurrency", 16)?;
    let dur = Duration::from_secs(seconds);

    let copy = memcpy_ceiling(Duration::from_secs(1));
    println!("ceiling (memcpy, 1 core): {:.1} GB/s", copy / 1e9);

    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("normalised.sock");
    let (rate, block, forwarded) = rewrite_rate(200_000, &socket.display().to_string())?;
    println!(
        "rewriter, header blocks: {:.0}/s ({:.2} µs each; {block} bytes in, {forwarded} bytes forwarded)",
        rate,
        1e6 / rate
    );
    let data = data_rate(256)?;
    println!(
        "rewriter, DATA through feed (copying path): {:.1} GB/s ({:.0}% of memcpy)",
        data / 1e9,
        100.0 * data / copy
    );

    let (stop_tx, stop) = watch::channel(false);
    let plain = dir.path().join("plain.sock");
    plain_server(&plain, stop.clone()).await?;
    let wrapped = dir.path().join("wrapped.sock");
    wrapped_server(&wrapped, stop.clone()).await?;
    normalised_server(&socket, stop).await?;

    println!();
    println!("| unary health Check over a unix socket | calls/s | p50 | p99 | of plain tonic |");
    println!("|---|---|---|---|---|");
    for c in [1, concurrency] {
        if let Some(only) = std::env::args().skip_while(|a| a != "--only").nth(1) {
            let path = match only.as_str() {
                "plain" => &plain,
                "wrapped" => &wrapped,
                _ => &socket,
            };
            let row = unary(path, c, dur).await?;
            println!(
                "{only}, {c} caller(s): {:.0}/s",
                row.calls as f64 / row.secs
            );
            continue;
        }
        let base = unary(&plain, c, dur).await?;
        let only = unary(&wrapped, c, dur).await?;
        let ours = unary(&socket, c, dur).await?;
        let base_rate = base.calls as f64 / base.secs;
        let rows = [
            ("plain tonic", &base),
            ("plain tonic + normaliser", &only),
            ("signet_uds::serve (normaliser + limits)", &ours),
        ];
        for (name, row) in rows {
            let r = row.calls as f64 / row.secs;
            println!(
                "| {name}, {c} caller(s) | {r:.0} | {:.0} µs | {:.0} µs | {:.0}% |",
                row.p50.as_secs_f64() * 1e6,
                row.p99.as_secs_f64() * 1e6,
                100.0 * r / base_rate
            );
        }
    }
    stop_tx.send_replace(true);
    Ok(())
}
