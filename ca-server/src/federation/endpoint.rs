//! The bundle endpoint (Federation standard, section 5): `GET /` over
//! HTTPS answers with this trust domain's bundle as a SPIFFE JWK Set, with
//! `spiffe_sequence` and `spiffe_refresh_hint`. Any other path is 404, any
//! other method 405, a request with a body 413.
//!
//! Bounded like the other listeners: at most [`MAX_CONNECTIONS`] at once
//! (more are closed on accept), a handshake timeout, a header timeout, a
//! small header buffer, and a lifetime per connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::ResolvesServerCert;
use signet_identity::TrustBundle;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use super::FederationError;
use super::config::{BundleEndpoint, EndpointTls};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Longest TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers (also the idle
/// time allowed between requests on a kept-alive connection).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one connection.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Largest request head buffered.
pub const MAX_REQUEST_BYTES: usize = 8192;
/// Most request header fields.
pub const MAX_HEADERS: usize = 32;

/// The served document: the bundle as JWKS with the refresh hint set.
pub fn document(bundle: &TrustBundle, refresh_hint: Duration) -> Bytes {
    let mut b = bundle.clone();
    b.set_refresh_hint(Some(refresh_hint));
    Bytes::from(b.to_jwks())
}

/// The endpoint's TLS configuration: the CA's own SVID through `svid`
/// (renewed by its owner) for https_spiffe, the configured certificate for
/// https_web. No client certificates; TLS 1.2 and 1.3.
///
/// # Errors
/// rustls refusing the configuration.
pub fn server_config(
    endpoint: &BundleEndpoint,
    svid: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<ServerConfig>, FederationError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider as Arc<CryptoProvider>)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| FederationError::Endpoint(e.to_string()))?
        .with_no_client_auth();
    let mut config = match &endpoint.tls {
        EndpointTls::Spiffe => builder.with_cert_resolver(svid),
        EndpointTls::Web(key) => builder.with_cert_resolver(Arc::new(Fixed(key.clone()))),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Keeps `out` holding the document of the current bundle until
/// `shutdown`.
pub async fn follow_bundle(
    mut bundles: watch::Receiver<Arc<TrustBundle>>,
    refresh_hint: Duration,
    out: watch::Sender<Bytes>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let doc = document(&bundles.borrow_and_update(), refresh_hint);
        out.send_replace(doc);
        tokio::select! {
            changed = bundles.changed() => if changed.is_err() { return },
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Serves `document` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    document: watch::Receiver<Bytes>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "bundle endpoint: accept failed; pausing");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "bundle endpoint: too many connections; closing one");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let document = document.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "bundle endpoint: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "bundle endpoint: TLS handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| {
                let doc = document.borrow().clone();
                async move { Ok::<_, Infallible>(respond(&req, doc)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_REQUEST_BYTES)
                .max_headers(MAX_HEADERS)
                .serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            let lifetime = tokio::time::sleep(CONNECTION_LIFETIME);
            tokio::pin!(lifetime);
            let mut closing = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "bundle endpoint: connection failed");
                        }
                        return;
                    }
                    () = &mut lifetime, if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = stop.wait_for(|s| *s), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
}

/// The answer to one request.
pub fn respond(req: &Request<Incoming>, document: Bytes) -> Response<Full<Bytes>> {
    if req.uri().path() != "/" {
        return plain(StatusCode::NOT_FOUND, "only / is served here\n");
    }
    if req.method() != Method::GET {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET is allowed\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    if req.body().size_hint().upper() != Some(0) {
        let mut r = plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "a request body is not accepted\n",
        );
        r.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    let mut r = Response::new(Full::new(document));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
