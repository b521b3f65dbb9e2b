//! Scraping the Prometheus endpoints of the binaries under test. The page
//! is fetched and parsed by the official Python client
//! (`tests/python/openmetrics_to_json.py`, run with `$SIGNET_PYTHON`), so
//! that what we serve is judged by a parser that shares no code with the
//! encoder.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A loopback address with a port free at the time of the call, for
/// `--metrics-listen`.
///
/// Each call of a test process gets its own address in 127.0.0.2–254, so
/// that the probed port cannot be handed out again to another server of the
/// same test before it binds: node APIs and other probes use 127.0.0.1.
///
/// # Errors
/// No port can be bound.
pub fn free_loopback_addr() -> anyhow::Result<SocketAddr> {
    static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ip = std::net::Ipv4Addr::new(127, 0, 0, 2 + n % 253);
    let l = std::net::TcpListener::bind((ip, 0)).context("finding a free port")?;
    Ok(l.local_addr()?)
}

/// One sample of a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// One scrape, as the Python parser read it.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub content_type: String,
    /// Family name and type (`counter`, `gauge`, `histogram`...).
    pub families: Vec<(String, String)>,
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// The value of the sample `name` whose labels include every pair of
    /// `labels`, if there is exactly one such sample.
    #[must_use]
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.samples.iter().filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        });
        let first = found.next()?;
        found.next().is_none().then_some(first.value)
    }

    /// The type of family `name`.
    #[must_use]
    pub fn family_type(&self, name: &str) -> Option<&str> {
        self.families
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_str())
    }
}

fn python() -> PathBuf {
    std::env::var_os("SIGNET_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from)
}

/// Fetches and parses `http://addr/metrics`.
///
/// # Errors
/// The Python client fails to fetch or parse the page (its message is in
/// the error), or its output is not the expected JSON.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<Scrape> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/openmetrics_to_json.py");
    let out = tokio::process::Command::new(python())
        .arg(&script)
        .arg(format!("http://{addr}/metrics"))
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {} (set SIGNET_PYTHON)", python().display()))?;
    if !out.status.success() {
        bail!(
            "scraping {addr} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("the scraper printed no JSON")?;
    let families = v["families"]
        .as_object()
        .context("no families")?
        .iter()
        .map(|(k, t)| (k.clone(), t.as_str().unwrap_or_default().to_owned()))
        .collect();
    let samples = v["samples"]
        .as_array()
        .context("no samples")?
        .iter()
        .map(|s| Sample {
            name: s["name"].as_str().unwrap_or_default().to_owned(),
            labels: s["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
            value: s["value"].as_f64().unwrap_or(f64::NAN),
        })
        .collect();
    Ok(Scrape {
        content_type: v["content_type"].as_str().unwrap_or_default().to_owned(),
        families,
        samples,
    })
}

/// Scrapes `addr` until `ready` holds for a scrape, and returns that one.
///
/// # Errors
/// A scrape fails, or `ready` does not hold within `limit` (the error
/// carries the last scrape's samples).
pub async fn scrape_until(
    addr: SocketAddr,
    limit: Duration,
    ready: impl Fn(&Scrape) -> bool,
) -> anyhow::Result<Scrape> {
    let deadline = Instant::now() + limit;
    loop {
        let s = scrape(addr).await?;
        if ready(&s) {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            bail!(
                "the metrics at {addr} did not reach the expected state within {limit:?}: {s:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
