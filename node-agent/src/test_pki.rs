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

/// A DER X.509 CRL signed by a throwaway CA of its own, revoking `serial`:
/// the agent only carries CRLs, it never checks their signatures.
pub(crate) fn test_crl(serial: u64) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let issuer = rcgen::Issuer::new(params, key);
    let crl = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2026, 1, 1),
        next_update: rcgen::date_time_ymd(2036, 1, 1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from(serial),
            revocation_time: rcgen::date_time_ymd(2026, 1, 2),
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap();
    crl.der().to_vec()
}
