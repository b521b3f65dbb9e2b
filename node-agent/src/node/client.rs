//! The agent's connection to signet-ca: TLS with the CA's roots (or, on first
//! start, a pinned root hash or explicit trust on first use), presenting the
//! node SVID once the agent has one. The TLS settings are read anew for every
//! connection, so a renewed node SVID or a new bundle takes effect on the
//! next reconnect without rebuilding the gRPC channel.

use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use signet_proto::ca::v1::node_client::NodeClient;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

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
}

/// A lazily connecting, self-reconnecting channel to the CA.
#[derive(Clone)]
pub struct CaClient {
    state: Arc<RwLock<TlsState>>,
    address: String,
    name: ServerName<'static>,
    channel: Channel,
}

fn channel(state: Arc<RwLock<TlsState>>, addr: String, name: ServerName<'static>) -> Channel {
    let connector = tower::service_fn(move |_uri: tonic::transport::Uri| {
        let st = state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let addr = addr.clone();
        let name = name.clone();
        async move {
            let config = client_config(&st).map_err(|e| std::io::Error::other(e.to_string()))?;
            let tcp = TcpStream::connect(&addr).await?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Endpoint::from_static("http://signet-ca")
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(connector)
}

impl CaClient {
    /// A client for `address` (host:port) whose certificate must be valid for `server_name`.
    ///
    /// # Errors
    /// An invalid server name.
    pub fn new(address: &str, server_name: &str, trust: ServerTrust) -> anyhow::Result<Self> {
        let state = Arc::new(RwLock::new(TlsState {
            trust,
            identity: None,
        }));
        let name = ServerName::try_from(server_name.to_owned())?;
        let channel = channel(state.clone(), address.to_owned(), name.clone());
        Ok(Self {
            state,
            address: address.to_owned(),
            name,
            channel,
        })
    }

    /// The same client on a new channel: the next call opens a new
    /// connection with the current TLS settings (e.g. a renewed node SVID),
    /// while calls on the old channel finish where they are.
    #[must_use]
    pub fn fresh(&self) -> Self {
        Self {
            state: self.state.clone(),
            address: self.address.clone(),
            name: self.name.clone(),
            channel: channel(self.state.clone(), self.address.clone(), self.name.clone()),
        }
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

fn client_config(st: &TlsState) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match &st.trust {
        ServerTrust::Roots(roots) => {
            let mut store = RootCertStore::empty();
            for r in roots {
                store.add(r.clone())?;
            }
            WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                .build()?
        }
        ServerTrust::PinnedRoot(hash) => Arc::new(BootstrapVerifier {
            pinned: Some(*hash),
            provider: provider.clone(),
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
