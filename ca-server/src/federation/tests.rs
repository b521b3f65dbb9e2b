//! Relationships against local bundle endpoints on loopback: each check of
//! a fetched bundle, each way the endpoint can fail to authenticate, and
//! persistence of the last good bundle.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rustls::ServerConfig;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use signet_identity::testing::TestCa;
use signet_identity::{KeyType, PrivateKey, SpiffeId, TrustBundle, TrustDomain};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::config::{BundleEndpoint, EndpointTls};
use super::store as fstore;
use super::{FederationError, Federations, NewRelationship, endpoint};
use crate::ca::testing::{self, TestClock};
use crate::config::Settings;

fn td(s: &str) -> TrustDomain {
    TrustDomain::new(s).unwrap()
}

/// A certificate for `id` (and `dns`) signed by `ca`, as rustls serves it.
fn serving_key(ca: &TestCa, id: &str, dns: &[&str]) -> Arc<CertifiedKey> {
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let issued = ca
        .issue_for(
            &key,
            &SpiffeId::parse(id).unwrap(),
            dns,
            SystemTime::now() - Duration::from_secs(60),
            Duration::from_secs(3600),
        )
        .unwrap();
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec()));
    let signer = rustls::crypto::ring::sign::any_supported_type(&der).unwrap();
    Arc::new(CertifiedKey::new(issued.chain, signer))
}

/// A bundle endpoint on loopback serving whatever is put in the returned
/// sender.
struct Remote {
    port: u16,
    doc: watch::Sender<Bytes>,
    _stop: watch::Sender<bool>,
}

async fn remote(key: Arc<CertifiedKey>) -> Remote {
    let endpoint = BundleEndpoint {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: EndpointTls::Web(key),
        refresh_hint: Duration::from_secs(300),
    };
    // The resolver is unused with a fixed key.
    let tls: Arc<ServerConfig> = endpoint::server_config(&endpoint, Arc::new(NoCert)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (doc, doc_rx) = watch::channel(Bytes::new());
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(endpoint::serve(listener, tls, doc_rx, stop_rx));
    Remote {
        port,
        doc,
        _stop: stop,
    }
}

#[derive(Debug)]
struct NoCert;
impl rustls::server::ResolvesServerCert for NoCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}

fn jwks(ca: &TestCa, seq: u64) -> Bytes {
    let mut b = TrustBundle::new(td("remote.org"))
        .with_x509_authorities([ca.root().clone()])
        .unwrap();
    b.set_sequence(seq);
    b.set_refresh_hint(Some(Duration::from_secs(60)));
    Bytes::from(b.to_jwks())
}

struct Local {
    _dir: tempfile::TempDir,
    ca: Arc<crate::ca::Ca>,
    federations: Federations,
    _shutdown: watch::Sender<bool>,
}

fn local() -> Local {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let ca = Arc::new(testing::open(dir.path(), &clock, Settings::default()));
    let (shutdown, rx) = watch::channel(false);
    let federations = Federations::start(ca.clone(), rx).unwrap();
    Local {
        _dir: dir,
        ca,
        federations,
        _shutdown: shutdown,
    }
}

fn spiffe_rel(port: u16, endpoint_id: &str, initial: &TrustBundle) -> NewRelationship {
    NewRelationship {
        trust_domain: "remote.org".into(),
        url: format!("https://127.0.0.1:{port}/"),
        profile: "https_spiffe".into(),
        endpoint_spiffe_id: endpoint_id.into(),
        initial_bundle: initial.to_pem().into_bytes(),
        web_roots_pem: vec![],
    }
}

const ENDPOINT_ID: &str = "spiffe://remote.org/signet/ca";

#[tokio::test]
async fn https_spiffe_fetches_checks_and_persists() {
    let remote_ca = TestCa::new(td("remote.org")).unwrap();
    let server = remote(serving_key(&remote_ca, ENDPOINT_ID, &[])).await;
    server.doc.send_replace(jwks(&remote_ca, 5));
    let l = local();
    let own = l.ca.config().trust_domain.clone();
    let rel = spiffe_rel(server.port, ENDPOINT_ID, remote_ca.bundle())
        .check(&own, false)
        .unwrap();
    l.federations.create(rel.clone(), "test").unwrap();
    let created = testing::audit(&l.ca).pop().unwrap();
    assert_eq!(
        (created.action.as_str(), created.result.as_str()),
        ("create_federation", "ok")
    );
    assert!(created.detail.contains("remote.org"), "{}", created.detail);
    assert!(matches!(
        l.federations.create(rel, "test"),
        Err(FederationError::AlreadyExists(_))
    ));
    let v = l.federations.refresh("remote.org").await.unwrap();
    assert_eq!(v.status.last_error, "");
    assert_eq!(v.bundle.as_ref().map(TrustBundle::sequence), Some(5));
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(super::metrics::FederationState(
        l.federations.clone(),
    )));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "signet_ca_federated_bundle_sequence{trust_domain=\"remote.org\"} 5",
        "signet_ca_federation_consecutive_failures{trust_domain=\"remote.org\"} 0",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
    let published = l.federations.watch().borrow().clone();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].trust_domain().as_str(), "remote.org");
    assert_eq!(published[0].x509_authorities(), [remote_ca.root().clone()]);

    // Each bad answer is refused, recorded, and changes nothing.
    let mut too_big = vec![b' '; signet_identity::bundle::MAX_BUNDLE_LEN + 1];
    too_big[0] = b'{';
    let other_ca = TestCa::new(td("other.org")).unwrap();
    let mut other = TrustBundle::new(td("other.org"))
        .with_x509_authorities([other_ca.root().clone()])
        .unwrap();
    other.set_sequence(9);
    for (doc, expected) in [
        (jwks(&remote_ca, 4), "lower than the last good"),
        (
            Bytes::from_static(b"{\"keys\": [{]}"),
            "not a valid SPIFFE bundle",
        ),
        (Bytes::from(too_big), "larger than"),
        (
            Bytes::from(other.to_jwks()),
            "for trust domain other.org, not remote.org",
        ),
    ] {
        server.doc.send_replace(doc);
        let v = l.federations.refresh("remote.org").await.unwrap();
        assert!(
            v.status.last_error.contains(expected),
            "{expected}: {}",
            v.status.last_error
        );
        assert!(v.status.consecutive_failures >= 1);
        assert_eq!(v.bundle.as_ref().map(TrustBundle::sequence), Some(5));
        assert_eq!(l.federations.watch().borrow()[0].sequence(), 5);
    }

    // The same sequence changes nothing and clears the error; the next
    // fetch is one refresh hint (60 s) after this one.
    server.doc.send_replace(jwks(&remote_ca, 5));
    let v = l.federations.refresh("remote.org").await.unwrap();
    assert_eq!(v.status.last_error, "");
    assert_eq!(v.status.consecutive_failures, 0);
    assert_eq!(v.next_fetch_at, v.status.last_success_at + 60);

    // A newer one replaces it, and the store has it for the next start.
    server.doc.send_replace(jwks(&remote_ca, 6));
    let v = l.federations.refresh("remote.org").await.unwrap();
    assert_eq!(v.bundle.as_ref().map(TrustBundle::sequence), Some(6));
    let stored = fstore::load_all(l.ca.store()).unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].bundle.as_ref().map(TrustBundle::sequence),
        Some(6)
    );
    assert_eq!(
        stored[0].bundle.as_ref().unwrap().x509_authorities(),
        [remote_ca.root().clone()]
    );

    // A restart (a new registry over the same store) starts from it.
    let (_stop, rx) = watch::channel(false);
    let again = Federations::start(l.ca.clone(), rx).unwrap();
    assert_eq!(again.watch().borrow()[0].sequence(), 6);
    assert_eq!(
        again.get("remote.org").unwrap().status.last_success_at,
        v.status.last_success_at
    );
    drop(again);

    // Deleting it takes the bundle out of the federated set.
    l.federations.delete("remote.org", "test").unwrap();
    assert_eq!(
        testing::audit(&l.ca).pop().unwrap().action,
        "delete_federation"
    );
    assert!(l.federations.watch().borrow().is_empty());
    assert!(fstore::load_all(l.ca.store()).unwrap().is_empty());
    assert!(matches!(
        l.federations.delete("remote.org", "test"),
        Err(FederationError::NotFound(_))
    ));
}

#[tokio::test]
async fn an_endpoint_that_does_not_authenticate_changes_nothing() {
    let remote_ca = TestCa::new(td("remote.org")).unwrap();
    let impostor_ca = TestCa::new(td("remote.org")).unwrap();
    let cases = [
        // Right CA, wrong SPIFFE ID.
        (
            serving_key(&remote_ca, "spiffe://remote.org/not-the-endpoint", &[]),
            "expected spiffe://remote.org/signet/ca",
        ),
        // Right ID, a CA the initial bundle does not hold.
        (
            serving_key(&impostor_ca, ENDPOINT_ID, &[]),
            "does not chain to the bundle of remote.org",
        ),
    ];
    for (key, expected) in cases {
        let server = remote(key).await;
        server.doc.send_replace(jwks(&remote_ca, 1));
        let l = local();
        let own = l.ca.config().trust_domain.clone();
        let rel = spiffe_rel(server.port, ENDPOINT_ID, remote_ca.bundle())
            .check(&own, false)
            .unwrap();
        l.federations.create(rel, "test").unwrap();
        let v = l.federations.refresh("remote.org").await.unwrap();
        assert!(
            v.status.last_error.contains(expected),
            "{}",
            v.status.last_error
        );
        assert!(v.bundle.is_none());
        assert!(l.federations.watch().borrow().is_empty());
    }
}

#[tokio::test]
async fn https_web_checks_the_hostname_against_the_given_roots() {
    let web_ca = TestCa::new(td("web.example")).unwrap();
    let remote_ca = TestCa::new(td("remote.org")).unwrap();
    let server = remote(serving_key(
        &web_ca,
        "spiffe://web.example/endpoint",
        &["localhost"],
    ))
    .await;
    server.doc.send_replace(jwks(&remote_ca, 2));
    for (host, ok) in [("localhost", true), ("127.0.0.1", false)] {
        let l = local();
        let own = l.ca.config().trust_domain.clone();
        let rel = NewRelationship {
            trust_domain: "remote.org".into(),
            url: format!("https://{host}:{}/", server.port),
            profile: "https_web".into(),
            web_roots_pem: web_ca.bundle().to_pem().into_bytes(),
            ..NewRelationship::default()
        }
        .check(&own, false)
        .unwrap();
        l.federations.create(rel, "test").unwrap();
        let v = l.federations.refresh("remote.org").await.unwrap();
        if ok {
            assert_eq!(v.status.last_error, "");
            assert_eq!(v.bundle.as_ref().map(TrustBundle::sequence), Some(2));
        } else {
            assert!(
                v.status.last_error.contains("TLS"),
                "{}",
                v.status.last_error
            );
            assert!(v.bundle.is_none());
        }
    }
}

#[tokio::test]
async fn the_endpoint_serves_get_slash_only() {
    use http_body_util::{BodyExt, Full};
    let ca = TestCa::new(td("remote.org")).unwrap();
    let server = remote(serving_key(&ca, ENDPOINT_ID, &[])).await;
    server.doc.send_replace(jwks(&ca, 3));
    let tls = super::verify::client_config(
        &super::Profile::HttpsSpiffe {
            endpoint_id: SpiffeId::parse(ENDPOINT_ID).unwrap(),
            initial: ca.bundle().clone(),
        },
        ca.bundle(),
    )
    .unwrap();
    let ask = |method: &'static str, path: &'static str, body: &'static [u8]| {
        let tls = tls.clone();
        let port = server.port;
        async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .unwrap();
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let req = http::Request::builder()
                .method(method)
                .uri(path)
                .header("host", "localhost")
                .body(Full::new(Bytes::from_static(body)))
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            let status = resp.status().as_u16();
            let ctype = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, ctype, body)
        }
    };
    let (status, ctype, body) = ask("GET", "/", b"").await;
    assert_eq!(status, 200);
    assert_eq!(ctype.as_deref(), Some("application/json"));
    let served = TrustBundle::from_jwks(td("remote.org"), &body).unwrap();
    assert_eq!(served.sequence(), 3);
    assert_eq!(ask("POST", "/", b"").await.0, 405);
    assert_eq!(ask("GET", "/other", b"").await.0, 404);
    assert_eq!(ask("GET", "/", b"x").await.0, 413);
}

#[tokio::test]
async fn relationships_from_the_configuration_cannot_be_deleted_by_the_api() {
    let remote_ca = TestCa::new(td("remote.org")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bundle_file = dir.path().join("remote.pem");
    std::fs::write(&bundle_file, remote_ca.bundle().to_pem()).unwrap();
    let data = dir.path().join("data");
    let file: Settings = toml::from_str(&format!(
        "[[federation]]\ntrust_domain = \"remote.org\"\nbundle_endpoint_url = \"https://127.0.0.1:9/\"\nprofile = \"https_spiffe\"\nendpoint_spiffe_id = \"{ENDPOINT_ID}\"\nbundle_file = \"{}\"\n",
        bundle_file.display()
    ))
    .unwrap();
    let settings = Settings {
        federation: file.federation,
        ..Settings::default()
    };
    let clock = TestClock::new();
    let ca = Arc::new(testing::open(&data, &clock, settings));
    let (_stop, rx) = watch::channel(false);
    let federations = Federations::start(ca, rx).unwrap();
    let list = federations.list();
    assert_eq!(list.len(), 1);
    assert!(list[0].relationship.from_config);
    assert!(matches!(
        federations.delete("remote.org", "test"),
        Err(FederationError::FromConfig(_))
    ));
    assert_eq!(federations.list().len(), 1);
}

#[test]
fn bad_relationships_are_refused() {
    let own = td("test.org");
    let remote_ca = TestCa::new(td("remote.org")).unwrap();
    let good = spiffe_rel(443, ENDPOINT_ID, remote_ca.bundle());
    assert!(good.check(&own, false).is_ok());
    let cases = [
        NewRelationship {
            trust_domain: "test.org".into(),
            ..good.clone()
        },
        NewRelationship {
            trust_domain: "Bad Domain".into(),
            ..good.clone()
        },
        NewRelationship {
            url: "http://127.0.0.1/".into(),
            ..good.clone()
        },
        NewRelationship {
            url: "https://user@host/".into(),
            ..good.clone()
        },
        NewRelationship {
            profile: "https_other".into(),
            ..good.clone()
        },
        NewRelationship {
            endpoint_spiffe_id: "spiffe://elsewhere.org/ca".into(),
            ..good.clone()
        },
        NewRelationship {
            initial_bundle: vec![],
            ..good.clone()
        },
        NewRelationship {
            initial_bundle: b"garbage".to_vec(),
            ..good.clone()
        },
        NewRelationship {
            web_roots_pem: remote_ca.bundle().to_pem().into_bytes(),
            ..good.clone()
        },
        NewRelationship {
            profile: "https_web".into(),
            ..good.clone()
        },
    ];
    for c in cases {
        assert!(c.check(&own, false).is_err(), "{c:?}");
    }
}
