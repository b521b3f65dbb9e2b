//! The Workload API judged by an independent client (the `spiffe` crate) and
//! by a raw client generated from the same proto, over a real unix socket,
//! with this test process as the attested workload.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use rustls_pki_types::CertificateDer;
use signet_identity::bundle::JwtAuthority;
use signet_identity::testing::TestCa;
use signet_identity::{KeyType, PrivateKey, SpiffeId, TrustBundle, TrustDomain};
use signet_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use signet_proto::workload::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest,
};
use spiffe::WorkloadApiClient;
use tokio::sync::watch;
use tonic::transport::Channel;

use super::*;
use crate::attest::unix::UnixAttestor;
use crate::state::{Entry, Snapshot, Svid};

const WAIT: Duration = Duration::from_secs(10);

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn id(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://example.org{path}")).unwrap()
}

/// The selector the unix attestor gives this very test process.
fn me() -> Selector {
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    Selector::new("unix", format!("uid:{uid}"))
}

fn entry(entry_id: &str, path: &str, selectors: Vec<Selector>) -> Arc<Entry> {
    Arc::new(Entry {
        id: entry_id.into(),
        spiffe_id: id(path),
        selectors,
        ttl_seconds: 3600,
        dns_names: vec![],
        revision: 1,
        federates_with: vec![],
    })
}

/// `entry`, also receiving the bundles of `trust_domains`.
fn federating(entry: &Entry, trust_domains: &[&str]) -> Arc<Entry> {
    let mut e = entry.clone();
    e.federates_with = trust_domains
        .iter()
        .map(|td| TrustDomain::new(td).unwrap())
        .collect();
    Arc::new(e)
}

/// A trust domain's CA and its bundle (X.509 root plus one JWT key).
struct Pki {
    ca: TestCa,
    root: CertificateDer<'static>,
    bundle: Arc<TrustBundle>,
    jwt_key: Arc<PrivateKey>,
}

impl Pki {
    fn new(trust_domain: TrustDomain) -> Self {
        let ca = TestCa::new(trust_domain).unwrap();
        let jwt_key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let mut bundle = ca.bundle().clone();
        bundle
            .add_jwt_authority(JwtAuthority::new("jwt-1", &jwt_key.public_key_spki()).unwrap())
            .unwrap();
        Self {
            root: ca.root().clone(),
            ca,
            bundle: Arc::new(bundle),
            jwt_key: Arc::new(jwt_key),
        }
    }

    /// An SVID for `entry` that expires `remaining` from now.
    fn issue_expiring(&self, entry: &Entry, remaining: Duration) -> Arc<Svid> {
        let ttl = Duration::from_secs(3600);
        let issued_at = SystemTime::now() - (ttl - remaining);
        let cert = self.ca.issue(&entry.spiffe_id, issued_at, ttl).unwrap();
        Arc::new(Svid {
            requested_at: SystemTime::now(),
            chains_through: vec![],
            entry_id: entry.id.clone(),
            spiffe_id: cert.spiffe_id,
            chain: cert.chain,
            key: cert.key,
            serial: cert.serial,
            not_before: cert.not_before,
            not_after: cert.not_after,
            renew_at: cert.not_before + ttl / 2,
        })
    }

    fn issue(&self, entry: &Entry) -> Arc<Svid> {
        self.issue_expiring(entry, Duration::from_secs(3000))
    }

    fn snapshot(&self, entries: &[Arc<Entry>], svids: &[Arc<Svid>], version: u64) -> Arc<Snapshot> {
        Arc::new(Snapshot {
            crls: Arc::default(),
            reissue_pending: 0,
            bundle: Some(self.bundle.clone()),
            federated: BTreeMap::new(),
            entries: entries.to_vec(),
            svids: svids
                .iter()
                .map(|s| (s.entry_id.clone(), s.clone()))
                .collect(),
            version,
        })
    }
}

/// Signs JWT-SVIDs locally, as the CA would.
struct FakeJwt {
    key: Arc<PrivateKey>,
    ids: HashMap<String, SpiffeId>,
}

#[tonic::async_trait]
impl JwtSource for FakeJwt {
    async fn fetch_jwt(&self, entry_id: &str, audience: &[String]) -> Result<String, Status> {
        let subject = self
            .ids
            .get(entry_id)
            .ok_or_else(|| Status::not_found("no such entry"))?;
        jwt::sign_es256(
            &self.key,
            "jwt-1",
            subject,
            audience,
            Duration::from_secs(300),
            SystemTime::now(),
        )
        .map_err(|e| Status::internal(e.to_string()))
    }
}

/// A Workload API served on a fresh socket in a temporary directory.
struct Harness {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    snapshots: watch::Sender<Arc<Snapshot>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), signet_uds::SocketError>>,
}

impl Harness {
    async fn start(pki: &Pki, snapshot: Arc<Snapshot>) -> Self {
        let ids = snapshot
            .entries
            .iter()
            .map(|e| (e.id.clone(), e.spiffe_id.clone()))
            .collect();
        let jwt = Arc::new(FakeJwt {
            key: pki.jwt_key.clone(),
            ids,
        });
        let dir = tempfile::tempdir().unwrap();
        // A directory that does not exist yet: serve must create it.
        let socket = dir.path().join("run/signet/agent.sock");
        let (snapshots, rx) = watch::channel(snapshot);
        let (stop, stop_rx) = watch::channel(false);
        let api = WorkloadApi::new(rx, vec![Arc::new(UnixAttestor::default())], jwt);
        let task = tokio::spawn(serve(socket.clone(), api, stop_rx));
        for _ in 0..500 {
            if socket.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(socket.exists(), "the server did not bind its socket");
        Self {
            _dir: dir,
            socket,
            snapshots,
            stop,
            task,
        }
    }

    async fn client(&self) -> WorkloadApiClient {
        WorkloadApiClient::connect_to(format!("unix:{}", self.socket.display()))
            .await
            .unwrap()
    }

    /// A client that sends no security header unless the test adds it.
    async fn raw(&self) -> SpiffeWorkloadApiClient<Channel> {
        let path = self.socket.clone();
        let channel = tonic::transport::Endpoint::from_static("http://workload.invalid")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        SpiffeWorkloadApiClient::new(channel)
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        let served = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("serve did not return");
        served.unwrap().unwrap();
        assert!(!self.socket.exists(), "the socket was not removed");
    }
}

fn with_header<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut()
        .insert(SECURITY_HEADER, "true".parse().unwrap());
    req
}

fn spiffe_td(name: &str) -> spiffe::TrustDomain {
    spiffe::TrustDomain::try_from(name).unwrap()
}

fn der_chain(svid: &Svid) -> Vec<Vec<u8>> {
    svid.chain.iter().map(|c| c.to_vec()).collect()
}

fn client_chain(svid: &spiffe::X509Svid) -> Vec<Vec<u8>> {
    svid.cert_chain()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect()
}

#[tokio::test]
async fn an_independent_client_gets_svids_bundles_and_jwts() {
    let pki = Pki::new(td());
    let entries = [
        entry("e-api", "/api", vec![me()]),
        entry("e-web", "/web", vec![me()]),
    ];
    let svids = [pki.issue(&entries[0]), pki.issue(&entries[1])];
    let h = Harness::start(&pki, pki.snapshot(&entries, &svids, 1)).await;
    let client = h.client().await;

    // The socket is open to every local user.
    let mode = std::fs::metadata(&h.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);

    // X.509: the default is the first entry's; all of them on request.
    let default = client.fetch_x509_svid().await.unwrap();
    assert_eq!(default.spiffe_id().to_string(), "spiffe://example.org/api");
    assert_eq!(client_chain(&default), der_chain(&svids[0]));
    assert_eq!(default.private_key().as_bytes(), svids[0].key.pkcs8_der());
    let all = client.fetch_all_x509_svids().await.unwrap();
    let ids: Vec<String> = all.iter().map(|s| s.spiffe_id().to_string()).collect();
    assert_eq!(
        ids,
        ["spiffe://example.org/api", "spiffe://example.org/web"]
    );

    let bundles = client.fetch_x509_bundles().await.unwrap();
    let own = bundles.get(&spiffe_td("example.org")).expect("own bundle");
    let roots: Vec<&[u8]> = own.authorities().iter().map(|c| c.as_bytes()).collect();
    assert_eq!(roots, [pki.root.as_ref()]);

    // JWT: a token per identity, validated by the agent on the client's behalf.
    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    let jwt_bundle = jwt_bundles
        .get(&spiffe_td("example.org"))
        .expect("own JWT bundle");
    assert!(jwt_bundle.find_jwt_authority("jwt-1").is_some());
    let token = client.fetch_jwt_svid(["db"], None).await.unwrap();
    assert_eq!(token.spiffe_id().to_string(), "spiffe://example.org/api");
    let web = spiffe::SpiffeId::try_from("spiffe://example.org/web").unwrap();
    let web_token = client
        .fetch_jwt_svid(["db", "cache"], Some(&web))
        .await
        .unwrap();
    assert_eq!(web_token.spiffe_id(), &web);
    let every = client.fetch_all_jwt_svids(["db"], None).await.unwrap();
    assert_eq!(every.len(), 2);
    let validated = client
        .validate_jwt_token("cache", web_token.token())
        .await
        .unwrap();
    assert_eq!(validated.spiffe_id(), &web);

    // The same through the raw client, to see the claims Struct.
    let mut raw = h.raw().await;
    let reply = raw
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "db".into(),
            svid: token.token().into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.spiffe_id, "spiffe://example.org/api");
    let claims = reply.claims.unwrap().fields;
    assert!(
        matches!(&claims["sub"].kind, Some(prost_types::value::Kind::StringValue(s)) if s == "spiffe://example.org/api")
    );
    assert!(matches!(
        &claims["exp"].kind,
        Some(prost_types::value::Kind::NumberValue(_))
    ));

    h.stop().await;
}

#[tokio::test]
async fn jwt_requests_follow_the_standard_rules() {
    let pki = Pki::new(td());
    let entries = [
        entry("e-api", "/api", vec![me()]),
        entry(
            "e-other",
            "/other",
            vec![Selector::new("unix", "uid:4294967294")],
        ),
    ];
    let svids = [pki.issue(&entries[0])];
    let h = Harness::start(&pki, pki.snapshot(&entries, &svids, 1)).await;
    let client = h.client().await;
    let mut raw = h.raw().await;

    // Audience is mandatory.
    let err = raw
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec![],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // An identity the caller does not hold is refused.
    let other = spiffe::SpiffeId::try_from("spiffe://example.org/other").unwrap();
    let err = client
        .fetch_jwt_svid(["db"], Some(&other))
        .await
        .unwrap_err();
    assert!(
        matches!(err, spiffe::WorkloadApiError::NoIdentityIssued),
        "{err:?}"
    );

    // Validation failures are InvalidArgument, with the reason.
    let token = client.fetch_jwt_svid(["db"], None).await.unwrap();
    let err = raw
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "elsewhere".into(),
            svid: token.token().into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("audience"), "{}", err.message());
    for (audience, svid) in [("", token.token()), ("db", ""), ("db", "not.a.jwt")] {
        let err = raw
            .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
                audience: audience.into(),
                svid: svid.into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{audience:?} {svid:?}"
        );
    }

    // A token of a trust domain we hold no bundle for is untrusted.
    let foreign = SpiffeId::parse("spiffe://elsewhere.org/x").unwrap();
    let forged = jwt::sign_es256(
        &pki.jwt_key,
        "jwt-1",
        &foreign,
        &["db".into()],
        Duration::from_secs(60),
        SystemTime::now(),
    )
    .unwrap();
    let err = raw
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "db".into(),
            svid: forged,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("elsewhere.org"), "{}", err.message());

    h.stop().await;
}

#[tokio::test]
async fn requests_without_the_security_header_are_invalid() {
    let pki = Pki::new(td());
    let entries = [entry("e-api", "/api", vec![me()])];
    let h = Harness::start(&pki, pki.snapshot(&entries, &[pki.issue(&entries[0])], 1)).await;
    let mut raw = h.raw().await;

    let err = raw.fetch_x509svid(X509svidRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = raw
        .fetch_jwt_bundles(JwtBundlesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // The value is case sensitive.
    let mut req = tonic::Request::new(X509BundlesRequest {});
    req.metadata_mut()
        .insert(SECURITY_HEADER, "TRUE".parse().unwrap());
    assert_eq!(
        raw.fetch_x509_bundles(req).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );

    let mut ok = raw
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.message().await.unwrap().unwrap().svids.len(), 1);
    drop(ok);
    h.stop().await;
}

#[tokio::test]
async fn a_caller_with_no_entry_is_denied_identities_but_not_bundles() {
    let pki = Pki::new(td());
    let stranger = Selector::new("unix", "uid:4294967294");
    let entries = [entry("e-api", "/api", vec![stranger])];
    let h = Harness::start(&pki, pki.snapshot(&entries, &[pki.issue(&entries[0])], 1)).await;
    let client = h.client().await;

    let err = client.fetch_x509_svid().await.unwrap_err();
    assert!(
        matches!(err, spiffe::WorkloadApiError::NoIdentityIssued),
        "{err:?}"
    );
    let err = client.fetch_jwt_svid(["db"], None).await.unwrap_err();
    assert!(
        matches!(err, spiffe::WorkloadApiError::NoIdentityIssued),
        "{err:?}"
    );

    // Trust bundles are public and serve workloads that only verify.
    assert_eq!(client.fetch_x509_bundles().await.unwrap().len(), 1);
    assert_eq!(client.fetch_jwt_bundles().await.unwrap().len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn streams_push_changes_and_only_changes() {
    let pki = Pki::new(td());
    let entries = [entry("e-api", "/api", vec![me()])];
    let first = pki.issue(&entries[0]);
    let h = Harness::start(
        &pki,
        pki.snapshot(&entries, std::slice::from_ref(&first), 1),
    )
    .await;
    let client = h.client().await;
    let mut svids = client.stream_x509_contexts().await.unwrap();
    let mut bundles = client.stream_x509_bundles().await.unwrap();
    let mut jwt_bundles = client.stream_jwt_bundles().await.unwrap();

    let ctx = svids.next().await.unwrap().unwrap();
    assert_eq!(client_chain(&ctx.svids()[0]), der_chain(&first));
    assert_eq!(bundles.next().await.unwrap().unwrap().len(), 1);
    assert_eq!(jwt_bundles.next().await.unwrap().unwrap().len(), 1);

    // A new snapshot that changes nothing this caller sees is not pushed; the
    // next message is the renewed SVID, not a repeat.
    h.snapshots
        .send_replace(pki.snapshot(&entries, std::slice::from_ref(&first), 2));
    let renewed = pki.issue(&entries[0]);
    h.snapshots
        .send_replace(pki.snapshot(&entries, std::slice::from_ref(&renewed), 3));
    let ctx = tokio::time::timeout(WAIT, svids.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(client_chain(&ctx.svids()[0]), der_chain(&renewed));

    // A federated bundle reaches every stream, keyed by its trust domain.
    let partner = Pki::new(TrustDomain::new("partner.org").unwrap());
    let mut snapshot = Snapshot {
        crls: Arc::default(),
        reissue_pending: 0,
        bundle: Some(pki.bundle.clone()),
        federated: BTreeMap::from([(
            TrustDomain::new("partner.org").unwrap(),
            partner.bundle.clone(),
        )]),
        // The caller's entry federates with partner.org.
        entries: vec![federating(&entries[0], &["partner.org"])],
        svids: BTreeMap::from([(renewed.entry_id.clone(), renewed.clone())]),
        version: 4,
    };
    h.snapshots
        .send_replace(Arc::new(std::mem::take(&mut snapshot)));
    let ctx = tokio::time::timeout(WAIT, svids.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let partner_bundle = ctx
        .bundle_set()
        .get(&spiffe_td("partner.org"))
        .expect("federated bundle");
    assert_eq!(
        partner_bundle.authorities()[0].as_bytes(),
        partner.root.as_ref()
    );
    let set = tokio::time::timeout(WAIT, bundles.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(set.len(), 2);
    let set = tokio::time::timeout(WAIT, jwt_bundles.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        set.get(&spiffe_td("partner.org"))
            .unwrap()
            .find_jwt_authority("jwt-1")
            .is_some()
    );

    h.stop().await;
}

#[tokio::test]
async fn jwt_bundles_hold_only_jwt_keys_keyed_by_trust_domain_id() {
    let pki = Pki::new(td());
    let h = Harness::start(&pki, pki.snapshot(&[], &[], 1)).await;
    let mut raw = h.raw().await;
    let mut stream = raw
        .fetch_jwt_bundles(with_header(JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let message = stream.message().await.unwrap().unwrap();
    let jwks: serde_json::Value =
        serde_json::from_slice(&message.bundles["spiffe://example.org"]).unwrap();
    let uses: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["use"].as_str().unwrap())
        .collect();
    assert_eq!(uses, ["jwt-svid"]);

    let mut stream = raw
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let message = stream.message().await.unwrap().unwrap();
    assert_eq!(message.bundles["spiffe://example.org"], pki.root.to_vec());
    drop(stream);
    h.stop().await;
}

#[tokio::test]
async fn a_caller_whose_svids_are_not_issued_yet_waits_for_them() {
    let pki = Pki::new(td());
    let entries = [entry("e-api", "/api", vec![me()])];
    let h = Harness::start(&pki, pki.snapshot(&entries, &[], 1)).await;
    let client = h.client().await;
    let fetch = tokio::spawn(async move { client.fetch_x509_svid().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !fetch.is_finished(),
        "answered before any SVID was issued: {:?}",
        fetch.await
    );

    let svid = pki.issue(&entries[0]);
    h.snapshots
        .send_replace(pki.snapshot(&entries, std::slice::from_ref(&svid), 2));
    let got = tokio::time::timeout(WAIT, fetch)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(client_chain(&got), der_chain(&svid));
    h.stop().await;
}

#[tokio::test]
async fn an_svid_that_expires_unrenewed_is_withdrawn() {
    let pki = Pki::new(td());
    let entries = [
        entry("e-api", "/api", vec![me()]),
        entry("e-web", "/web", vec![me()]),
    ];
    let lasting = pki.issue(&entries[0]);
    let short = pki.issue_expiring(&entries[1], Duration::from_secs(2));
    let h = Harness::start(&pki, pki.snapshot(&entries, &[lasting.clone(), short], 1)).await;
    let client = h.client().await;

    // Two SVIDs, then, with no new snapshot, the expired one is gone.
    let mut stream = client.stream_x509_contexts().await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().svids().len(), 2);
    let ctx = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let ids: Vec<String> = ctx
        .svids()
        .iter()
        .map(|s| s.spiffe_id().to_string())
        .collect();
    assert_eq!(ids, ["spiffe://example.org/api"]);

    // When the last one expires unrenewed, the stream says the caller has
    // no identity left.
    let short = pki.issue_expiring(&entries[0], Duration::from_secs(2));
    h.snapshots
        .send_replace(pki.snapshot(&entries[..1], &[short], 2));
    assert_eq!(
        tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .svids()
            .len(),
        1
    );
    let end = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(end, Err(spiffe::WorkloadApiError::NoIdentityIssued)),
        "{end:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn removing_the_callers_entries_redacts_its_identity() {
    let pki = Pki::new(td());
    let entries = [entry("e-api", "/api", vec![me()])];
    let h = Harness::start(&pki, pki.snapshot(&entries, &[pki.issue(&entries[0])], 1)).await;
    let client = h.client().await;
    let mut stream = client.stream_x509_contexts().await.unwrap();
    stream.next().await.unwrap().unwrap();
    h.snapshots.send_replace(pki.snapshot(&[], &[], 2));
    let end = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(end, Err(spiffe::WorkloadApiError::NoIdentityIssued)),
        "{end:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_removes_the_socket() {
    let pki = Pki::new(td());
    let entries = [entry("e-api", "/api", vec![me()])];
    let h = Harness::start(&pki, pki.snapshot(&entries, &[pki.issue(&entries[0])], 1)).await;
    let client = h.client().await;
    let mut svids = client.stream_x509_contexts().await.unwrap();
    let mut bundles = client.stream_jwt_bundles().await.unwrap();
    svids.next().await.unwrap().unwrap();
    bundles.next().await.unwrap().unwrap();

    h.stop.send_replace(true);
    assert!(
        tokio::time::timeout(WAIT, svids.next())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        tokio::time::timeout(WAIT, bundles.next())
            .await
            .unwrap()
            .is_none()
    );
    h.stop().await;
}

#[test]
fn attestation_errors_map_to_the_standard_codes() {
    let cases = [
        (AttestError::NoCredentials, tonic::Code::PermissionDenied),
        (
            AttestError::ProcessChanged(7),
            tonic::Code::PermissionDenied,
        ),
        (
            AttestError::Proc {
                pid: 7,
                reason: "EACCES".into(),
            },
            tonic::Code::Unavailable,
        ),
    ];
    for (error, code) in cases {
        assert_eq!(
            attest_status("Test", Some(7), &error).code(),
            code,
            "{error}"
        );
    }
}

#[test]
fn the_security_header_must_be_exactly_true() {
    let req = |v: Option<&str>| {
        let mut r = tonic::Request::new(());
        if let Some(v) = v {
            r.metadata_mut().insert(SECURITY_HEADER, v.parse().unwrap());
        }
        r
    };
    assert!(check_security_header(req(Some("true"))).is_ok());
    for bad in [None, Some("TRUE"), Some("false"), Some("")] {
        assert_eq!(
            check_security_header(req(bad)).unwrap_err().code(),
            tonic::Code::InvalidArgument,
            "{bad:?}"
        );
    }
}

#[test]
fn json_claims_become_a_struct() {
    use prost_types::value::Kind;
    let json = serde_json::json!({
        "sub": "spiffe://example.org/a",
        "aud": ["x", "y"],
        "exp": 1_700_000_000_i64,
        "nested": {"ok": true, "none": null},
    });
    let s = view::json_to_struct(json).unwrap();
    assert!(
        matches!(&s.fields["sub"].kind, Some(Kind::StringValue(v)) if v == "spiffe://example.org/a")
    );
    assert!(matches!(&s.fields["exp"].kind, Some(Kind::NumberValue(v)) if *v == 1_700_000_000.0));
    let Some(Kind::ListValue(aud)) = &s.fields["aud"].kind else {
        panic!("aud")
    };
    assert_eq!(aud.values.len(), 2);
    let Some(Kind::StructValue(nested)) = &s.fields["nested"].kind else {
        panic!("nested")
    };
    assert!(matches!(
        nested.fields["ok"].kind,
        Some(Kind::BoolValue(true))
    ));
    assert!(matches!(
        nested.fields["none"].kind,
        Some(Kind::NullValue(_))
    ));
    assert!(view::json_to_struct(serde_json::json!([1])).is_none());
}

#[test]
fn the_view_waits_until_the_agent_has_a_bundle() {
    let mut view = view::X509SvidView::new(vec![me()]);
    assert!(matches!(
        view.evaluate(&Snapshot::default(), SystemTime::now()),
        stream::Decision::Wait(None)
    ));
    assert!(matches!(
        view::x509_bundles(&Snapshot::default(), &[]),
        stream::Decision::Wait(None)
    ));
    assert!(matches!(
        view::jwt_bundles(&Snapshot::default(), &[]),
        stream::Decision::Wait(None)
    ));
}

#[tokio::test]
async fn jwt_audiences_are_bounded_in_count_and_length() {
    let pki = Pki::new(td());
    let entries = [entry("e-api", "/api", vec![me()])];
    let svids = [pki.issue(&entries[0])];
    let h = Harness::start(&pki, pki.snapshot(&entries, &svids, 1)).await;
    let mut raw = h.raw().await;
    let ask = |audience: Vec<String>| {
        with_header(JwtsvidRequest {
            audience,
            spiffe_id: String::new(),
        })
    };

    let at_the_limits: Vec<String> = (0..jwt::MAX_AUDIENCES)
        .map(|i| format!("{i:0>width$}", width = jwt::MAX_AUDIENCE_LEN))
        .collect();
    let ok = raw.fetch_jwtsvid(ask(at_the_limits)).await.unwrap();
    assert_eq!(ok.into_inner().svids.len(), 1);

    let too_many: Vec<String> = (0..=jwt::MAX_AUDIENCES).map(|i| format!("a{i}")).collect();
    let err = raw.fetch_jwtsvid(ask(too_many)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    let too_long = vec!["db".to_owned(), "x".repeat(jwt::MAX_AUDIENCE_LEN + 1)];
    let err = raw.fetch_jwtsvid(ask(too_long)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    h.stop().await;
}

mod federation;
mod rotation;
