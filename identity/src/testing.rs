//! A throwaway PKI for the tests of the crates built on this one: the root
//! CA of one trust domain, its bundle, and leaf X509-SVIDs issued through
//! the same issuance profile the CA uses ([`issue_x509_svid`]), so that what
//! tests serve looks exactly like what production serves.
//!
//! Compiled only for this crate's tests and with the `test-support` feature,
//! which other crates enable in their `[dev-dependencies]`.

use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;

use crate::bundle::{BundleError, TrustBundle};
use crate::keys::{KeyError, KeyType, PrivateKey};
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::x509::{
    CsrError, IssueError, IssuedCert, SigningAuthority, SigningCaParams, VerifiedCsr,
    X509SvidParams, issue_x509_svid, new_root,
};

/// How long a test root is valid: from [`ROOT_BACKDATE`] ago for this long.
pub const ROOT_TTL: Duration = Duration::from_secs(24 * 3600);
/// How far a test root's notBefore lies in the past, so that tests may
/// issue SVIDs that started (and expire) earlier.
pub const ROOT_BACKDATE: Duration = Duration::from_secs(3600);

/// Why the test PKI could not make something.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TestPkiError {
    #[error("key: {0}")]
    Key(#[from] KeyError),
    #[error("csr: {0}")]
    Csr(#[from] CsrError),
    #[error("issuing: {0}")]
    Issue(#[from] IssueError),
    #[error("bundle: {0}")]
    Bundle(#[from] BundleError),
}

/// A self-signed P-256 root of one trust domain that signs SVIDs itself.
pub struct TestCa {
    authority: SigningAuthority,
    root: CertificateDer<'static>,
    bundle: TrustBundle,
}

/// A leaf X509-SVID with its private key.
pub struct TestSvid {
    pub spiffe_id: SpiffeId,
    /// The leaf (no intermediates: the root signs directly).
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKey,
    /// Lowercase hex, as [`crate::x509::IssuedCert::serial_hex`].
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl TestCa {
    /// A new root for `trust_domain`, valid from an hour ago for a day, and
    /// a bundle holding just that root.
    ///
    /// # Errors
    /// When a key cannot be made or the root cannot be signed.
    pub fn new(trust_domain: TrustDomain) -> Result<Self, TestPkiError> {
        let key = PrivateKey::generate(KeyType::EcdsaP256)?;
        let params = SigningCaParams {
            trust_domain: trust_domain.clone(),
            ttl: ROOT_TTL,
            backdate: ROOT_BACKDATE,
        };
        let root = new_root(&params, &key, SystemTime::now())?;
        let bundle =
            TrustBundle::new(trust_domain.clone()).with_x509_authorities([root.clone()])?;
        let authority = SigningAuthority::new(trust_domain, root.clone(), vec![], key)?;
        Ok(Self {
            authority,
            root,
            bundle,
        })
    }

    /// The trust domain.
    #[must_use]
    pub fn trust_domain(&self) -> &TrustDomain {
        self.authority.trust_domain()
    }

    /// The root certificate.
    #[must_use]
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// The bundle: the root, sequence 0, no JWT authorities.
    #[must_use]
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// The root as a signing authority, for tests that issue by hand.
    #[must_use]
    pub fn authority(&self) -> &SigningAuthority {
        &self.authority
    }

    /// An SVID for `spiffe_id` with a new P-256 key, valid from `not_before`
    /// for `ttl` (within the root's lifetime).
    ///
    /// # Errors
    /// As [`issue_x509_svid`], e.g. an ID of another trust domain or a
    /// validity outside the root's.
    pub fn issue(
        &self,
        spiffe_id: &SpiffeId,
        not_before: SystemTime,
        ttl: Duration,
    ) -> Result<TestSvid, TestPkiError> {
        let key = PrivateKey::generate(KeyType::EcdsaP256)?;
        let issued = self.issue_for(&key, spiffe_id, &[], not_before, ttl)?;
        Ok(TestSvid {
            spiffe_id: spiffe_id.clone(),
            serial: issued.serial_hex(),
            chain: issued.chain,
            key,
            not_before: issued.not_before,
            not_after: issued.not_after,
        })
    }

    /// An SVID for `key` (made elsewhere, e.g. by the code under test) with
    /// `dns_names` beside the SPIFFE ID, valid from `not_before` for `ttl`.
    ///
    /// # Errors
    /// As [`issue_x509_svid`]; a DNS name the issuance profile refuses.
    pub fn issue_for(
        &self,
        key: &PrivateKey,
        spiffe_id: &SpiffeId,
        dns_names: &[&str],
        not_before: SystemTime,
        ttl: Duration,
    ) -> Result<IssuedCert, TestPkiError> {
        let csr = VerifiedCsr::from_der(&key.csr_der()?)?;
        let params = X509SvidParams {
            spiffe_id: spiffe_id.clone(),
            dns_names: dns_names.iter().map(|d| (*d).to_owned()).collect(),
            ttl,
            backdate: Duration::ZERO,
        };
        Ok(issue_x509_svid(&csr, &params, &self.authority, not_before)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x509::verify_x509_svid;

    #[test]
    fn issued_svids_verify_against_the_bundle() {
        let td = TrustDomain::new("example.org").unwrap();
        let ca = TestCa::new(td.clone()).unwrap();
        assert_eq!(ca.bundle().x509_authorities(), [ca.root().clone()]);
        let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
        let start = SystemTime::now() - Duration::from_secs(30);
        let svid = ca.issue(&id, start, Duration::from_secs(600)).unwrap();
        assert_eq!(svid.not_after, svid.not_before + Duration::from_secs(600));
        assert_eq!(svid.chain.len(), 1);
        let verified = verify_x509_svid(&svid.chain, ca.bundle(), SystemTime::now()).unwrap();
        assert_eq!(verified.spiffe_id, id);

        let other = SpiffeId::parse("spiffe://other.org/web").unwrap();
        assert!(matches!(
            ca.issue(&other, start, Duration::from_secs(600)),
            Err(TestPkiError::Issue(IssueError::WrongTrustDomain { .. }))
        ));
    }
}
