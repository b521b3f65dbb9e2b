//! A throwaway CA for the agent's unit tests: a root that signs SVIDs with
//! chosen SPIFFE IDs and DNS names, as signet-ca would.

use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use signet_identity::x509::{
    IssuedCert, SigningAuthority, SigningCaParams, VerifiedCsr, X509SvidParams, issue_x509_svid,
    new_root,
};
use signet_identity::{KeyType, PrivateKey, SpiffeId, TrustBundle, TrustDomain};

pub(crate) struct TestCa {
    pub(crate) authority: SigningAuthority,
    pub(crate) root: CertificateDer<'static>,
    pub(crate) bundle: TrustBundle,
}

impl TestCa {
    pub(crate) fn new(td: &str) -> Self {
        let td = TrustDomain::new(td).unwrap();
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let params = SigningCaParams {
            trust_domain: td.clone(),
            ttl: Duration::from_secs(86400),
            backdate: Duration::from_secs(3600),
        };
        let root = new_root(&params, &key, SystemTime::now()).unwrap();
        let authority = SigningAuthority::new(td.clone(), root.clone(), vec![], key).unwrap();
        let bundle = TrustBundle::new(td)
            .with_x509_authorities([root.clone()])
            .unwrap();
        Self {
            authority,
            root,
            bundle,
        }
    }

    /// A new key and an SVID for it.
    pub(crate) fn issue(&self, id: &str, dns_names: &[&str]) -> (PrivateKey, IssuedCert) {
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let cert = self.issue_for(&key, id, dns_names);
        (key, cert)
    }

    /// An SVID for `key`.
    pub(crate) fn issue_for(&self, key: &PrivateKey, id: &str, dns_names: &[&str]) -> IssuedCert {
        let csr = VerifiedCsr::from_der(&key.csr_der().unwrap()).unwrap();
        let params = X509SvidParams {
            spiffe_id: SpiffeId::parse(id).unwrap(),
            dns_names: dns_names.iter().map(|d| (*d).to_owned()).collect(),
            ttl: Duration::from_secs(3600),
            backdate: Duration::from_secs(60),
        };
        issue_x509_svid(&csr, &params, &self.authority, SystemTime::now()).unwrap()
    }
}
