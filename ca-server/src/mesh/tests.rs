//! The mesh APIs against a real CA with a stub TokenReview: identities come
//! from the token, refusals are audited and issue nothing, and the chains
//! are judged by `openssl verify -x509_strict`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use prost_types::value::Kind;
use signet_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateService;
use signet_proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use signet_proto::linkerd::identity::identity_server::Identity;
use signet_proto::linkerd::identity::{CertifyRequest, CertifyResponse};
use tonic::{Code, Request};

use super::MeshAuth;
use super::config::MeshConfig;
use super::istio::IstioApi;
use super::linkerd::LinkerdApi;
use super::review::{
    BoxFuture, EXTRA_NODE_NAME, PodLookup, ReviewError, TokenReview, TokenReviewer,
};
use crate::ca::Ca;
use crate::ca::testing::{TestClock, audit, open};
use crate::config::Settings;

/// Answers reviews from a table: token -> (username, audiences, node).
/// Unknown tokens are not authenticated, as a forged one is not.
pub(crate) struct StubReviewer(pub HashMap<String, (String, Vec<String>, Option<String>)>);

impl TokenReviewer for StubReviewer {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audiences: &'a [String],
    ) -> BoxFuture<'a, Result<TokenReview, ReviewError>> {
        Box::pin(async move {
            Ok(match self.0.get(token) {
                // The API server authenticates a token only for the
                // audiences it was issued for.
                Some((user, auds, node)) if audiences.iter().any(|a| auds.contains(a)) => {
                    TokenReview {
                        authenticated: true,
                        username: user.clone(),
                        audiences: audiences
                            .iter()
                            .filter(|a| auds.contains(a))
                            .cloned()
                            .collect(),
                        extra: node
                            .iter()
                            .map(|n| (EXTRA_NODE_NAME.to_owned(), vec![n.clone()]))
                            .collect(),
                        error: None,
                    }
                }
                Some(_) => TokenReview {
                    error: Some("token audiences is invalid for the target audiences".into()),
                    ..TokenReview::default()
                },
                None => TokenReview {
                    error: Some("invalid bearer token".into()),
                    ..TokenReview::default()
                },
            })
        })
    }
}

/// Pods as (namespace, service account, node).
pub(crate) struct StubPods(pub HashSet<(String, String, String)>);

impl PodLookup for StubPods {
    fn has_pod_on_node<'a>(
        &'a self,
        namespace: &'a str,
        service_account: &'a str,
        node: &'a str,
    ) -> BoxFuture<'a, Result<bool, ReviewError>> {
        let key = (
            namespace.to_owned(),
            service_account.to_owned(),
            node.to_owned(),
        );
        Box::pin(async move { Ok(self.0.contains(&key)) })
    }
}

pub(crate) fn mesh_config() -> MeshConfig {
    MeshConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        istio: true,
        linkerd: true,
        server_names: vec![
            "istiod.istio-system.svc".into(),
            "linkerd-identity.linkerd.serviceaccount.identity.linkerd.cluster.local".into(),
        ],
        istio_audience: "istio-ca".into(),
        linkerd_audience: "identity.l5d.io".into(),
        cluster_id: Some("Kubernetes".into()),
        node_accounts: vec!["istio-system:ztunnel".into()],
        linkerd_control_namespace: "linkerd".into(),
        linkerd_trust_domain: "cluster.local".into(),
        linkerd_spiffe_uri: false,
        kubeconfig: None,
        publish_root_configmap: false,
        max_connections: 16,
        max_connections_per_ip: 16,
        max_connection_age: std::time::Duration::from_secs(600),
    }
}

/// Tokens: `web` (default:web, istio-ca), `l5d` (default:web, linkerd),
/// `ztunnel` (istio-system:ztunnel on node-a), `other-aud` (default:web,
/// for another audience), `admin` (a person).
pub(crate) fn auth(ca: Arc<Ca>) -> MeshAuth {
    let sa = |ns: &str, n: &str| format!("system:serviceaccount:{ns}:{n}");
    let mut tokens = HashMap::new();
    tokens.insert(
        "web".into(),
        (
            sa("default", "web"),
            vec!["istio-ca".into()],
            Some("node-a".into()),
        ),
    );
    tokens.insert(
        "l5d".into(),
        (sa("default", "web"), vec!["identity.l5d.io".into()], None),
    );
    tokens.insert(
        "ztunnel".into(),
        (
            sa("istio-system", "ztunnel"),
            vec!["istio-ca".into()],
            Some("node-a".into()),
        ),
    );
    tokens.insert(
        "ztunnel-unbound".into(),
        (sa("istio-system", "ztunnel"), vec!["istio-ca".into()], None),
    );
    tokens.insert(
        "other-aud".into(),
        (sa("default", "web"), vec!["vault".into()], None),
    );
    tokens.insert(
        "admin".into(),
        ("alice".into(), vec!["istio-ca".into()], None),
    );
    let mut pods = HashSet::new();
    pods.insert(("default".into(), "web".into(), "node-a".into()));
    pods.insert(("default".into(), "db".into(), "node-b".into()));
    MeshAuth {
        ca,
        config: Arc::new(mesh_config()),
        reviewer: Arc::new(StubReviewer(tokens)),
        pods: Arc::new(StubPods(pods)),
    }
}

/// A P-256 CSR with these URI and DNS SANs (as istio-agent and Linkerd
/// make them); returns (PEM, DER).
pub(crate) fn csr_with(uris: &[&str], dns: &[&str]) -> (String, Vec<u8>) {
    use rcgen::{CertificateParams, KeyPair, SanType, string::Ia5String};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    // rcgen's default subject has a CN of its own; proxies send none.
    params.distinguished_name = rcgen::DistinguishedName::new();
    for u in uris {
        params
            .subject_alt_names
            .push(SanType::URI(Ia5String::try_from(*u).unwrap()));
    }
    for d in dns {
        params
            .subject_alt_names
            .push(SanType::DnsName(Ia5String::try_from(*d).unwrap()));
    }
    let csr = params.serialize_request(&key).unwrap();
    (csr.pem().unwrap(), csr.der().to_vec())
}

/// A P-256 CSR (DER) with subject CN `cn` and these DNS SANs.
fn csr_named(cn: &str, dns: &[&str]) -> Vec<u8> {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.serialize_request(&key).unwrap().der().to_vec()
}

fn istio_request(
    token: Option<&str>,
    csr: &str,
    impersonate: Option<&str>,
) -> Request<IstioCertificateRequest> {
    let metadata = impersonate.map(|id| prost_types::Struct {
        fields: BTreeMap::from([(
            "ImpersonatedIdentity".to_owned(),
            prost_types::Value {
                kind: Some(Kind::StringValue(id.to_owned())),
            },
        )]),
    });
    let mut req = Request::new(IstioCertificateRequest {
        csr: csr.to_owned(),
        validity_duration: 7 * 86_400,
        metadata,
    });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req.metadata_mut()
        .insert("clusterid", "Kubernetes".parse().unwrap());
    req
}

/// Runs `openssl verify -x509_strict` on PEM files; returns its output.
pub(crate) fn openssl_verify(
    dir: &Path,
    root: &str,
    intermediates: &[String],
    leaf: &str,
) -> String {
    std::fs::write(dir.join("root.pem"), root).unwrap();
    std::fs::write(dir.join("inter.pem"), intermediates.concat()).unwrap();
    std::fs::write(dir.join("leaf.pem"), leaf).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(dir.join("root.pem"))
        .arg("-untrusted")
        .arg(dir.join("inter.pem"))
        .arg(dir.join("leaf.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn sans_of(der: &[u8]) -> (Vec<String>, Vec<String>) {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::URI(u) => uris.push((*u).to_owned()),
                GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                _ => {}
            }
        }
    }
    (uris, dns)
}

fn setup() -> (tempfile::TempDir, Arc<Ca>) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(open(
        dir.path(),
        &TestClock::at(std::time::SystemTime::now()),
        Settings::default(),
    ));
    (dir, ca)
}

fn issued(ca: &Ca) -> Vec<crate::store::AuditRecord> {
    audit(ca)
        .into_iter()
        .filter(|r| r.result == "issued" && r.action.starts_with("mesh_"))
        .collect()
}

/// Checks an Istio answer: leaf, intermediates, root, each one PEM ending
/// in "\n", accepted by openssl; returns the leaf's URI SANs.
pub(crate) fn check_istio_chain(dir: &Path, resp: &IstioCertificateResponse) -> Vec<String> {
    let chain = &resp.cert_chain;
    assert!(
        chain.len() >= 3,
        "leaf, intermediate, root: {}",
        chain.len()
    );
    for pem_text in chain {
        assert!(
            pem_text.ends_with("-----END CERTIFICATE-----\n"),
            "{pem_text:?}"
        );
        assert!(
            !pem_text.contains('\r'),
            "LF line ends, as istiod: {pem_text:?}"
        );
        assert_eq!(pem::parse_many(pem_text).unwrap().len(), 1);
    }
    let root = chain.last().unwrap();
    let out = openssl_verify(dir, root, &chain[1..chain.len() - 1], &chain[0]);
    assert!(out.contains(": OK"), "{out}");
    let (uris, dns) = sans_of(pem::parse(&chain[0]).unwrap().contents());
    assert!(dns.is_empty(), "{dns:?}");
    uris
}

#[tokio::test]
async fn istio_issues_the_tokens_identity_with_the_full_chain() {
    let (dir, ca) = setup();
    let api = IstioApi::new(auth(ca.clone()));
    let (csr, _) = csr_with(&["spiffe://test.org/ns/default/sa/web"], &[]);
    let resp = api
        .create_certificate(istio_request(Some("web"), &csr, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        check_istio_chain(dir.path(), &resp),
        ["spiffe://test.org/ns/default/sa/web"]
    );
    // The root is the CA's own.
    let root = pem::parse(resp.cert_chain.last().unwrap()).unwrap();
    assert!(
        ca.bundle()
            .x509_authorities()
            .iter()
            .any(|a| a.as_ref() == root.contents())
    );
    // validity_duration (7 days) is capped by max_x509_svid_ttl (24h).
    let leaf = pem::parse(&resp.cert_chain[0]).unwrap();
    let (_, cert) = {
        use x509_parser::prelude::FromDer;
        x509_parser::prelude::X509Certificate::from_der(leaf.contents()).unwrap()
    };
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!(life <= 24 * 3600 + 60, "{life}");
    let records = issued(&ca);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].caller, "system:serviceaccount:default:web");
    assert_eq!(records[0].spiffe_id, "spiffe://test.org/ns/default/sa/web");
}

#[tokio::test]
async fn istio_refusals_issue_nothing_and_are_audited() {
    let (_dir, ca) = setup();
    let api = IstioApi::new(auth(ca.clone()));
    let own = csr_with(&["spiffe://test.org/ns/default/sa/web"], &[]).0;
    let db = csr_with(&["spiffe://test.org/ns/default/sa/db"], &[]).0;
    let with_dns = csr_with(&["spiffe://test.org/ns/default/sa/web"], &["evil.example"]).0;
    let cases: Vec<(&str, Request<IstioCertificateRequest>, Code)> = vec![
        (
            "no token",
            istio_request(None, &own, None),
            Code::Unauthenticated,
        ),
        (
            "forged token",
            istio_request(Some("forged"), &own, None),
            Code::Unauthenticated,
        ),
        (
            "token for another audience",
            istio_request(Some("other-aud"), &own, None),
            Code::Unauthenticated,
        ),
        (
            "not a service account",
            istio_request(Some("admin"), &own, None),
            Code::PermissionDenied,
        ),
        (
            "CSR for another identity",
            istio_request(Some("web"), &db, None),
            Code::PermissionDenied,
        ),
        (
            "CSR with a DNS name",
            istio_request(Some("web"), &with_dns, None),
            Code::PermissionDenied,
        ),
        (
            "garbage CSR",
            istio_request(Some("web"), "not a csr", None),
            Code::InvalidArgument,
        ),
        (
            "impersonation by a non-node account",
            istio_request(Some("web"), &db, Some("spiffe://test.org/ns/default/sa/db")),
            Code::PermissionDenied,
        ),
        (
            "impersonation of an SA with no pod on the node",
            istio_request(
                Some("ztunnel"),
                &db,
                Some("spiffe://test.org/ns/default/sa/db"),
            ),
            Code::PermissionDenied,
        ),
        (
            "impersonation by a token bound to no node",
            istio_request(
                Some("ztunnel-unbound"),
                &own,
                Some("spiffe://test.org/ns/default/sa/web"),
            ),
            Code::PermissionDenied,
        ),
        (
            "impersonation of another trust domain",
            istio_request(
                Some("ztunnel"),
                &own,
                Some("spiffe://other.org/ns/default/sa/web"),
            ),
            Code::InvalidArgument,
        ),
        (
            "impersonation of a reserved ID",
            istio_request(Some("ztunnel"), &own, Some("spiffe://test.org/signet/ca")),
            Code::InvalidArgument,
        ),
    ];
    let n = cases.len();
    for (what, req, code) in cases {
        let err = api.create_certificate(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err:?}");
    }
    let mut wrong_cluster = istio_request(Some("web"), &own, None);
    wrong_cluster
        .metadata_mut()
        .insert("clusterid", "elsewhere".parse().unwrap());
    let err = api.create_certificate(wrong_cluster).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(issued(&ca).is_empty());
    let rejected = audit(&ca)
        .into_iter()
        .filter(|r| r.action == super::istio::ACTION && r.result == "rejected")
        .count();
    assert_eq!(rejected, n + 1);
}

#[tokio::test]
async fn ztunnel_gets_the_identity_of_a_pod_on_its_node() {
    let (dir, ca) = setup();
    let api = IstioApi::new(auth(ca.clone()));
    let web = "spiffe://test.org/ns/default/sa/web";
    let (csr, _) = csr_with(&[web], &[]);
    let resp = api
        .create_certificate(istio_request(Some("ztunnel"), &csr, Some(web)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(check_istio_chain(dir.path(), &resp), [web]);
    let records = issued(&ca);
    assert_eq!(
        records[0].caller,
        "system:serviceaccount:istio-system:ztunnel"
    );
    assert_eq!(records[0].spiffe_id, web);
}

fn linkerd_request(token: &str, identity: &str, csr: Vec<u8>) -> Request<CertifyRequest> {
    Request::new(CertifyRequest {
        identity: identity.into(),
        token: token.as_bytes().to_vec(),
        certificate_signing_request: csr,
    })
}

const WEB_L5D: &str = "web.default.serviceaccount.identity.linkerd.cluster.local";

/// Checks a Linkerd answer with openssl against the CA's root; returns the
/// leaf's (URI, DNS) SANs.
pub(crate) fn check_linkerd(
    dir: &Path,
    ca: &Ca,
    resp: &CertifyResponse,
) -> (Vec<String>, Vec<String>) {
    let pem_of = |der: &[u8]| pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()));
    let roots: String = ca
        .bundle()
        .x509_authorities()
        .iter()
        .map(|r| pem_of(r))
        .collect();
    let inters: Vec<String> = resp
        .intermediate_certificates
        .iter()
        .map(|d| pem_of(d))
        .collect();
    assert!(!inters.is_empty());
    let out = openssl_verify(dir, &roots, &inters, &pem_of(&resp.leaf_certificate));
    assert!(out.contains(": OK"), "{out}");
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, leaf) = X509Certificate::from_der(&resp.leaf_certificate).unwrap();
    // valid_until is the leaf's notAfter, as linkerd-identity sends it.
    let until = resp.valid_until.unwrap();
    assert_eq!(until.seconds, leaf.validity().not_after.timestamp());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(u64::try_from(until.seconds).unwrap() > now);
    // The intermediates are the chain after the leaf, without the anchor.
    let roots = ca.bundle();
    for der in &resp.intermediate_certificates {
        assert!(
            !roots.x509_authorities().iter().any(|r| r.as_ref() == der),
            "a trust anchor among the intermediates"
        );
    }
    let cn: Vec<String> = leaf
        .subject()
        .iter_common_name()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let (uris, dns) = sans_of(&resp.leaf_certificate);
    if uris.is_empty() {
        assert_eq!(cn, dns, "a DNS-named leaf's subject CN is the identity");
    } else {
        assert!(cn.is_empty(), "an X.509-SVID's subject is empty: {cn:?}");
    }
    (uris, dns)
}

#[tokio::test]
async fn linkerd_issues_the_dns_identity_of_the_token() {
    let (dir, ca) = setup();
    let api = LinkerdApi::new(auth(ca.clone()));
    let (_, der) = csr_with(&[], &[WEB_L5D]);
    let resp = api
        .certify(linkerd_request("l5d\n", WEB_L5D, der))
        .await
        .unwrap()
        .into_inner();
    let (uris, dns) = check_linkerd(dir.path(), &ca, &resp);
    assert_eq!(dns, [WEB_L5D]);
    // linkerd-identity's profile: the DNS name only.
    assert!(uris.is_empty(), "{uris:?}");
    let records = issued(&ca);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].spiffe_id, "spiffe://test.org/ns/default/sa/web");
}

#[tokio::test]
async fn linkerd_adds_the_spiffe_uri_when_configured() {
    let (dir, ca) = setup();
    let mut auth = auth(ca.clone());
    let mut config = mesh_config();
    config.linkerd_spiffe_uri = true;
    auth.config = Arc::new(config);
    let api = LinkerdApi::new(auth);
    let (_, der) = csr_with(&[], &[WEB_L5D]);
    let resp = api
        .certify(linkerd_request("l5d", WEB_L5D, der))
        .await
        .unwrap()
        .into_inner();
    let (uris, dns) = check_linkerd(dir.path(), &ca, &resp);
    assert_eq!(dns, [WEB_L5D]);
    assert_eq!(uris, ["spiffe://test.org/ns/default/sa/web"]);
}

#[tokio::test]
async fn linkerd_refusals_issue_nothing_and_are_audited() {
    let (_dir, ca) = setup();
    let api = LinkerdApi::new(auth(ca.clone()));
    let own = csr_with(&[], &[WEB_L5D]).1;
    let db_name = "db.default.serviceaccount.identity.linkerd.cluster.local";
    let db = csr_with(&[], &[db_name]).1;
    let cases = [
        (
            "forged token",
            linkerd_request("forged", WEB_L5D, own.clone()),
            Code::Unauthenticated,
        ),
        (
            "Istio's audience",
            linkerd_request("web", WEB_L5D, own.clone()),
            Code::Unauthenticated,
        ),
        (
            "identity of another SA",
            linkerd_request("l5d", db_name, db.clone()),
            Code::PermissionDenied,
        ),
        (
            "CSR for another identity",
            linkerd_request("l5d", WEB_L5D, db),
            Code::PermissionDenied,
        ),
        (
            "garbage CSR",
            linkerd_request("l5d", WEB_L5D, vec![0x30, 0x03, 1, 2, 3]),
            Code::InvalidArgument,
        ),
        (
            "CSR without the DNS name",
            linkerd_request("l5d", WEB_L5D, csr_with(&[], &[]).1),
            Code::PermissionDenied,
        ),
        (
            "CSR that also asks for a URI",
            linkerd_request(
                "l5d",
                WEB_L5D,
                csr_with(&["spiffe://test.org/ns/default/sa/web"], &[WEB_L5D]).1,
            ),
            Code::PermissionDenied,
        ),
        (
            "CSR with another common name",
            linkerd_request("l5d", WEB_L5D, csr_named("db", &[WEB_L5D])),
            Code::PermissionDenied,
        ),
    ];
    let n = cases.len();
    for (what, req, code) in cases {
        let err = api.certify(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err:?}");
    }
    assert!(issued(&ca).is_empty());
    let rejected = audit(&ca)
        .into_iter()
        .filter(|r| r.action == super::linkerd::ACTION && r.result == "rejected")
        .count();
    assert_eq!(rejected, n);
}
