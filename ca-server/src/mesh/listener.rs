//! The mesh API's TLS listener: its own serving certificate for the names
//! proxies dial (e.g. `istiod.istio-system.svc`), issued under the current
//! intermediate and renewed at half life; TLS 1.3 or 1.2; ALPN `h2`
//! offered but not required (linkerd2-proxy offers none); no client
//! certificate asked for. Bounded like the node API, with caps of its own:
//! connections in all and per address, handshake timeout, per-connection
//! streams, message size, and a connection age after which the proxy is
//! asked to reconnect (HTTP/2 GOAWAY, calls in flight finish).

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use signet_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateServiceServer;
use signet_proto::linkerd::identity::identity_server::IdentityServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use super::MeshAuth;
use super::config::MAX_MESSAGE_BYTES;
use super::istio::IstioApi;
use super::linkerd::LinkerdApi;
use crate::api::conns::ConnTracker;
use crate::api::tls::{self, ServerCertResolver, TlsSetupError};

/// Largest header block (the bearer token travels there).
const MAX_HEADER_LIST_BYTES: u32 = 32 * 1024;

/// Longest a call may take (a token review and a signature).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after its GOAWAY a connection is cut if it is still open: its
/// calls have ended by then (they are unary and bounded by CALL_TIMEOUT),
/// so only a client that keeps an idle connection open is cut.
const AGE_GRACE: Duration = Duration::from_secs(40);

/// The rustls configuration of the mesh API.
///
/// # Errors
/// rustls configuration errors.
pub fn server_config(
    resolver: Arc<ServerCertResolver>,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider as Arc<CryptoProvider>)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // Offered to clients that ask; a client that offers no ALPN at all
    // (linkerd2-proxy) is served too.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Issues the serving certificate (renewed in the background) and returns
/// the future that serves the mesh API on `listener` until `shutdown` fires.
///
/// # Errors
/// The serving certificate cannot be issued or TLS set up: reported before
/// anything is served.
pub fn serve(
    auth: MeshAuth,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, TlsSetupError> {
    let ca = auth.ca.clone();
    let (resolver, not_after) =
        ServerCertResolver::with_names(&ca, auth.config.server_names.clone())?;
    tokio::spawn(
        resolver
            .clone()
            .run(ca.clone(), not_after, shutdown.clone())
            .instrument(tracing::info_span!("mesh-server-cert")),
    );
    let tls_config = server_config(resolver)?;
    // Proxies present no client certificate: every mesh connection is an
    // unauthenticated one of a tracker of its own, with the mesh's caps, so
    // that proxies and nodes never take each other's places.
    let mut limits = ca.config().limits.clone();
    limits.max_connections = auth.config.max_connections;
    limits.max_unauthenticated_connections = auth.config.max_connections;
    limits.max_connections_per_ip = auth.config.max_connections_per_ip;
    limits.unauthenticated_timeout = auth.config.max_connection_age + AGE_GRACE;
    let tracker = ConnTracker::new(limits.clone());
    let istio = auth.config.istio.then(|| {
        IstioCertificateServiceServer::new(IstioApi::new(auth.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
    });
    let linkerd = auth.config.linkerd.then(|| {
        IdentityServer::new(LinkerdApi::new(auth.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
    });
    let mut wait = shutdown.clone();
    let server = tonic::transport::Server::builder()
        .timeout(CALL_TIMEOUT)
        // At its age a connection gets GOAWAY: calls in flight finish, new
        // ones go to a new connection. (No max_connection_age_grace: with
        // it, tonic cuts the connection at age + grace without a GOAWAY;
        // the tracker's lifetime above is the hard stop instead.)
        .max_connection_age(auth.config.max_connection_age)
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .add_optional_service(istio)
        .add_optional_service(linkerd)
        .serve_with_incoming_shutdown(
            tls::incoming(listener, tls_config, tracker, shutdown),
            async move {
                let _ = wait.wait_for(|s| *s).await;
            },
        );
    Ok(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "the mesh API stopped");
        }
    })
}
