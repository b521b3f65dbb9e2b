//! The SDS server driven over a real unix socket by the generated Envoy SDS
//! client, with real certificates and this test process as the workload.

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
use signet_identity::x509::{
    SigningAuthority, SigningCaParams, VerifiedCsr, X509SvidParams, issue_x509_svid, new_root,
};
use signet_identity::{KeyType, PrivateKey, SpiffeId, TrustBundle, TrustDomain};
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

struct Ca {
    authority: SigningAuthority,
    bundle: Arc<TrustBundle>,
}

impl Ca {
    fn new(td: &str) -> Self {
        let td = TrustDomain::new(td).unwrap();
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let params = SigningCaParams {
            trust_domain: td.clone(),
            ttl: Duration::from_secs(3600),
            backdate: Duration::from_secs(60),
        };
        let cert = new_root(&params, &key, SystemTime::now()).unwrap();
        let bundle = TrustBundle::new(td.clone())
            .with_x509_authorities([cert.clone()])
            .unwrap();
        let authority = SigningAuthority::new(td, cert, vec![], key).unwrap();
        Self {
            authority,
            bundle: Arc::new(bundle),
        }
    }

    fn svid(&self, entry_id: &str, id: &str) -> Svid {
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let csr = VerifiedCsr::from_der(&key.csr_der().unwrap()).unwrap();
        let params = X509SvidParams {
            spiffe_id: SpiffeId::parse(id).unwrap(),
            dns_names: vec![],
            ttl: Duration::from_secs(600),
            backdate: Duration::from_secs(30),
        };
        let issued = issue_x509_svid(&csr, &params, &self.authority, SystemTime::now()).unwrap();
        Svid {
            entry_id: entry_id.to_owned(),
            spiffe_id: params.spiffe_id,
            serial: issued.serial_hex(),
            chain: issued.chain,
            key,
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
    })
}

fn snapshot(
    version: u64,
    ca: &Ca,
    federated: &[&Ca],
    entries: Vec<Arc<Entry>>,
    svids: Vec<Svid>,
) -> Arc<Snapshot> {
    Arc::new(Snapshot {
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
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
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

// ---------------------------------------------------------------- tests

#[test]
fn names_are_classified_like_istio_and_spire_do() {
    let td = |s: &str| Name::TrustDomain(TrustDomain::new(s).unwrap());
    let cases = [
        ("default", Name::DefaultSvid),
        ("ROOTCA", Name::RootCa),
        ("ALL", Name::AllBundles),
        ("example.org", td("example.org")),
        ("spiffe://example.org", td("example.org")),
        (WEB, Name::Svid(SpiffeId::parse(WEB).unwrap())),
        ("Default", Name::Unknown),
        ("file-cert:/etc/cert.pem~/etc/key.pem", Name::Unknown),
        ("spiffe://Example.org/web", Name::Unknown),
        ("", Name::Unknown),
    ];
    for (name, want) in cases {
        assert_eq!(Name::classify(name), want, "{name:?}");
    }
}

#[tokio::test]
async fn default_is_served_acked_and_pushed_again_only_on_rotation() {
    let ca = Ca::new(TD);
    let first = ca.svid("e-web", WEB);
    let h = Harness::start(web_snapshot(1, &ca, first)).await;
    let mut s = h.open(&["default"]).await;

    let r1 = s.next().await;
    assert_is_svid(
        &only_secret(&r1),
        "default",
        &h.snapshots.borrow().svids["e-web"],
    );
    s.ack(&r1).await;
    s.quiet().await;

    // A new snapshot that changes nothing this caller asked for: no push.
    let unrelated = {
        let current = h.snapshots.borrow().clone();
        let mut entries = current.entries.clone();
        entries.push(entry("e-other", DB, someone_else()));
        Arc::new(Snapshot {
            bundle: current.bundle.clone(),
            federated: current.federated.clone(),
            entries,
            svids: current.svids.clone(),
            version: 2,
        })
    };
    h.snapshots.send_replace(unrelated);
    s.quiet().await;

    // Rotation: pushed with a new version and nonce.
    let rotated = ca.svid("e-web", WEB);
    let rotated_chain = ders(&rotated.chain);
    h.snapshots.send_replace(web_snapshot(3, &ca, rotated));
    let r2 = s.next().await;
    assert_ne!(r2.nonce, r1.nonce);
    assert_ne!(r2.version_info, r1.version_info);
    let secret = only_secret(&r2);
    assert_is_svid(&secret, "default", &h.snapshots.borrow().svids["e-web"]);
    assert_eq!(
        pem_ders(inline_bytes(
            tls_certificate(&secret).certificate_chain.as_ref()
        )),
        rotated_chain
    );
    s.ack(&r2).await;
    s.quiet().await;
    h.stop().await;
}

#[tokio::test]
async fn a_nack_is_logged_and_not_answered_with_the_same_content() {
    let (logs, _guard) = Logs::capture();
    let ca = Ca::new(TD);
    let h = Harness::start(web_snapshot(1, &ca, ca.svid("e-web", WEB))).await;
    let mut s = h.open(&["default"]).await;
    let r1 = s.next().await;

    s.send(
        &["default"],
        "",
        &r1.nonce,
        Some("Failed to load private key from <inline>"),
    )
    .await;
    s.quiet().await;
    let text = logs.text();
    assert!(text.contains("WARN"), "{text}");
    assert!(text.contains("NACK"), "{text}");
    assert!(
        text.contains("Failed to load private key from <inline>"),
        "{text}"
    );

    // The same content in a new snapshot is still not resent.
    let same = {
        let current = h.snapshots.borrow().clone();
        Arc::new(Snapshot {
            bundle: current.bundle.clone(),
            federated: current.federated.clone(),
            entries: current.entries.clone(),
            svids: current.svids.clone(),
            version: 2,
        })
    };
    h.snapshots.send_replace(same);
    s.quiet().await;

    // A real change is.
    h.snapshots
        .send_replace(web_snapshot(3, &ca, ca.svid("e-web", WEB)));
    let r2 = s.next().await;
    assert_is_svid(
        &only_secret(&r2),
        "default",
        &h.snapshots.borrow().svids["e-web"],
    );
    h.stop().await;
}

#[tokio::test]
async fn rootca_is_the_own_bundle_and_pushed_on_bundle_change() {
    let ca = Ca::new(TD);
    let fed = Ca::new(FED_TD);
    let svid = ca.svid("e-web", WEB);
    let h = Harness::start(snapshot(
        1,
        &ca,
        &[&fed],
        vec![entry("e-web", WEB, me())],
        vec![svid],
    ))
    .await;
    let mut s = h.open(&["ROOTCA"]).await;
    let r1 = s.next().await;
    let secret = only_secret(&r1);
    assert_eq!(secret.name, "ROOTCA");
    let context = validation_context(&secret);
    assert!(context.custom_validator_config.is_none());
    assert_eq!(
        pem_ders(inline_bytes(context.trusted_ca.as_ref())),
        ders(ca.bundle.x509_authorities())
    );
    s.ack(&r1).await;
    s.quiet().await;

    // A second root joins the bundle (CA rotation): pushed.
    let extra = Ca::new(TD);
    let both = TrustBundle::new(TrustDomain::new(TD).unwrap())
        .with_x509_authorities(
            ca.bundle
                .x509_authorities()
                .iter()
                .chain(extra.bundle.x509_authorities())
                .cloned(),
        )
        .unwrap();
    let current = h.snapshots.borrow().clone();
    h.snapshots.send_replace(Arc::new(Snapshot {
        bundle: Some(Arc::new(both.clone())),
        federated: current.federated.clone(),
        entries: current.entries.clone(),
        svids: current.svids.clone(),
        version: 2,
    }));
    let r2 = s.next().await;
    assert_ne!(r2.version_info, r1.version_info);
    let secret = only_secret(&r2);
    assert_eq!(
        pem_ders(inline_bytes(
            validation_context(&secret).trusted_ca.as_ref()
        )),
        ders(both.x509_authorities())
    );
    h.stop().await;
}

#[tokio::test]
async fn all_and_trust_domain_names_use_the_spiffe_validator() {
    let ca = Ca::new(TD);
    let fed = Ca::new(FED_TD);
    let svid = ca.svid("e-web", WEB);
    let h = Harness::start(snapshot(
        1,
        &ca,
        &[&fed],
        vec![entry("e-web", WEB, me())],
        vec![svid],
    ))
    .await;

    // ALL: every bundle, each under its own trust domain.
    let mut all = h.open(&["ALL"]).await;
    let secret = only_secret(&all.next().await);
    assert_eq!(secret.name, "ALL");
    assert_eq!(
        spiffe_validator_domains(&secret),
        vec![
            (TD.to_owned(), ders(ca.bundle.x509_authorities())),
            (FED_TD.to_owned(), ders(fed.bundle.x509_authorities())),
        ]
    );

    // A trust domain, in either spelling, and a federated one: that trust
    // domain only, under the name asked for. Several names in one stream.
    let names = [
        "example.org",
        "spiffe://example.org",
        "spiffe://partner.test",
    ];
    let mut s = h.open(&names).await;
    let got = secrets(&s.next().await.resources);
    let mut by_name: HashMap<String, Secret> =
        got.into_iter().map(|s| (s.name.clone(), s)).collect();
    assert_eq!(by_name.len(), 3);
    for name in &names[..2] {
        let secret = by_name.remove(*name).unwrap();
        assert_eq!(
            spiffe_validator_domains(&secret),
            vec![(TD.to_owned(), ders(ca.bundle.x509_authorities()))]
        );
    }
    let secret = by_name.remove("spiffe://partner.test").unwrap();
    assert_eq!(
        spiffe_validator_domains(&secret),
        vec![(FED_TD.to_owned(), ders(fed.bundle.x509_authorities()))]
    );
    h.stop().await;
}

#[tokio::test]
async fn spire_node_metadata_can_ask_for_a_plain_trusted_ca() {
    let ca = Ca::new(TD);
    let h = Harness::start(web_snapshot(1, &ca, ca.svid("e-web", WEB))).await;
    let (tx, rx) = mpsc::channel(2);
    let metadata = (
        "disable_spiffe_cert_validation",
        value::Kind::BoolValue(true),
    );
    tx.send(request(
        &["spiffe://example.org"],
        "",
        "",
        None,
        Some(metadata),
    ))
    .await
    .unwrap();
    let mut responses = h
        .client()
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let response = timeout(PATIENCE, responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let secret = only_secret(&response);
    let context = validation_context(&secret);
    assert!(context.custom_validator_config.is_none());
    assert_eq!(
        pem_ders(inline_bytes(context.trusted_ca.as_ref())),
        ders(ca.bundle.x509_authorities())
    );
    drop(tx);
    h.stop().await;
}

#[tokio::test]
async fn a_spiffe_id_is_served_only_to_a_caller_entitled_to_it() {
    let (logs, _guard) = Logs::capture();
    let ca = Ca::new(TD);
    let snap = snapshot(
        1,
        &ca,
        &[],
        vec![entry("e-db", DB, someone_else()), entry("e-web", WEB, me())],
        vec![ca.svid("e-db", DB), ca.svid("e-web", WEB)],
    );
    let h = Harness::start(snap).await;

    let mut own = h.open(&[WEB]).await;
    assert_is_svid(
        &only_secret(&own.next().await),
        WEB,
        &h.snapshots.borrow().svids["e-web"],
    );

    let mut other = h.open(&[DB]).await;
    other.quiet().await;
    let text = logs.text();
    assert!(text.contains("not entitled"), "{text}");
    h.stop().await;
}

#[tokio::test]
async fn a_caller_without_identity_is_denied() {
    let ca = Ca::new(TD);
    let snap = snapshot(
        1,
        &ca,
        &[],
        vec![entry("e-db", DB, someone_else())],
        vec![ca.svid("e-db", DB)],
    );
    let h = Harness::start(snap).await;
    let Err(status) = h.try_open(&["default"]).await else {
        panic!("a caller without identity got a stream");
    };
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = h
        .client()
        .fetch_secrets(request(&["ROOTCA"], "", "", None, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // The server is still up for others.
    h.snapshots
        .send_replace(web_snapshot(2, &ca, ca.svid("e-web", WEB)));
    let mut s = h.open(&["default"]).await;
    s.next().await;
    h.stop().await;
}

#[tokio::test]
async fn two_names_on_two_streams_of_one_connection() {
    let ca = Ca::new(TD);
    let h = Harness::start(web_snapshot(1, &ca, ca.svid("e-web", WEB))).await;
    let mut certs = h.open(&["default"]).await;
    let mut roots = h.open(&["ROOTCA"]).await;
    let c = certs.next().await;
    let r = roots.next().await;
    assert_eq!(only_secret(&c).name, "default");
    assert_eq!(only_secret(&r).name, "ROOTCA");
    certs.ack(&c).await;
    roots.ack(&r).await;

    // Rotation touches only the certificate stream.
    h.snapshots
        .send_replace(web_snapshot(2, &ca, ca.svid("e-web", WEB)));
    let c2 = certs.next().await;
    assert_is_svid(
        &only_secret(&c2),
        "default",
        &h.snapshots.borrow().svids["e-web"],
    );
    roots.quiet().await;
    h.stop().await;
}

#[tokio::test]
async fn a_missing_svid_is_sent_as_soon_as_it_is_issued() {
    let ca = Ca::new(TD);
    let h = Harness::start(snapshot(
        1,
        &ca,
        &[],
        vec![entry("e-web", WEB, me())],
        vec![],
    ))
    .await;
    let mut s = h.open(&["default"]).await;
    s.quiet().await;
    h.snapshots
        .send_replace(web_snapshot(2, &ca, ca.svid("e-web", WEB)));
    let r = s.next().await;
    assert_is_svid(
        &only_secret(&r),
        "default",
        &h.snapshots.borrow().svids["e-web"],
    );
    h.stop().await;
}

#[tokio::test]
async fn an_expired_svid_is_never_served_and_default_moves_on() {
    let ca = Ca::new(TD);
    // Two identities; the first (the default) expires in a moment.
    let a = "spiffe://example.org/a";
    let b = "spiffe://example.org/b";
    let mut first = ca.svid("e-a", a);
    first.not_after = SystemTime::now() + Duration::from_secs(2);
    let second = ca.svid("e-b", b);
    let snap = snapshot(
        1,
        &ca,
        &[],
        vec![entry("e-a", a, me()), entry("e-b", b, me())],
        vec![first, second],
    );
    let h = Harness::start(snap).await;
    let mut s = h.open(&["default"]).await;
    let r1 = s.next().await;
    assert_is_svid(
        &only_secret(&r1),
        "default",
        &h.snapshots.borrow().svids["e-a"],
    );
    s.ack(&r1).await;
    // No new snapshot: the expiry alone moves the default to the next SVID.
    let r2 = s.next().await;
    assert_is_svid(
        &only_secret(&r2),
        "default",
        &h.snapshots.borrow().svids["e-b"],
    );

    // And a new stream asking for the expired one by name gets nothing.
    let mut gone = h.open(&[a]).await;
    gone.quiet().await;
    h.stop().await;
}

#[tokio::test]
async fn fetch_secrets_answers_once() {
    let ca = Ca::new(TD);
    let h = Harness::start(web_snapshot(1, &ca, ca.svid("e-web", WEB))).await;
    let response = h
        .client()
        .fetch_secrets(request(&["default", "ROOTCA"], "", "", None, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.type_url, SECRET_TYPE_URL);
    assert!(!response.version_info.is_empty());
    let mut got = secrets(&response.resources);
    got.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].name, "ROOTCA");
    assert_is_svid(&got[1], "default", &h.snapshots.borrow().svids["e-web"]);

    let status = h
        .client()
        .fetch_secrets(request(&[DB], "", "", None, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    h.stop().await;
}

async fn next_delta(
    responses: &mut tonic::Streaming<DeltaDiscoveryResponse>,
) -> DeltaDiscoveryResponse {
    timeout(PATIENCE, responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn delta_sends_only_what_changed() {
    let ca = Ca::new(TD);
    let h = Harness::start(web_snapshot(1, &ca, ca.svid("e-web", WEB))).await;
    let delta = |subscribe: &[&str], nonce: &str, known: &[(&str, &str)]| DeltaDiscoveryRequest {
        node: Some(node(None)),
        type_url: SECRET_TYPE_URL.to_owned(),
        resource_names_subscribe: subscribe.iter().map(|n| (*n).to_owned()).collect(),
        initial_resource_versions: known
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        response_nonce: nonce.to_owned(),
        ..DeltaDiscoveryRequest::default()
    };

    let (tx, rx) = mpsc::channel(8);
    tx.send(delta(&["default"], "", &[])).await.unwrap();
    let mut responses = h
        .client()
        .delta_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let r1 = next_delta(&mut responses).await;
    assert_eq!(r1.resources.len(), 1);
    assert_eq!(r1.resources[0].name, "default");
    let v1 = r1.resources[0].version.clone();
    let secret =
        Secret::decode(r1.resources[0].resource.as_ref().unwrap().value.as_slice()).unwrap();
    assert_is_svid(&secret, "default", &h.snapshots.borrow().svids["e-web"]);

    // ACK, then a new subscription on the same stream: only the new one.
    tx.send(delta(&[], &r1.nonce, &[])).await.unwrap();
    tx.send(delta(&["ROOTCA"], &r1.nonce, &[])).await.unwrap();
    let r2 = next_delta(&mut responses).await;
    let names: Vec<&str> = r2.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["ROOTCA"]);
    tx.send(delta(&[], &r2.nonce, &[])).await.unwrap();

    // Rotation: only the certificate.
    h.snapshots
        .send_replace(web_snapshot(2, &ca, ca.svid("e-web", WEB)));
    let r3 = next_delta(&mut responses).await;
    let names: Vec<&str> = r3.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["default"]);
    let v3 = r3.resources[0].version.clone();
    assert_ne!(v3, v1);

    // A reconnecting client that already holds the current version gets
    // nothing until something changes.
    let (tx2, rx2) = mpsc::channel(8);
    tx2.send(delta(&["default"], "", &[("default", &v3)]))
        .await
        .unwrap();
    let mut again = h
        .client()
        .delta_secrets(ReceiverStream::new(rx2))
        .await
        .unwrap()
        .into_inner();
    assert!(timeout(QUIET, again.message()).await.is_err());
    drop((tx, tx2));
    h.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams_cleanly_and_removes_the_socket() {
    let ca = Ca::new(TD);
    let h = Harness::start(web_snapshot(1, &ca, ca.svid("e-web", WEB))).await;
    let mut s = h.open(&["default"]).await;
    let r = s.next().await;
    s.ack(&r).await;
    h.shutdown.send_replace(true);
    let end = timeout(PATIENCE, s.responses.message()).await.unwrap();
    assert!(matches!(end, Ok(None)), "{end:?}");
    h.stop().await;
}

#[tokio::test]
async fn the_socket_is_world_writable_and_stale_sockets_are_replaced() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sds.sock");

    // Stale: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let live = signet_uds::bind(&path, SOCKET_MODE).await.unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o666);

    // Live: refused, and left alone.
    assert!(signet_uds::bind(&path, SOCKET_MODE).await.is_err());
    drop(live);

    // Not a socket: refused, and left alone.
    let file = dir.path().join("file");
    std::fs::write(&file, b"keep me").unwrap();
    assert!(signet_uds::bind(&file, SOCKET_MODE).await.is_err());
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}
