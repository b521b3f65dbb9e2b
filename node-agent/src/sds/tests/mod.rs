//! The SDS server driven over a real unix socket by the generated Envoy SDS
//! client, with real certificates and this test process as the workload.
//!
//! This module holds the shared setup: a test CA, snapshots, the harness
//! that serves them, the client side of a stream, and decoding helpers.

mod access;
mod binder;
mod delta;
mod federation;
mod fetch;
mod limits;
mod names;
mod resources;
mod streams;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::{DataSource, Node};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message as _;
use rustls_pki_types::CertificateDer;
use signet_identity::testing::TestCa;
use signet_identity::{PrivateKey, SpiffeId, TrustBundle, TrustDomain};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Uri};

use super::resources::Name;
use super::*;
use crate::attest::unix::UnixAttestor;
use crate::state::{Entry, Selector, Snapshot, Svid};

const TD: &str = "example.org";
const FED_TD: &str = "partner.test";
const WEB: &str = "spiffe://example.org/web";
const DB: &str = "spiffe://example.org/db";
/// How long to wait before concluding that nothing more will be sent.
const QUIET: Duration = Duration::from_millis(400);
const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- fixtures

/// A trust domain's test CA, its bundle shared the way snapshots hold it.
struct Ca {
    pki: TestCa,
    bundle: Arc<TrustBundle>,
}

impl Ca {
    fn new(td: &str) -> Self {
        let pki = TestCa::new(TrustDomain::new(td).unwrap()).unwrap();
        let bundle = Arc::new(pki.bundle().clone());
        Self { pki, bundle }
    }

    /// An SVID for `id`, valid from 30 s ago for 10 minutes from now.
    fn svid(&self, entry_id: &str, id: &str) -> Svid {
        let start = SystemTime::now() - Duration::from_secs(30);
        let issued = self
            .pki
            .issue(
                &SpiffeId::parse(id).unwrap(),
                start,
                Duration::from_secs(630),
            )
            .unwrap();
        Svid {
            requested_at: SystemTime::now(),
            chains_through: vec![],
            entry_id: entry_id.to_owned(),
            spiffe_id: issued.spiffe_id,
            serial: issued.serial,
            chain: issued.chain,
            key: issued.key,
            not_before: issued.not_before,
            not_after: issued.not_after,
            renew_at: issued.not_after,
        }
    }
}

fn my_uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// Selectors this test process is attested with.
fn me() -> Vec<Selector> {
    vec![Selector::new("unix", format!("uid:{}", my_uid()))]
}

/// Selectors nobody here has.
fn someone_else() -> Vec<Selector> {
    vec![Selector::new("unix", "uid:4000000000")]
}

fn entry(id: &str, spiffe_id: &str, selectors: Vec<Selector>) -> Arc<Entry> {
    Arc::new(Entry {
        id: id.to_owned(),
        spiffe_id: SpiffeId::parse(spiffe_id).unwrap(),
        selectors,
        ttl_seconds: 600,
        dns_names: vec![],
        revision: 1,
        federates_with: vec![],
    })
}

/// An entry whose workloads also receive the bundles of `federates_with`.
fn federating_entry(
    id: &str,
    spiffe_id: &str,
    selectors: Vec<Selector>,
    federates_with: &[&str],
) -> Arc<Entry> {
    let mut e = Arc::unwrap_or_clone(entry(id, spiffe_id, selectors));
    e.federates_with = federates_with
        .iter()
        .map(|td| TrustDomain::new(td).unwrap())
        .collect();
    Arc::new(e)
}

fn snapshot(
    version: u64,
    ca: &Ca,
    federated: &[&Ca],
    entries: Vec<Arc<Entry>>,
    svids: Vec<Svid>,
) -> Arc<Snapshot> {
    Arc::new(Snapshot {
        crls: Arc::default(),
        reissue_pending: 0,
        bundle: Some(ca.bundle.clone()),
        federated: federated
            .iter()
            .map(|c| (c.bundle.trust_domain().clone(), c.bundle.clone()))
            .collect(),
        entries,
        svids: svids
            .into_iter()
            .map(|s| (s.entry_id.clone(), Arc::new(s)))
            .collect(),
        version,
    })
}

/// A snapshot where this process is entitled to WEB, with `svid`.
fn web_snapshot(version: u64, ca: &Ca, svid: Svid) -> Arc<Snapshot> {
    snapshot(
        version,
        ca,
        &[],
        vec![entry("e-web", WEB, me())],
        vec![svid],
    )
}

// ---------------------------------------------------------------- harness

struct Harness {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    snapshots: watch::Sender<Arc<Snapshot>>,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), signet_uds::SocketError>>,
    channel: Channel,
}

impl Harness {
    async fn start(first: Arc<Snapshot>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // A directory that does not exist yet: serve() creates it.
        let socket = dir.path().join("run").join("sds.sock");
        let (snapshots, rx) = watch::channel(first);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let server = SdsServer::new(rx, vec![Arc::new(UnixAttestor::default())]);
        let server = tokio::spawn(serve(socket.clone(), server, shutdown_rx));
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !socket.exists() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the socket never appeared"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let channel = connect(&socket).await;
        Self {
            _dir: dir,
            socket,
            snapshots,
            shutdown,
            server,
            channel,
        }
    }

    fn client(&self) -> SecretDiscoveryServiceClient<Channel> {
        SecretDiscoveryServiceClient::new(self.channel.clone())
    }

    async fn open(&self, names: &[&str]) -> SdsStream {
        self.try_open(names).await.unwrap()
    }

    async fn try_open(&self, names: &[&str]) -> Result<SdsStream, tonic::Status> {
        let (tx, rx) = mpsc::channel(8);
        tx.send(request(names, "", "", None, None)).await.unwrap();
        let responses = self
            .client()
            .stream_secrets(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(SdsStream {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            tx,
            responses,
        })
    }

    async fn stop(self) {
        self.shutdown.send_replace(true);
        let result = timeout(PATIENCE, self.server).await.unwrap().unwrap();
        result.unwrap();
        assert!(!self.socket.exists(), "the socket was not removed");
    }
}

async fn connect(socket: &Path) -> Channel {
    let path = socket.to_path_buf();
    Endpoint::from_static("http://sds.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap()
}

fn node(metadata: Option<(&str, value::Kind)>) -> Node {
    Node {
        id: "envoy-test".to_owned(),
        cluster: "test".to_owned(),
        metadata: metadata.map(|(k, v)| Struct {
            fields: HashMap::from([(k.to_owned(), Value { kind: Some(v) })]),
        }),
        ..Node::default()
    }
}

/// A request the way Envoy sends them.
fn request(
    names: &[&str],
    version: &str,
    nonce: &str,
    error: Option<&str>,
    node_metadata: Option<(&str, value::Kind)>,
) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_owned(),
        node: Some(node(node_metadata)),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        type_url: SECRET_TYPE_URL.to_owned(),
        response_nonce: nonce.to_owned(),
        error_detail: error.map(|m| RpcStatus {
            code: 3,
            message: m.to_owned(),
            details: vec![],
        }),
        ..DiscoveryRequest::default()
    }
}

struct SdsStream {
    names: Vec<String>,
    tx: mpsc::Sender<DiscoveryRequest>,
    responses: tonic::Streaming<DiscoveryResponse>,
}

impl SdsStream {
    async fn next(&mut self) -> DiscoveryResponse {
        let response = timeout(PATIENCE, self.responses.message())
            .await
            .expect("no response in time")
            .expect("the stream failed")
            .expect("the stream ended");
        assert_eq!(response.type_url, SECRET_TYPE_URL);
        assert!(!response.nonce.is_empty());
        assert!(!response.version_info.is_empty());
        response
    }

    async fn quiet(&mut self) {
        if let Ok(got) = timeout(QUIET, self.responses.message()).await {
            panic!("expected nothing, got {got:?}");
        }
    }

    async fn send(&self, names: &[&str], version: &str, nonce: &str, error: Option<&str>) {
        self.tx
            .send(request(names, version, nonce, error, None))
            .await
            .unwrap();
    }

    async fn ack(&self, response: &DiscoveryResponse) {
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        self.send(&names, &response.version_info, &response.nonce, None)
            .await;
    }
}

// ---------------------------------------------------------------- decoding

fn secrets(resources: &[envoy_types::pb::google::protobuf::Any]) -> Vec<Secret> {
    resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, SECRET_TYPE_URL);
            Secret::decode(any.value.as_slice()).unwrap()
        })
        .collect()
}

fn only_secret(response: &DiscoveryResponse) -> Secret {
    let mut all = secrets(&response.resources);
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

fn inline_bytes(source: Option<&DataSource>) -> &[u8] {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::InlineBytes(bytes)) => bytes,
        other => panic!("expected inline bytes, got {other:?}"),
    }
}

fn pem_ders(bytes: &[u8]) -> Vec<Vec<u8>> {
    pem::parse_many(bytes)
        .unwrap()
        .into_iter()
        .map(|p| {
            assert_eq!(p.tag(), "CERTIFICATE");
            p.into_contents()
        })
        .collect()
}

fn ders(certs: &[CertificateDer<'static>]) -> Vec<Vec<u8>> {
    certs.iter().map(|c| c.to_vec()).collect()
}

fn tls_certificate(secret: &Secret) -> &TlsCertificate {
    match &secret.r#type {
        Some(secret::Type::TlsCertificate(c)) => c,
        other => panic!("expected a tls_certificate, got {other:?}"),
    }
}

fn validation_context(secret: &Secret) -> &CertificateValidationContext {
    match &secret.r#type {
        Some(secret::Type::ValidationContext(c)) => c,
        other => panic!("expected a validation_context, got {other:?}"),
    }
}

/// Checks that `secret` is exactly `svid` under `name`.
fn assert_is_svid(secret: &Secret, name: &str, svid: &Svid) {
    assert_eq!(secret.name, name);
    let cert = tls_certificate(secret);
    assert_eq!(
        pem_ders(inline_bytes(cert.certificate_chain.as_ref())),
        ders(&svid.chain)
    );
    let key = std::str::from_utf8(inline_bytes(cert.private_key.as_ref())).unwrap();
    assert_eq!(
        PrivateKey::from_pem(key).unwrap().pkcs8_der(),
        svid.key.pkcs8_der()
    );
}

/// The trust domains and their roots in a SPIFFE validator secret.
fn spiffe_validator_domains(secret: &Secret) -> Vec<(String, Vec<Vec<u8>>)> {
    let context = validation_context(secret);
    assert!(context.trusted_ca.is_none());
    let extension = context.custom_validator_config.as_ref().unwrap();
    assert_eq!(extension.name, "envoy.tls.cert_validator.spiffe");
    let any = extension.typed_config.as_ref().unwrap();
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"
    );
    let config = SpiffeCertValidatorConfig::decode(any.value.as_slice()).unwrap();
    assert!(config.trust_bundles.is_none());
    config
        .trust_domains
        .iter()
        .map(|td| {
            (
                td.name.clone(),
                pem_ders(inline_bytes(td.trust_bundle.as_ref())),
            )
        })
        .collect()
}

// ---------------------------------------------------------------- logs

/// Collects what the server logs on this thread (the tests run on a
/// current-thread runtime, so the server's tasks log here too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

impl Logs {
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
