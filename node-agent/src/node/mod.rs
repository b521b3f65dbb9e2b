//! The node's own identity: attestation with a join token on first start,
//! the node SVID and key kept in the data directory (0600) so that a restart
//! needs no new token, and renewal before it expires.
//!
//! The key and its certificate chain live in one file, `node/identity.pem`,
//! replaced by one rename: a crash leaves either the old pair or the new one,
//! never a key with another key's certificate. Older agents kept them in two
//! files (`svid_key.pem`, `svid.pem`) renamed one after the other; [`load`]
//! takes such a pair over when it is consistent and reports it unusable when
//! a crash left it mixed, so that the agent attests again instead of failing
//! every TLS handshake.

pub mod addresses;
pub mod client;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use signet_identity::fsutil::{ensure_private_dir, write_atomic};
use signet_identity::x509::SvidError;
use signet_identity::{
    BundleError, KeyError, KeyType, PrivateKey, SpiffeId, SpiffeIdError, TrustBundle, TrustDomain,
};
use signet_proto::ca::v1 as pb;
use x509_parser::prelude::{FromDer, X509Certificate};

use client::{CaClient, ClientIdentity};

/// What can go wrong with the node's own identity.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A file of the data directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// PEM text that does not parse.
    #[error("{what}: not PEM: {source}")]
    Pem {
        what: &'static str,
        #[source]
        source: pem::PemError,
    },
    /// A key that cannot be generated or loaded.
    #[error("node key: {0}")]
    Key(#[from] KeyError),
    /// A bundle that does not parse.
    #[error("trust bundle: {0}")]
    Bundle(#[from] BundleError),
    /// A bundle message from the CA that does not convert.
    #[error("trust bundle from the CA: {0}")]
    BundleMessage(#[from] signet_proto::convert::BundleMessageError),
    /// A SPIFFE ID that does not parse.
    #[error("SPIFFE ID: {0}")]
    SpiffeId(#[from] SpiffeIdError),
    /// A certificate that does not parse.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The CA said no.
    #[error("{what} refused: {code:?}: {message}")]
    Refused {
        what: &'static str,
        code: tonic::Code,
        message: String,
    },
    /// The CA's answer lacks a part.
    #[error("the CA returned no {0}")]
    Missing(&'static str),
    /// The certificate is for a key other than the one generated here.
    #[error("the certificate is for another key than the one generated here")]
    WrongKey,
    /// The certificate does not verify against the bundle.
    #[error("the node SVID does not verify against the bundle: {0}")]
    Verify(#[from] SvidError),
    /// The stored node SVID names no SPIFFE ID.
    #[error("the stored node SVID has no SPIFFE ID")]
    NoSpiffeId,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The node SVID with its key.
pub struct NodeSvid {
    pub spiffe_id: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKey,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When the agent asked for it; for one loaded from disk, when its file
    /// was written (a little later).
    pub requested_at: SystemTime,
}

impl std::fmt::Debug for NodeSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl NodeSvid {
    /// The client identity for TLS.
    pub fn client_identity(&self) -> ClientIdentity {
        ClientIdentity {
            chain: self.chain.clone(),
            key_pkcs8: Arc::new(zeroize::Zeroizing::new(self.key.pkcs8_der().to_vec())),
        }
    }

    /// When to renew: half of the usable lifetime (see [`renew_time`]).
    pub fn renew_at(&self) -> SystemTime {
        renew_time(self.not_before, self.not_after, SystemTime::now(), 0.5)
    }
}

/// Where the node's state lives inside the data directory.
struct Paths {
    dir: PathBuf,
    /// Key and chain together (current format).
    identity: PathBuf,
    bundle: PathBuf,
    /// The two files of the older format.
    old_svid: PathBuf,
    old_key: PathBuf,
}

impl Paths {
    fn new(data_dir: &Path) -> Self {
        let dir = data_dir.join("node");
        Self {
            identity: dir.join("identity.pem"),
            bundle: dir.join("bundle.pem"),
            old_svid: dir.join("svid.pem"),
            old_key: dir.join("svid_key.pem"),
            dir,
        }
    }
}

/// When to renew a certificate: `fraction` of its usable lifetime. The CA
/// backdates notBefore (for clock skew), so with short lifetimes half of
/// notAfter − notBefore may already be over when the certificate arrives;
/// the lifetime therefore counts from when it became usable here: the later
/// of notBefore and `received`.
pub fn renew_time(
    not_before: SystemTime,
    not_after: SystemTime,
    received: SystemTime,
    fraction: f64,
) -> SystemTime {
    let start = not_before.max(received.min(not_after));
    let life = not_after.duration_since(start).unwrap_or_default();
    start + life.mul_f64(fraction)
}

/// Reads certificates from PEM text.
///
/// # Errors
/// Unreadable PEM.
pub fn certs_from_pem(text: &[u8]) -> Result<Vec<CertificateDer<'static>>, NodeError> {
    Ok(pem::parse_many(text)
        .map_err(|source| NodeError::Pem {
            what: "certificates",
            source,
        })?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect())
}

/// Validity of a leaf.
fn validity(der: &[u8]) -> Result<(SystemTime, SystemTime), NodeError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| NodeError::Certificate(e.to_string()))?;
    Ok((
        SystemTime::from(cert.validity().not_before.to_datetime()),
        SystemTime::from(cert.validity().not_after.to_datetime()),
    ))
}

/// Whether `leaf` certifies the public half of `key`.
fn certifies(leaf: &[u8], key: &PrivateKey) -> Result<bool, NodeError> {
    let (_, parsed) =
        X509Certificate::from_der(leaf).map_err(|e| NodeError::Certificate(e.to_string()))?;
    Ok(parsed.public_key().raw == key.public_key_spki().as_slice())
}

/// Builds a node SVID from the CA's answer.
fn from_response(
    svid: Option<pb::X509Svid>,
    key: PrivateKey,
    requested_at: SystemTime,
) -> Result<NodeSvid, NodeError> {
    let svid = svid.ok_or(NodeError::Missing("SVID"))?;
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let leaf = chain
        .first()
        .ok_or(NodeError::Missing("certificate chain"))?;
    let (not_before, not_after) = validity(leaf)?;
    if !certifies(leaf, &key)? {
        return Err(NodeError::WrongKey);
    }
    Ok(NodeSvid {
        spiffe_id: SpiffeId::parse(&svid.spiffe_id)?,
        chain,
        key,
        not_before,
        not_after,
        requested_at,
    })
}

/// A bundle from the wire.
///
/// # Errors
/// Authorities that do not parse.
pub fn bundle_from_pb(b: &pb::Bundle) -> Result<TrustBundle, NodeError> {
    Ok(signet_proto::convert::bundle_from_pb(b)?)
}

/// What the data directory holds from an earlier run.
#[derive(Debug)]
pub enum Stored {
    /// Nothing: first start.
    Nothing,
    /// A consistent node SVID, key and bundle.
    Usable(Box<(NodeSvid, TrustBundle)>),
    /// Something a crash left behind that cannot be used (e.g. a key with
    /// another key's certificate); the node must attest again.
    Unusable(String),
}

/// Loads the node SVID and bundle kept from an earlier run, taking over the
/// older two-file format and removing temporary files a crash left behind.
///
/// # Errors
/// Files that exist but cannot be read.
pub fn load(data_dir: &Path, td: &TrustDomain) -> Result<Stored, NodeError> {
    let p = Paths::new(data_dir);
    remove_leftovers(&p.dir);
    // Key material: wiped from memory when dropped.
    let read = |path: &Path| -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, NodeError> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(zeroize::Zeroizing::new(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(path)(e)),
        }
    };
    let Some(bundle_pem) = read(&p.bundle)? else {
        return Ok(Stored::Nothing);
    };
    let (pair, migrated) = match read(&p.identity)? {
        Some(text) => (split_identity(&text), false),
        None => match (read(&p.old_key)?, read(&p.old_svid)?) {
            (Some(mut both), Some(certs)) => {
                both.extend_from_slice(&certs);
                (split_identity(&both), true)
            }
            (None, None) => return Ok(Stored::Nothing),
            _ => {
                return Ok(Stored::Unusable(
                    "only half of the node's key and certificate are on disk".into(),
                ));
            }
        },
    };
    let (key, chain) = match pair {
        Ok(pair) => pair,
        Err(e) => return Ok(Stored::Unusable(e.to_string())),
    };
    let Some(leaf) = chain.first() else {
        return Ok(Stored::Unusable("no node certificate on disk".into()));
    };
    if !certifies(leaf, &key)? {
        return Ok(Stored::Unusable(
            "the stored node key and certificate do not belong together (interrupted write)".into(),
        ));
    }
    let bundle = TrustBundle::from_pem(td.clone(), &bundle_pem)?;
    let (not_before, not_after) = validity(leaf)?;
    let spiffe_id = signet_identity::x509::check_certificate(leaf)
        .map_err(NodeError::Certificate)?
        .spiffe_id
        .ok_or(NodeError::NoSpiffeId)?;
    let written = if migrated { &p.old_svid } else { &p.identity };
    let requested_at = std::fs::metadata(written)
        .and_then(|m| m.modified())
        .unwrap_or(not_before);
    let svid = NodeSvid {
        spiffe_id,
        chain,
        key,
        not_before,
        not_after,
        requested_at,
    };
    if migrated {
        save_identity(&p, &svid)?;
        tracing::info!(file = %p.identity.display(), "moved the node key and certificate into one file");
    }
    // Also after a crash between writing the new file and removing these.
    for old in [&p.old_svid, &p.old_key] {
        match std::fs::remove_file(old) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(file = %old.display(), error = %e, "could not remove a file of the old format");
            }
            _ => {}
        }
    }
    Ok(Stored::Usable(Box::new((svid, bundle))))
}

/// The key and the chain (leaf first) of an identity file.
fn split_identity(text: &[u8]) -> Result<(PrivateKey, Vec<CertificateDer<'static>>), NodeError> {
    let blocks = pem::parse_many(text).map_err(|source| NodeError::Pem {
        what: "node identity",
        source,
    })?;
    let mut key = None;
    let mut chain = Vec::new();
    for b in blocks {
        match b.tag() {
            "CERTIFICATE" => chain.push(CertificateDer::from(b.into_contents())),
            tag if tag.ends_with("PRIVATE KEY") && key.is_none() => {
                let text = zeroize::Zeroizing::new(pem::encode(&b));
                key = Some(PrivateKey::from_pem(&text)?);
            }
            _ => {}
        }
    }
    Ok((key.ok_or(NodeError::Missing("node key on disk"))?, chain))
}

/// Temporary files of writes a crash interrupted.
fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(".tmp-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn save_identity(p: &Paths, svid: &NodeSvid) -> Result<(), NodeError> {
    let mut text = zeroize::Zeroizing::new(String::from(svid.key.to_pem().as_str()));
    text.push_str(&signet_identity::x509::chain_to_pem(&svid.chain));
    write_atomic(&p.identity, text.as_bytes(), 0o600).map_err(io_err(&p.identity))
}

/// Persists the node SVID with its key (one file, 0600) and the bundle.
///
/// # Errors
/// I/O errors.
pub fn save(data_dir: &Path, svid: &NodeSvid, bundle: &TrustBundle) -> Result<(), NodeError> {
    ensure_private_dir(data_dir).map_err(io_err(data_dir))?;
    let p = Paths::new(data_dir);
    ensure_private_dir(&p.dir).map_err(io_err(&p.dir))?;
    save_identity(&p, svid)?;
    write_atomic(&p.bundle, bundle.to_pem().as_bytes(), 0o644).map_err(io_err(&p.bundle))
}

/// What the node proves itself with.
pub enum NodeCredential {
    /// A single-use join token from the CA's admin.
    JoinToken(String),
    /// The agent pod's projected service-account token (k8s_psat).
    K8sPsat(Vec<u8>),
}

impl std::fmt::Debug for NodeCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::JoinToken(_) => f.write_str("JoinToken(<redacted>)"),
            Self::K8sPsat(_) => f.write_str("K8sPsat(<redacted>)"),
        }
    }
}

/// Attests the node with a join token or a projected service-account token.
///
/// # Errors
/// The CA's refusal (e.g. a used token) or an unusable answer.
pub async fn attest(
    client: &CaClient,
    credential: &NodeCredential,
) -> Result<(NodeSvid, TrustBundle), NodeError> {
    let (join_token, k8s_psat_token) = match credential {
        NodeCredential::JoinToken(t) => (t.clone(), Vec::new()),
        NodeCredential::K8sPsat(t) => (String::new(), t.clone()),
    };
    let key = PrivateKey::generate(KeyType::EcdsaP256)?;
    let csr = key.csr_der()?;
    let requested_at = SystemTime::now();
    let resp = client
        .node()
        .attest_node(pb::AttestNodeRequest {
            join_token,
            csr,
            k8s_psat_token,
        })
        .await
        .map_err(|s| NodeError::Refused {
            what: "node attestation",
            code: s.code(),
            message: s.message().to_owned(),
        })?
        .into_inner();
    let bundle = bundle_from_pb(&resp.bundle.ok_or(NodeError::Missing("bundle"))?)?;
    let svid = from_response(resp.svid, key, requested_at)?;
    signet_identity::x509::verify_x509_svid(&svid.chain, &bundle, SystemTime::now())?;
    Ok((svid, bundle))
}

/// Renews the node SVID over mTLS with the current one; the new SVID must
/// verify against `bundle` before it replaces the old one.
///
/// # Errors
/// The CA's refusal or an unusable answer.
pub async fn renew(client: &CaClient, bundle: &TrustBundle) -> Result<NodeSvid, NodeError> {
    let key = PrivateKey::generate(KeyType::EcdsaP256)?;
    let csr = key.csr_der()?;
    let requested_at = SystemTime::now();
    let resp = client
        .node()
        .renew_node_svid(pb::RenewNodeSvidRequest { csr })
        .await
        .map_err(|s| NodeError::Refused {
            what: "node SVID renewal",
            code: s.code(),
            message: s.message().to_owned(),
        })?
        .into_inner();
    let svid = from_response(resp.svid, key, requested_at)?;
    signet_identity::x509::verify::verify_x509_svid_for(
        &svid.chain,
        bundle,
        &svid.spiffe_id,
        SystemTime::now(),
    )?;
    Ok(svid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pki::TestCa;
    use std::time::Duration;

    const NODE: &str = "spiffe://example.org/signet/node/n1";

    fn node_svid(ca: &TestCa) -> NodeSvid {
        let (key, cert) = ca.issue(NODE, &[]);
        NodeSvid {
            spiffe_id: SpiffeId::parse(NODE).unwrap(),
            chain: cert.chain,
            key,
            not_before: cert.not_before,
            not_after: cert.not_after,
            requested_at: SystemTime::now(),
        }
    }

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn usable(stored: Stored) -> (NodeSvid, TrustBundle) {
        match stored {
            Stored::Usable(pair) => *pair,
            other => panic!("not usable: {other:?}"),
        }
    }

    #[test]
    fn key_and_certificate_are_saved_as_one_and_load_back() {
        let ca = TestCa::new("example.org");
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(load(dir.path(), &td()).unwrap(), Stored::Nothing));
        let svid = node_svid(&ca);
        save(dir.path(), &svid, &ca.bundle).unwrap();
        let identity = dir.path().join("node/identity.pem");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(&identity).unwrap().permissions()
            ) & 0o777,
            0o600
        );
        let (loaded, bundle) = usable(load(dir.path(), &td()).unwrap());
        assert_eq!(loaded.chain, svid.chain);
        assert_eq!(loaded.key.pkcs8_der(), svid.key.pkcs8_der());
        assert_eq!(bundle.x509_authorities(), ca.bundle.x509_authorities());
        // Renewal replaces the pair in one step.
        let renewed = node_svid(&ca);
        save(dir.path(), &renewed, &ca.bundle).unwrap();
        let (loaded, _) = usable(load(dir.path(), &td()).unwrap());
        assert_eq!(loaded.chain, renewed.chain);
        assert_eq!(loaded.key.pkcs8_der(), renewed.key.pkcs8_der());
    }

    /// The state the old two-file save left when killed between its renames.
    fn old_format(dir: &Path, key: &PrivateKey, chain: &[CertificateDer<'_>], ca: &TestCa) {
        let node = dir.join("node");
        std::fs::create_dir_all(&node).unwrap();
        std::fs::write(node.join("svid_key.pem"), key.to_pem().as_bytes()).unwrap();
        std::fs::write(
            node.join("svid.pem"),
            signet_identity::x509::chain_to_pem(chain),
        )
        .unwrap();
        std::fs::write(node.join("bundle.pem"), ca.bundle.to_pem()).unwrap();
    }

    #[test]
    fn a_crash_between_key_and_certificate_is_recovered_by_attesting_again() {
        let ca = TestCa::new("example.org");
        let dir = tempfile::tempdir().unwrap();
        let old = node_svid(&ca);
        let new_key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        // New key renamed in, killed before the certificate followed.
        old_format(dir.path(), &new_key, &old.chain, &ca);
        match load(dir.path(), &td()).unwrap() {
            Stored::Unusable(why) => assert!(why.contains("do not belong together"), "{why}"),
            other => panic!("a mixed pair was taken: {other:?}"),
        }
        // Only one of the two files.
        std::fs::remove_file(dir.path().join("node/svid.pem")).unwrap();
        assert!(matches!(
            load(dir.path(), &td()).unwrap(),
            Stored::Unusable(_)
        ));
    }

    #[test]
    fn the_one_file_wins_over_old_files_a_crashed_migration_left() {
        let ca = TestCa::new("example.org");
        let dir = tempfile::tempdir().unwrap();
        let old = node_svid(&ca);
        old_format(dir.path(), &old.key, &old.chain, &ca);
        let current = node_svid(&ca);
        save(dir.path(), &current, &ca.bundle).unwrap();
        let (loaded, _) = usable(load(dir.path(), &td()).unwrap());
        assert_eq!(loaded.key.pkcs8_der(), current.key.pkcs8_der());
        assert!(!dir.path().join("node/svid_key.pem").exists());
        assert!(!dir.path().join("node/svid.pem").exists());
    }

    #[test]
    fn a_consistent_old_pair_is_taken_over_and_leftovers_removed() {
        let ca = TestCa::new("example.org");
        let dir = tempfile::tempdir().unwrap();
        let old = node_svid(&ca);
        old_format(dir.path(), &old.key, &old.chain, &ca);
        let leftover = dir.path().join("node/.identity.pem.tmp-0123");
        std::fs::write(&leftover, b"half a key").unwrap();
        let (loaded, _) = usable(load(dir.path(), &td()).unwrap());
        assert_eq!(loaded.chain, old.chain);
        assert!(dir.path().join("node/identity.pem").exists());
        assert!(!dir.path().join("node/svid_key.pem").exists());
        assert!(!dir.path().join("node/svid.pem").exists());
        assert!(!leftover.exists());
        let (again, _) = usable(load(dir.path(), &td()).unwrap());
        assert_eq!(again.key.pkcs8_der(), old.key.pkcs8_der());
    }

    #[test]
    fn renewal_counts_from_arrival_not_from_the_backdated_start() {
        let now = SystemTime::now();
        // 30 s TTL, backdated 30 s: half of the whole span is "now".
        let at = renew_time(
            now - Duration::from_secs(30),
            now + Duration::from_secs(30),
            now,
            0.5,
        );
        assert_eq!(at, now + Duration::from_secs(15));
        // Loaded from disk long after issuance: never before notBefore.
        let nb = now - Duration::from_secs(100);
        let at = renew_time(
            nb,
            now + Duration::from_secs(100),
            nb - Duration::from_secs(5),
            0.5,
        );
        assert_eq!(at, now);
    }
}
