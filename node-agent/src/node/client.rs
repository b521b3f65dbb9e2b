//! The agent's connection to signet-ca: TLS with the CA's roots (or, on first
//! start, a pinned root hash or explicit trust on first use), presenting the
//! node SVID once the agent has one. The TLS settings are read anew for every
//! connection, so a renewed node SVID or a new bundle takes effect on the
//! next reconnect without rebuilding the gRPC channel. Each connection goes
//! to the first replica of [`CaAddresses::candidates`] that completes TCP
//! and TLS, each step bounded in time; every replica must pass the same
//! checks (server name, CA SPIFFE ID).
//!
//! Chaining to the roots and carrying the configured DNS name is not enough
//! for a server to be the CA: every workload SVID chains to the same roots,
//! and an entry may ask for DNS `localhost`. The CA's certificate must also
//! carry the reserved SPIFFE ID [`ca_server_id`], which no entry can claim.
//! This is required whenever the chain is checked: with the bundle, with a
//! bundle file on first start, and with a pinned root hash (the pinned root
//! signs workload SVIDs too). Only explicit trust on first use checks nothing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use signet_identity::reserved::ca_server_id;
use signet_identity::{SpiffeId, TrustDomain};
use signet_proto::ca::v1::node_client::NodeClient;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use super::addresses::CaAddresses;

/// How the CA's server certificate is checked.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// Against these roots (the bundle).
    Roots(Vec<CertificateDer<'static>>),
    /// Against the certificate in the presented chain whose SHA-256 is this.
    PinnedRoot([u8; 32]),
    /// Not at all (trust on first use, asked for explicitly).
    Insecure,
}

/// The client certificate to present.
#[derive(Clone)]
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key_pkcs8: Arc<zeroize::Zeroizing<Vec<u8>>>,
}

#[derive(Clone)]
struct TlsState {
    trust: ServerTrust,
    identity: Option<ClientIdentity>,
    /// The SPIFFE ID the CA's serving certificate must carry.
    ca_id: SpiffeId,
}

/// Why a client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configured server name is not a DNS name or IP address.
    #[error("invalid CA server name {name:?}: {reason}")]
    ServerName { name: String, reason: String },
    /// The TLS settings were refused (e.g. a root that does not parse).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The roots could not be turned into a verifier.
    #[error("TLS verifier: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

/// A lazily connecting, self-reconnecting channel to the CA.
#[derive(Clone)]
pub struct CaClient {
    state: Arc<RwLock<TlsState>>,
    addresses: Arc<CaAddresses>,
    name: ServerName<'static>,
    /// The replica this channel's connection went to last.
    replica: Arc<Mutex<Option<SocketAddr>>>,
    channel: Channel,
}

/// Longest TCP connect to one replica before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest TLS handshake with one replica before the next is tried.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest search for a replica that answers, over all of them.
const CONNECT_ALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One TCP connection and TLS handshake to `addr`, bounded in time.
async fn connect_one(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let timed_out = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what} to {addr} timed out"),
        )
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out("connect"))??;
    let _ = tcp.set_nodelay(true);
    tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| timed_out("TLS handshake"))?
}

fn channel(
    state: Arc<RwLock<TlsState>>,
    addresses: Arc<CaAddresses>,
    name: ServerName<'static>,
    replica: Arc<Mutex<Option<SocketAddr>>>,
) -> Channel {
    let connector = tower::service_fn(move |_uri: tonic::transport::Uri| {
        let st = state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let addresses = addresses.clone();
        let name = name.clone();
        let replica = replica.clone();
        async move {
            let config = client_config(&st).map_err(|e| std::io::Error::other(e.to_string()))?;
            let mut last_error = None;
            // Every replica in turn: the one used last first, draining
            // ones last (see `CaAddresses::candidates`).
            for addr in addresses.candidates().await? {
                match connect_one(addr, config.clone(), name.clone()).await {
                    Ok(tls) => {
                        if let Some(reason) = addresses.connected(addr) {
                            crate::metrics::ca_failover(reason.as_str());
                            tracing::info!(replica = %addr, reason = reason.as_str(), "moved to another CA replica");
                        } else {
                            tracing::debug!(replica = %addr, "connected to the CA");
                        }
                        *replica
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(addr);
                        return Ok(hyper_util::rt::TokioIo::new(tls));
                    }
                    Err(e) => {
                        tracing::warn!(replica = %addr, error = %e, "CA replica unreachable; trying the next");
                        addresses.failed(addr);
                        last_error = Some(e);
                    }
                }
            }
            Err(last_error.unwrap_or_else(|| std::io::Error::other("no CA address")))
        }
    });
    Endpoint::from_static("http://signet-ca")
        .connect_timeout(CONNECT_ALL_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(connector)
}

impl CaClient {
    /// A client for the CA at `addresses` (every replica) whose certificate
    /// must be valid for `server_name` and carry the CA's reserved ID in
    /// `trust_domain`: the same checks for every replica.
    ///
    /// # Errors
    /// An invalid server name.
    pub fn new(
        addresses: Arc<CaAddresses>,
        server_name: &str,
        trust_domain: &TrustDomain,
        trust: ServerTrust,
    ) -> Result<Self, ClientError> {
        let state = Arc::new(RwLock::new(TlsState {
            trust,
            identity: None,
            ca_id: ca_server_id(trust_domain),
        }));
        let name =
            ServerName::try_from(server_name.to_owned()).map_err(|e| ClientError::ServerName {
                name: server_name.to_owned(),
                reason: e.to_string(),
            })?;
        let replica = Arc::new(Mutex::new(None));
        let channel = channel(
            state.clone(),
            addresses.clone(),
            name.clone(),
            replica.clone(),
        );
        Ok(Self {
            state,
            addresses,
            name,
            replica,
            channel,
        })
    }

    /// The same client on a new channel: the next call opens a new
    /// connection with the current TLS settings (e.g. a renewed node SVID),
    /// while calls on the old channel finish where they are.
    #[must_use]
    pub fn fresh(&self) -> Self {
        let replica = Arc::new(Mutex::new(None));
        Self {
            state: self.state.clone(),
            addresses: self.addresses.clone(),
            name: self.name.clone(),
            channel: channel(
                self.state.clone(),
                self.addresses.clone(),
                self.name.clone(),
                replica.clone(),
            ),
            replica,
        }
    }

    /// The replica this channel is connected to (last connected), if any.
    pub fn replica(&self) -> Option<SocketAddr> {
        *self
            .replica
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The replica of this channel said it drains: later connections go
    /// elsewhere first. Returns that replica.
    pub fn drained(&self) -> Option<SocketAddr> {
        let addr = self.replica()?;
        self.addresses.draining(addr);
        Some(addr)
    }

    /// The replica of this channel answered UNAVAILABLE: later connections
    /// try the others first for a while.
    pub fn unavailable(&self) -> Option<SocketAddr> {
        let addr = self.replica()?;
        self.addresses.unavailable(addr);
        Some(addr)
    }

    /// Whether `other` is this client on the same channel.
    pub fn same_channel(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.replica, &other.replica)
    }

    /// The gRPC client of the node API.
    pub fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel.clone()).max_decoding_message_size(64 * 1024 * 1024)
    }

    /// Replaces the server trust (e.g. after a bundle change).
    pub fn set_trust(&self, trust: ServerTrust) {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .trust = trust;
    }

    /// Replaces the client certificate presented on new connections.
    pub fn set_identity(&self, identity: ClientIdentity) {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .identity = Some(identity);
    }
}

fn client_config(st: &TlsState) -> Result<Arc<ClientConfig>, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match &st.trust {
        ServerTrust::Roots(roots) => {
            let mut store = RootCertStore::empty();
            for r in roots {
                store.add(r.clone())?;
            }
            Arc::new(CaIdentityVerifier {
                inner: WebPkiServerVerifier::builder_with_provider(
                    Arc::new(store),
                    provider.clone(),
                )
                .build()?,
                expected: st.ca_id.clone(),
            })
        }
        ServerTrust::PinnedRoot(hash) => Arc::new(CaIdentityVerifier {
            inner: Arc::new(BootstrapVerifier {
                pinned: Some(*hash),
                provider: provider.clone(),
            }),
            expected: st.ca_id.clone(),
        }),
        ServerTrust::Insecure => Arc::new(BootstrapVerifier {
            pinned: None,
            provider: provider.clone(),
        }),
    };
    let builder = ClientConfig::builder_with_provider(provider as Arc<CryptoProvider>)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &st.identity {
        Some(id) => builder.with_client_auth_cert(
            id.chain.clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_pkcs8.to_vec())),
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Whether a server certificate carries `expected` as its one URI SAN.
pub fn carries_spiffe_id(end_entity: &[u8], expected: &SpiffeId) -> bool {
    signet_identity::x509::check_certificate(end_entity)
        .ok()
        .and_then(|r| r.spiffe_id)
        .is_some_and(|id| &id == expected)
}

/// Another verifier's checks, then the CA's reserved SPIFFE ID.
#[derive(Debug)]
struct CaIdentityVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    expected: SpiffeId,
}

impl ServerCertVerifier for CaIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        if !carries_spiffe_id(end_entity, &self.expected) {
            tracing::warn!(expected = %self.expected, "the server is not the CA: its certificate lacks the CA's SPIFFE ID");
            return Err(rustls::Error::General(format!(
                "the server's certificate does not carry the CA's SPIFFE ID {}",
                self.expected
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Checks the CA's certificate before the agent has a bundle: against the
/// pinned root found in the presented chain, or not at all when trust on
/// first use was asked for. Handshake signatures are always checked.
#[derive(Debug)]
struct BootstrapVerifier {
    /// SHA-256 of the root's DER; `None` = trust on first use.
    pinned: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for BootstrapVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(hash) = self.pinned else {
            return Ok(ServerCertVerified::assertion());
        };
        let pinned = intermediates
            .iter()
            .find(|c| ring::digest::digest(&ring::digest::SHA256, c).as_ref() == hash)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the CA did not present the pinned root (sha256 mismatch)".into(),
                )
            })?;
        let mut store = RootCertStore::empty();
        store.add(pinned.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(store), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pki::TestCa;
    use rustls::ServerConfig;
    use tokio::net::TcpListener;

    const TD: &str = "example.org";

    /// A TLS server on loopback presenting `chain` (leaf, then the root, as
    /// signet-ca sends it); returns its address.
    async fn fake_ca(
        key: &signet_identity::PrivateKey,
        chain: Vec<CertificateDer<'static>>,
    ) -> String {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                chain,
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec())),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let mut buf = [0u8; 64];
                        let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await;
                    }
                });
            }
        });
        addr
    }

    async fn handshake(addr: &str, trust: ServerTrust) -> Result<(), String> {
        let state = TlsState {
            trust,
            identity: None,
            ca_id: ca_server_id(&TrustDomain::new(TD).unwrap()),
        };
        let config = client_config(&state).map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn pin(root: &CertificateDer<'_>) -> [u8; 32] {
        ring::digest::digest(&ring::digest::SHA256, root)
            .as_ref()
            .try_into()
            .unwrap()
    }

    #[tokio::test]
    async fn a_workload_svid_for_localhost_is_not_the_ca() {
        let ca = TestCa::new(TD);
        // The attack: an entry with --dns-name localhost, its SVID served
        // as if it were the node API.
        let (key, svid) = ca.issue("spiffe://example.org/web", &["localhost"]);
        let addr = fake_ca(&key, vec![svid.der.clone(), ca.root.clone()]).await;
        for trust in [
            ServerTrust::Roots(vec![ca.root.clone()]),
            ServerTrust::PinnedRoot(pin(&ca.root)),
        ] {
            let err = handshake(&addr, trust.clone()).await.unwrap_err();
            assert!(err.contains("CA's SPIFFE ID"), "{trust:?}: {err}");
        }
        // And the agent's client takes nothing from it.
        let client = CaClient::new(
            CaAddresses::system(vec![addr.clone()], "n1"),
            "localhost",
            &TrustDomain::new(TD).unwrap(),
            ServerTrust::Roots(vec![ca.root.clone()]),
        )
        .unwrap();
        let err = client
            .node()
            .watch_bundle(signet_proto::ca::v1::WatchBundleRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    }

    #[tokio::test]
    async fn a_connection_skips_replicas_that_are_down_or_not_the_ca() {
        let ca = TestCa::new(TD);
        let down = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().to_string()
        };
        let (key, svid) = ca.issue("spiffe://example.org/web", &["localhost"]);
        let impostor = fake_ca(&key, vec![svid.der.clone(), ca.root.clone()]).await;
        let (key, cert) = ca.issue("spiffe://example.org/signet/ca", &["localhost"]);
        let real = fake_ca(&key, vec![cert.der.clone(), ca.root.clone()]).await;
        // Nodes start at different replicas; some must pass the others first.
        let mut skipped = 0;
        for n in 0..16 {
            let spread = format!("n{n}");
            let addresses =
                CaAddresses::system(vec![down.clone(), impostor.clone(), real.clone()], &spread);
            if addresses.candidates().await.unwrap()[0].to_string() != real {
                skipped += 1;
            }
            let client = CaClient::new(
                addresses,
                "localhost",
                &TrustDomain::new(TD).unwrap(),
                ServerTrust::Roots(vec![ca.root.clone()]),
            )
            .unwrap();
            // The fake CA speaks TLS but no gRPC: the call fails after the
            // connection is made, to the one replica that is the CA.
            let _ = client
                .node()
                .watch_bundle(signet_proto::ca::v1::WatchBundleRequest {})
                .await;
            assert_eq!(
                client.replica().map(|a| a.to_string()),
                Some(real.clone()),
                "{spread}"
            );
        }
        assert!(
            skipped > 0,
            "every node started at the real CA: nothing was skipped"
        );
    }

    #[tokio::test]
    async fn the_ca_is_recognised_by_its_reserved_id() {
        let ca = TestCa::new(TD);
        let (key, cert) = ca.issue("spiffe://example.org/signet/ca", &["localhost"]);
        let addr = fake_ca(&key, vec![cert.der.clone(), ca.root.clone()]).await;
        handshake(&addr, ServerTrust::Roots(vec![ca.root.clone()]))
            .await
            .unwrap();
        handshake(&addr, ServerTrust::PinnedRoot(pin(&ca.root)))
            .await
            .unwrap();
        // The DNS name still has to match.
        let state = TlsState {
            trust: ServerTrust::Roots(vec![ca.root.clone()]),
            identity: None,
            ca_id: ca_server_id(&TrustDomain::new(TD).unwrap()),
        };
        let tcp = TcpStream::connect(&addr).await.unwrap();
        let wrong_name = tokio_rustls::TlsConnector::from(client_config(&state).unwrap())
            .connect(ServerName::try_from("ca.example.org").unwrap(), tcp)
            .await;
        assert!(wrong_name.is_err());
        // Trust on first use checks nothing, by definition.
        let (key, svid) = ca.issue("spiffe://example.org/web", &["localhost"]);
        let tofu = fake_ca(&key, vec![svid.der.clone()]).await;
        handshake(&tofu, ServerTrust::Insecure).await.unwrap();
    }
}
