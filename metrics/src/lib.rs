//! The Prometheus endpoint of signet-ca and signet-agent: one `GET /metrics`
//! over plain HTTP/1.1, answering with the OpenMetrics text format that
//! `prometheus-client` encodes. It is off unless an address is configured,
//! and everything a client can send is bounded: a few connections at a time,
//! a small request, a deadline for the headers and for the whole exchange,
//! one request per connection.
//!
//! The crate also holds the two helpers both binaries need: a gauge that
//! counts live values ([`GaugeGuard`]) and the writer for collectors that
//! read their samples at scrape time ([`encode_gauges`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE as CONTENT_TYPE_HEADER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// The only path served.
pub const PATH: &str = "/metrics";
/// The content type of the OpenMetrics text format, which is what
/// `prometheus_client::encoding::text::encode` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Connections served at once; more are closed on accept. A scraper needs one.
pub const MAX_CONNECTIONS: usize = 8;
/// How long a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may live, request and response included.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request buffered (hyper's smallest allowed read buffer); a
/// request line and headers beyond it are refused.
pub const MAX_REQUEST_BYTES: usize = 8192;
/// Most request header fields accepted.
pub const MAX_HEADERS: usize = 32;

/// The metrics address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("binding the metrics endpoint to {addr}: {source}")]
pub struct BindError {
    /// The address asked for.
    pub addr: std::net::SocketAddr,
    /// What the OS said.
    #[source]
    pub source: std::io::Error,
}

/// Binds the metrics endpoint's listener on `addr`.
///
/// # Errors
/// [`BindError`] when the address is taken or not ours.
pub async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, BindError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// Serves `registry` on `listener` until `shutdown` turns true (or its
/// sender is dropped). Accept errors (e.g. out of file descriptors) are
/// logged and retried after a pause; they never end the server.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics endpoint: too many connections; closing one");
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(respond(&req, registry).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .max_buf_size(MAX_REQUEST_BYTES)
                .max_headers(MAX_HEADERS)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "metrics endpoint: connection failed")
                }
                Err(_) => tracing::debug!(%peer, "metrics endpoint: connection timed out"),
            }
        });
    }
}

/// The answer to one request: the metrics for `GET /metrics`, an error
/// status for anything else.
async fn respond(req: &Request<Incoming>, registry: Arc<Registry>) -> Response<Full<Bytes>> {
    if req.uri().path() != PATH {
        return plain(StatusCode::NOT_FOUND, "only /metrics is served here\n");
    }
    if req.method() != Method::GET {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET is allowed\n");
        r.headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET"));
        return r;
    }
    // Collectors may read a database: keep them off the async workers.
    let encoded = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).map(|()| text)
    })
    .await;
    let text = match encoded {
        Ok(Ok(text)) => text,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "metrics endpoint: encoding failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n");
        }
        Err(e) => {
            tracing::error!(error = %e, "metrics endpoint: encoding task failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n");
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        CONTENT_TYPE_HEADER,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    r
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE_HEADER,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Counts a live value in a gauge: +1 when made, -1 when dropped. Kept in
/// whatever lives as long as the thing counted (a stream, a connection), so
/// that the gauge cannot drift on an early return or a panic.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    /// Increments `gauge` until the guard is dropped.
    pub fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Writes one gauge family read at scrape time: `name` with one sample per
/// label set. Used by collectors, which see the live state (authorities,
/// nodes, SVIDs) instead of mirroring it in metrics that could go stale.
///
/// # Errors
/// The encoder's (a formatting failure).
pub fn encode_gauges<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The label set of a sample without labels, for [`encode_gauges`].
pub const NO_LABELS: [(&str, &str); 0] = [];

/// Seconds since the Unix epoch, for timestamp gauges.
pub fn unix_seconds(t: std::time::SystemTime) -> f64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Seconds from `now` until `t` (negative once `t` has passed).
pub fn seconds_until(t: std::time::SystemTime, now: std::time::SystemTime) -> f64 {
    match t.duration_since(now) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn server() -> (std::net::SocketAddr, watch::Sender<bool>, Counter) {
        let mut registry = Registry::default();
        let counter = Counter::default();
        registry.register("test_things", "Things counted by the test", counter.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        tokio::spawn(serve(listener, Arc::new(registry), rx));
        (addr, tx, counter)
    }

    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn get_metrics_answers_openmetrics_text() {
        let (addr, _stop, counter) = server().await;
        counter.inc_by(3);
        let r = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(
            r.to_ascii_lowercase()
                .contains(&format!("content-type: {CONTENT_TYPE}")),
            "{r}"
        );
        assert!(r.contains("test_things_total 3\n"), "{r}");
        assert!(r.trim_end().ends_with("# EOF"), "{r}");
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        let (addr, _stop, _) = server().await;
        let r = exchange(
            addr,
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        assert!(r.to_ascii_lowercase().contains("allow: get"), "{r}");
        let r = exchange(addr, b"GET /debug HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        let r = exchange(addr, b"GET /metrics/../x HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    }

    #[tokio::test]
    async fn oversized_requests_are_refused() {
        let (addr, _stop, _) = server().await;
        let big = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(4 * MAX_REQUEST_BYTES)
        );
        let r = exchange(addr, big.as_bytes()).await;
        assert!(!r.contains("test_things"), "{r}");
        assert!(r.is_empty() || r.starts_with("HTTP/1.1 431"), "{r}");
        let many: String = (0..2 * MAX_HEADERS)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect();
        let r = exchange(
            addr,
            format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
        )
        .await;
        assert!(!r.contains("test_things"), "{r}");
    }

    #[tokio::test]
    async fn one_request_per_connection() {
        let (addr, _stop, _) = server().await;
        let r = exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await;
        assert_eq!(r.matches("HTTP/1.1 200").count(), 1, "{r}");
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed() {
        let (addr, _stop, _) = server().await;
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // Every slot is held by a client that sends nothing (yet).
        let r = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(r, "", "the connection over the limit was served");
        // Slots free up as those clients go away.
        drop(idle);
        let mut attempts = 0;
        loop {
            let r = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
            if r.starts_with("HTTP/1.1 200") {
                break;
            }
            attempts += 1;
            assert!(attempts < 500, "no slot was freed: {r:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn gauge_guard_counts_live_values() {
        let g = Gauge::default();
        let a = GaugeGuard::new(g.clone());
        let b = GaugeGuard::new(g.clone());
        assert_eq!(g.get(), 2);
        drop(a);
        assert_eq!(g.get(), 1);
        drop(b);
        assert_eq!(g.get(), 0);
    }

    #[test]
    fn collector_gauges_are_encoded_with_labels() {
        #[derive(Debug)]
        struct Fixed;
        impl prometheus_client::collector::Collector for Fixed {
            fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                encode_gauges(
                    &mut encoder,
                    "test_expiry_seconds",
                    "Seconds left",
                    [([("id", "a")], 1.5), ([("id", "b")], -2.0)],
                )
            }
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("# TYPE test_expiry_seconds gauge"), "{text}");
        assert!(text.contains("test_expiry_seconds{id=\"a\"} 1.5"), "{text}");
        assert!(
            text.contains("test_expiry_seconds{id=\"b\"} -2.0"),
            "{text}"
        );
    }
}
