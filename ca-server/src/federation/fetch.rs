//! One bounded HTTPS GET of a bundle endpoint: connect and TLS within
//! [`CONNECT_TIMEOUT`], the whole exchange within [`TOTAL_TIMEOUT`], at most
//! [`MAX_BUNDLE_LEN`] bytes of body, no redirect followed, HTTP/1.1 only.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use signet_identity::bundle::MAX_BUNDLE_LEN;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::EndpointUrl;
use super::check::FetchError;

/// TCP connect plus TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole fetch.
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response header block read.
const MAX_RESPONSE_HEADER_BYTES: usize = 16 * 1024;

/// Fetches the body of `url` over TLS configured by `tls`.
///
/// # Errors
/// [`FetchError`] naming what failed; nothing is retried here.
pub async fn fetch(url: &EndpointUrl, tls: Arc<ClientConfig>) -> Result<Bytes, FetchError> {
    match tokio::time::timeout(TOTAL_TIMEOUT, fetch_inner(url, tls)).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Timeout(TOTAL_TIMEOUT)),
    }
}

async fn fetch_inner(url: &EndpointUrl, tls: Arc<ClientConfig>) -> Result<Bytes, FetchError> {
    let addr = format!("{}:{}", url.host_header_host(), url.port());
    let server_name =
        ServerName::try_from(url.host().to_owned()).map_err(|e| FetchError::Connect {
            addr: addr.clone(),
            reason: format!("not a usable server name: {e}"),
        })?;
    let connect = async {
        let tcp = TcpStream::connect((url.host(), url.port()))
            .await
            .map_err(|e| FetchError::Connect {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
            .map_err(|e| FetchError::Tls(e.to_string()))
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| FetchError::Connect {
            addr: addr.clone(),
            reason: format!("no TLS connection within {CONNECT_TIMEOUT:?}"),
        })??;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_RESPONSE_HEADER_BYTES.max(8192))
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = http::Request::get(url.path())
        .header(http::header::HOST, url.host_header())
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "signet-ca")
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(FetchError::Redirect(status.as_u16()));
        }
        if status != http::StatusCode::OK {
            return Err(FetchError::Status(status.as_u16()));
        }
        if let Some(len) = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            && len > MAX_BUNDLE_LEN as u64
        {
            return Err(FetchError::TooLarge {
                limit: MAX_BUNDLE_LEN,
            });
        }
        let body = Limited::new(response.into_body(), MAX_BUNDLE_LEN)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    FetchError::TooLarge {
                        limit: MAX_BUNDLE_LEN,
                    }
                } else {
                    FetchError::Http(e.to_string())
                }
            })?;
        Ok(body.to_bytes())
    }
    .await;
    driver.abort();
    result
}
