//! The node's own identity: attestation with a join token on first start,
//! the node SVID and key kept in the data directory (0600) so that a restart
//! needs no new token, and renewal before it expires.

pub mod client;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, bail};
use rustls_pki_types::CertificateDer;
use signet_identity::fsutil::{ensure_private_dir, write_atomic};
use signet_identity::x509::chain_to_pem;
use signet_identity::{KeyType, PrivateKey, SpiffeId, TrustBundle, TrustDomain};
use signet_proto::ca::v1 as pb;
use signet_proto::convert::bundle_from_pb;
use x509_parser::prelude::{FromDer, X509Certificate};

use client::{CaClient, ClientIdentity};

/// The node SVID with its key.
pub struct NodeSvid {
    pub spiffe_id: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKey,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
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

fn paths(data_dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let dir = data_dir.join("node");
    (
        dir.join("svid.pem"),
        dir.join("svid_key.pem"),
        dir.join("bundle.pem"),
    )
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
pub fn certs_from_pem(text: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    Ok(pem::parse_many(text)?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect())
}

/// Validity of a leaf.
fn validity(der: &[u8]) -> anyhow::Result<(SystemTime, SystemTime)> {
    let (_, cert) = X509Certificate::from_der(der).context("parsing the node SVID")?;
    Ok((
        SystemTime::from(cert.validity().not_before.to_datetime()),
        SystemTime::from(cert.validity().not_after.to_datetime()),
    ))
}

/// Builds a node SVID from the CA's answer.
fn from_response(svid: Option<pb::X509Svid>, key: PrivateKey) -> anyhow::Result<NodeSvid> {
    let svid = svid.context("the CA returned no SVID")?;
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let leaf = chain.first().context("the CA returned an empty chain")?;
    let (not_before, not_after) = validity(leaf)?;
    let (_, parsed) = X509Certificate::from_der(leaf)?;
    if parsed.public_key().raw != key.public_key_spki().as_slice() {
        bail!("the CA returned a certificate for another key");
    }
    Ok(NodeSvid {
        spiffe_id: SpiffeId::parse(&svid.spiffe_id)?,
        chain,
        key,
        not_before,
        not_after,
    })
}

/// Loads the node SVID and bundle kept from an earlier run.
///
/// # Errors
/// Files that exist but are unreadable or inconsistent.
pub fn load(data_dir: &Path, td: &TrustDomain) -> anyhow::Result<Option<(NodeSvid, TrustBundle)>> {
    let (svid_path, key_path, bundle_path) = paths(data_dir);
    if !svid_path.exists() {
        return Ok(None);
    }
    let chain = certs_from_pem(&std::fs::read(&svid_path)?)?;
    let key = PrivateKey::from_pem(
        &std::fs::read_to_string(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?,
    )?;
    let bundle = TrustBundle::from_pem(
        td.clone(),
        &std::fs::read(&bundle_path)
            .with_context(|| format!("reading {}", bundle_path.display()))?,
    )?;
    let leaf = chain.first().context("empty node SVID file")?;
    let (not_before, not_after) = validity(leaf)?;
    let report = signet_identity::x509::check_certificate(leaf).map_err(anyhow::Error::msg)?;
    let spiffe_id = report
        .spiffe_id
        .context("the stored node SVID has no SPIFFE ID")?;
    Ok(Some((
        NodeSvid {
            spiffe_id,
            chain,
            key,
            not_before,
            not_after,
        },
        bundle,
    )))
}

/// Persists the node SVID (key 0600) and bundle.
///
/// # Errors
/// I/O errors.
pub fn save(data_dir: &Path, svid: &NodeSvid, bundle: &TrustBundle) -> anyhow::Result<()> {
    ensure_private_dir(data_dir)?;
    ensure_private_dir(&data_dir.join("node"))?;
    let (svid_path, key_path, bundle_path) = paths(data_dir);
    write_atomic(&key_path, svid.key.to_pem().as_bytes(), 0o600)?;
    write_atomic(&svid_path, chain_to_pem(&svid.chain).as_bytes(), 0o644)?;
    write_atomic(&bundle_path, bundle.to_pem().as_bytes(), 0o644)?;
    Ok(())
}

/// Attests the node with a join token.
///
/// # Errors
/// The CA's refusal (e.g. a used token) or an unusable answer.
pub async fn attest(client: &CaClient, token: &str) -> anyhow::Result<(NodeSvid, TrustBundle)> {
    let key = PrivateKey::generate(KeyType::EcdsaP256)?;
    let csr = key.csr_der()?;
    let resp = client
        .node()
        .attest_node(pb::AttestNodeRequest {
            join_token: token.to_owned(),
            csr,
        })
        .await
        .map_err(|s| anyhow::anyhow!("node attestation refused: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let bundle = bundle_from_pb(&resp.bundle.context("the CA returned no bundle")?)?;
    let svid = from_response(resp.svid, key)?;
    signet_identity::x509::verify_x509_svid(&svid.chain, &bundle, SystemTime::now())
        .context("the node SVID does not verify against the CA's bundle")?;
    Ok((svid, bundle))
}

/// Renews the node SVID over mTLS with the current one.
///
/// # Errors
/// The CA's refusal or an unusable answer.
pub async fn renew(client: &CaClient) -> anyhow::Result<NodeSvid> {
    let key = PrivateKey::generate(KeyType::EcdsaP256)?;
    let csr = key.csr_der()?;
    let resp = client
        .node()
        .renew_node_svid(pb::RenewNodeSvidRequest { csr })
        .await
        .map_err(|s| anyhow::anyhow!("node SVID renewal refused: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    from_response(resp.svid, key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
