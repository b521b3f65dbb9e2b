//! TLS for the node API: the server presents its own SVID (renewed at half
//! life), client certificates are optional at the handshake (attestation has
//! none yet) and, when given, must be X.509-SVIDs of the current bundle. The
//! verified peer identity travels to handlers as connection info.
//!
//! The listener bounds what callers can hold: handshakes time out, every
//! connection takes a slot of [`ConnTracker`] before its handshake, and a
//! connection closes when its kill switch fires (lifetime without a node
//! SVID, credential expiry, revocation).

use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use signet_identity::x509::verify_x509_svid;
use signet_identity::{KeyType, PrivateKey, SpiffeId, TrustBundle};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::conns::{ConnTracker, KillSwitch, Slot};
use crate::ca::{Ca, CaError};

/// What handlers learn about the caller's connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The remote address.
    pub remote: std::net::SocketAddr,
    /// The SPIFFE ID of a verified client certificate, if one was presented.
    pub spiffe_id: Option<SpiffeId>,
    /// When that certificate expires: a long-lived connection must not
    /// outlive its credential.
    pub not_after: Option<std::time::SystemTime>,
    /// The serial of that certificate, lowercase hex: only the node's
    /// current SVID and the one it was renewed from are honoured.
    pub serial: Option<String>,
    /// Batch signing calls this connection may have in flight.
    pub batch_slots: Arc<tokio::sync::Semaphore>,
}

/// Most `BatchSignX509Svid` calls in flight on one connection: each may hold
/// a 4 MiB request and its decoded items.
pub const MAX_BATCHES_PER_CONNECTION: usize = 4;

/// A TLS connection carrying its [`PeerInfo`], its place in the connection
/// counts and its kill switch.
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    info: PeerInfo,
    kill: KillSwitch,
    killed: bool,
    // Freed when the connection is dropped.
    _slot: Slot,
}

impl TlsConn {
    /// Whether the kill switch has fired; polls it (and registers the waker)
    /// until it does.
    fn poll_killed(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.killed && self.kill.as_mut().poll(cx).is_ready() {
            self.killed = true;
            tracing::debug!(remote = %self.info.remote, "closing the connection: lifetime over or credential revoked");
        }
        self.killed
    }
}

fn closed() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "connection lifetime over or credential revoked",
    )
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.poll_killed(cx) {
            return Poll::Ready(Err(closed()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.poll_killed(cx) {
            return Poll::Ready(Err(closed()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.poll_killed(cx) {
            return Poll::Ready(Err(closed()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Verifies client certificates as X.509-SVIDs of the CA's current bundle
/// that do not chain through a revoked intermediate.
#[derive(Debug)]
struct SvidClientVerifier {
    bundle: watch::Receiver<Arc<crate::ca::NodeBundle>>,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for SvidClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let node_bundle = self.bundle.borrow().clone();
        if intermediates.iter().any(|i| {
            node_bundle
                .revoked
                .iter()
                .any(|r| r.as_slice() == i.as_ref())
        }) {
            return Err(rustls::Error::General(
                "client certificate chains through a revoked intermediate".into(),
            ));
        }
        let bundle = node_bundle.bundle.clone();
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let when = std::time::UNIX_EPOCH + Duration::from_secs(now.as_secs());
        verify_x509_svid(&chain, &bundle, when)
            .map(|_| ClientCertVerified::assertion())
            .map_err(|e| {
                rustls::Error::General(format!("client certificate is not a valid X.509-SVID: {e}"))
            })
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Serves the CA's own SVID, replaced at half of its life.
#[derive(Debug)]
pub struct ServerCertResolver {
    current: RwLock<Arc<CertifiedKey>>,
    /// The DNS names the certificate carries.
    names: Vec<String>,
}

impl ResolvesServerCert for ServerCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

/// Why the node API's TLS set-up failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// The serving key could not be made.
    #[error("serving key: {0}")]
    Key(#[from] signet_identity::KeyError),
    /// The serving key's CSR did not verify.
    #[error("serving key's CSR: {0}")]
    Csr(#[from] signet_identity::x509::CsrError),
    /// The CA refused or failed to sign the serving certificate.
    #[error("signing the serving certificate: {0}")]
    Sign(#[from] CaError),
    /// A root could not be put in a bundle to check the chain.
    #[error("bundle: {0}")]
    Bundle(#[from] signet_identity::BundleError),
    /// rustls refused the key or the configuration.
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

impl ServerCertResolver {
    /// Issues a first server SVID.
    ///
    /// # Errors
    /// Signing failures.
    pub fn new(ca: &Ca) -> Result<(Arc<Self>, std::time::SystemTime), TlsSetupError> {
        Self::with_names(ca, ca.config().server_names.clone())
    }

    /// Issues a first server SVID carrying `names` as DNS SANs (another
    /// listener's names, e.g. the mesh API's).
    ///
    /// # Errors
    /// Signing failures.
    pub fn with_names(
        ca: &Ca,
        names: Vec<String>,
    ) -> Result<(Arc<Self>, std::time::SystemTime), TlsSetupError> {
        let (key, not_after) = issue_server_cert(ca, &names)?;
        Ok((
            Arc::new(Self {
                current: RwLock::new(Arc::new(key)),
                names,
            }),
            not_after,
        ))
    }

    /// Keeps the server SVID fresh until `shutdown` fires.
    pub async fn run(
        self: Arc<Self>,
        ca: Arc<Ca>,
        mut not_after: std::time::SystemTime,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let left = not_after.duration_since(ca.now()).unwrap_or_default();
            let wait = (left / 2).max(Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            match issue_server_cert(&ca, &self.names) {
                Ok((key, na)) => {
                    *self
                        .current
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(key);
                    not_after = na;
                    tracing::info!("renewed the server certificate");
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "could not renew the server certificate; retrying")
                }
            }
        }
    }
}

fn issue_server_cert(
    ca: &Ca,
    names: &[String],
) -> Result<(CertifiedKey, std::time::SystemTime), TlsSetupError> {
    let key = PrivateKey::generate(KeyType::EcdsaP256)?;
    let csr = signet_identity::x509::VerifiedCsr::from_der(&key.csr_der()?)?;
    // The reserved CA identity: agents require it of the CA after bootstrap,
    // and no registration entry can claim it.
    let id = signet_identity::reserved::ca_server_id(&ca.config().trust_domain);
    let ttl = ca.config().node_svid_ttl;
    let cert = ca.sign(&csr, &id, names, ttl)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec()));
    let signer = rustls::crypto::ring::sign::any_supported_type(&der)?;
    // The root travels with the chain so that an agent bootstrapping with a
    // pinned root hash (and no bundle yet) can find and check it.
    let mut chain = cert.chain.clone();
    if let Some(root) = root_of(ca, &chain)? {
        chain.push(root);
    }
    Ok((CertifiedKey::new(chain, signer), cert.not_after))
}

/// The root among the CA's anchors that `chain` (leaf, intermediates)
/// verifies to now, if any.
///
/// # Errors
/// An anchor that cannot be put in a bundle.
pub fn root_of(
    ca: &Ca,
    chain: &[CertificateDer<'static>],
) -> Result<Option<CertificateDer<'static>>, signet_identity::BundleError> {
    let now = ca.now();
    for anchor in &ca.signing().anchors {
        let single = TrustBundle::new(ca.config().trust_domain.clone())
            .with_x509_authorities([anchor.clone()])?;
        if verify_x509_svid(chain, &single, now).is_ok() {
            return Ok(Some(anchor.clone()));
        }
    }
    Ok(None)
}

/// The rustls configuration of the node API.
///
/// # Errors
/// rustls configuration errors.
pub fn server_config(
    ca: &Ca,
    resolver: Arc<ServerCertResolver>,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(SvidClientVerifier {
        bundle: ca.watch_node_bundle(),
        algs: provider.signature_verification_algorithms,
    });
    let mut config = ServerConfig::builder_with_provider(provider.clone() as Arc<CryptoProvider>)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Shortest and longest pause after a failed `accept` (EMFILE, ENFILE,
/// ENOBUFS...): the error repeats until descriptors come back, and retrying
/// at once would spin a core.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts TCP connections within the caps of `tracker`, completes TLS
/// handshakes off the accept loop (each within the handshake timeout) and
/// yields connections with their verified peer identity.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    tracker: Arc<ConnTracker>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, std::io::Error>> {
    let (tx, rx) = mpsc::channel(128);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => {
                        backoff = ACCEPT_BACKOFF_MIN;
                        c
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, pause = ?backoff, "accept failed; pausing");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            _ = shutdown.changed() => return,
                        }
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let slot = match tracker.admit(remote.ip()) {
                Ok(slot) => slot,
                Err(why) => {
                    // Closed at once: the descriptor comes straight back.
                    tracing::debug!(%remote, reason = %why, "connection refused");
                    drop(tcp);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let handshake_timeout = tracker.limits().tls_handshake_timeout;
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await;
                let stream = match handshake {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
                let Some(conn) = admit_peer(stream, remote, slot) else {
                    return;
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Reads the verified client certificate (if any) and moves the connection
/// into the node's counts, or leaves it unauthenticated with its short
/// lifetime. `None` when the node has too many connections already.
fn admit_peer(
    stream: TlsStream<TcpStream>,
    remote: std::net::SocketAddr,
    mut slot: Slot,
) -> Option<TlsConn> {
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first());
    let spiffe_id = leaf
        .and_then(|leaf| signet_identity::x509::check_certificate(leaf).ok())
        .and_then(|report| report.spiffe_id);
    let parsed = leaf.and_then(|leaf| {
        use x509_parser::prelude::FromDer;
        x509_parser::prelude::X509Certificate::from_der(leaf)
            .ok()
            .map(|(_, c)| {
                (
                    std::time::SystemTime::from(c.validity().not_after.to_datetime()),
                    serial_hex(c.raw_serial()),
                )
            })
    });
    let not_after = parsed.as_ref().map(|(t, _)| *t);
    let serial = parsed.map(|(_, s)| s);
    let kill = match (&spiffe_id, &serial, not_after) {
        (Some(id), Some(serial), Some(not_after)) => {
            match slot.authenticate(id.clone(), serial.clone(), not_after) {
                Ok(kill) => kill,
                Err(why) => {
                    tracing::info!(%remote, node = %id, reason = %why, "connection refused");
                    return None;
                }
            }
        }
        _ => match slot.stay_unauthenticated() {
            Ok(kill) => kill,
            Err(why) => {
                tracing::debug!(%remote, reason = %why, "connection refused");
                return None;
            }
        },
    };
    Some(TlsConn {
        inner: stream,
        info: PeerInfo {
            remote,
            spiffe_id,
            not_after,
            serial,
            batch_slots: Arc::new(tokio::sync::Semaphore::new(MAX_BATCHES_PER_CONNECTION)),
        },
        kill,
        killed: false,
        _slot: slot,
    })
}

/// A certificate serial as the CA records it: lowercase hex of the
/// big-endian bytes, without leading zero bytes.
fn serial_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex::encode(&raw[start..])
}
