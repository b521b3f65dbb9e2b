//! The agent's unit tests' view of the shared test PKI
//! (`signet_identity::testing`): a root that signs SVIDs with chosen SPIFFE
//! IDs and DNS names, as signet-ca would, with the fields these tests read.

use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use signet_identity::x509::IssuedCert;
use signet_identity::{KeyType, PrivateKey, SpiffeId, TrustBundle, TrustDomain};

/// How long the SVIDs of these tests live, from a minute ago.
const SVID_TTL: Duration = Duration::from_secs(3600);
const SVID_BACKDATE: Duration = Duration::from_secs(60);

pub(crate) struct TestCa {
    inner: signet_identity::testing::TestCa,
    pub(crate) root: CertificateDer<'static>,
    pub(crate) bundle: TrustBundle,
}

impl TestCa {
    pub(crate) fn new(td: &str) -> Self {
        let inner = signet_identity::testing::TestCa::new(TrustDomain::new(td).unwrap()).unwrap();
        Self {
            root: inner.root().clone(),
            bundle: inner.bundle().clone(),
            inner,
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
        self.inner
            .issue_for(
                key,
                &SpiffeId::parse(id).unwrap(),
                dns_names,
                SystemTime::now() - SVID_BACKDATE,
                SVID_TTL + SVID_BACKDATE,
            )
            .unwrap()
    }
}
