//! TLS for the node API: the server presents its own SVID (renewed at half
//! life), client certificates are optional at the handshake (attestation has
//! none yet) and, when given, must be X.509-SVIDs of the current bundle. The
//! verified peer identity travels to handlers as connection info.

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

use crate::ca::Ca;

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
}

/// A TLS connection carrying its [`PeerInfo`].
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    info: PeerInfo,
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
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
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
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Verifies client certificates as X.509-SVIDs of the CA's current bundle.
#[derive(Debug)]
struct SvidClientVerifier {
    bundle: watch::Receiver<Arc<TrustBundle>>,
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
        let bundle = self.bundle.borrow().clone();
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

impl ServerCertResolver {
    /// Issues a first server SVID.
    ///
    /// # Errors
    /// Signing failures.
    pub fn new(ca: &Ca) -> anyhow::Result<(Arc<Self>, std::time::SystemTime)> {
        let (key, not_after) = issue_server_cert(ca)?;
        Ok((
            Arc::new(Self {
                current: RwLock::new(Arc::new(key)),
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
            match issue_server_cert(&ca) {
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

fn issue_server_cert(ca: &Ca) -> anyhow::Result<(CertifiedKey, std::time::SystemTime)> {
    let key = PrivateKey::generate(KeyType::EcdsaP256)?;
    let csr = signet_identity::x509::VerifiedCsr::from_der(&key.csr_der()?)?;
    let id = signet_identity::reserved::ca_server_id(&ca.config().trust_domain);
    let ttl = ca.config().node_svid_ttl;
    let cert = ca
        .sign(&csr, &id, &ca.config().server_names, ttl)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec()));
    let signer = rustls::crypto::ring::sign::any_supported_type(&der)?;
    // The root travels with the chain so that an agent bootstrapping with a
    // pinned root hash (and no bundle yet) can find and check it.
    let mut chain = cert.chain.clone();
    let now = ca.now();
    for anchor in &ca.signing().anchors {
        let single = TrustBundle::new(ca.config().trust_domain.clone())
            .with_x509_authorities([anchor.clone()])?;
        if verify_x509_svid(&chain, &single, now).is_ok() {
            chain.push(anchor.clone());
            break;
        }
    }
    Ok((CertifiedKey::new(chain, signer), cert.not_after))
}

/// The rustls configuration of the node API.
///
/// # Errors
/// rustls configuration errors.
pub fn server_config(
    ca: &Ca,
    resolver: Arc<ServerCertResolver>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(SvidClientVerifier {
        bundle: ca.watch_bundle(),
        algs: provider.signature_verification_algorithms,
    });
    let mut config = ServerConfig::builder_with_provider(provider.clone() as Arc<CryptoProvider>)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TCP connections, completes TLS handshakes off the accept loop and
/// yields connections with their verified peer identity.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, std::io::Error>> {
    let (tx, rx) = mpsc::channel(128);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
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
                let leaf = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first());
                let spiffe_id = leaf
                    .and_then(|leaf| signet_identity::x509::check_certificate(leaf).ok())
                    .and_then(|report| report.spiffe_id);
                let not_after = leaf.and_then(|leaf| {
                    use x509_parser::prelude::FromDer;
                    x509_parser::prelude::X509Certificate::from_der(leaf)
                        .ok()
                        .map(|(_, c)| {
                            std::time::SystemTime::from(c.validity().not_after.to_datetime())
                        })
                });
                let _ = tx
                    .send(Ok(TlsConn {
                        inner: stream,
                        info: PeerInfo {
                            remote,
                            spiffe_id,
                            not_after,
                        },
                    }))
                    .await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
