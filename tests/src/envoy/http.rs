//! One HTTP/1.1 GET on loopback, for Envoy's admin API and for traffic
//! through its listeners: a fresh connection per request, so that every
//! request through a listener makes its own TLS handshake upstream.

use anyhow::{Context as _, anyhow};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper::header::{CONNECTION, HOST};
use hyper_util::rt::TokioIo;

use super::HTTP_TIMEOUT;
use crate::netns::Net;

/// One HTTP/1.1 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// `GET path` on `127.0.0.1:port` over a new connection, with
/// `Connection: close`: the whole response, or an error when the
/// connection fails, the response is not HTTP or takes over 5 s.
///
/// # Errors
/// As above.
pub async fn http_get(port: u16, path: &str) -> anyhow::Result<HttpResponse> {
    http_get_in(&Net::Host, port, path).await
}

/// As [`http_get`], on the loopback of `net` (a network namespace's own).
///
/// # Errors
/// As [`http_get`].
pub async fn http_get_in(net: &Net, port: u16, path: &str) -> anyhow::Result<HttpResponse> {
    tokio::time::timeout(HTTP_TIMEOUT, http_get_inner(net, port, path))
        .await
        .map_err(|_| {
            anyhow!(
                "GET {path} on port {port} ({}): no response within {HTTP_TIMEOUT:?}",
                net.label()
            )
        })?
}

async fn http_get_inner(net: &Net, port: u16, path: &str) -> anyhow::Result<HttpResponse> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let stream = net
        .connect(addr)
        .await
        .with_context(|| format!("connecting to {addr} ({})", net.label()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP/1.1 handshake with 127.0.0.1:{port}"))?;
    let request = hyper::Request::get(path)
        .header(HOST, "localhost")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .with_context(|| format!("GET {path}: not a valid request"))?;
    // The sender moves into the exchange and is dropped with it, so the
    // connection future ends once the response is read; both run here,
    // without a task that could outlive the timeout.
    let exchange = async move {
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, body))
    };
    let (exchange, _connection) = tokio::join!(exchange, connection);
    let (status, body) =
        exchange.with_context(|| format!("GET {path} on port {port}: no valid HTTP response"))?;
    Ok(HttpResponse {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
