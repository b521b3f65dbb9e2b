//! The X.509-SVID issuance profile. The CA decides every field of every
//! certificate it signs; a CSR contributes only its (verified) public key.

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    SubjectPublicKeyInfo,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::csr::VerifiedCsr;
use crate::keys::{KeyType, PrivateKey};
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// Default backdating of notBefore, to absorb clock skew between machines.
pub const DEFAULT_BACKDATE: Duration = Duration::from_secs(30);
/// The DN attribute type serialNumber (2.5.4.5), used to keep many roots of
/// one trust domain distinct.
const OID_DN_SERIAL_NUMBER: &[u64] = &[2, 5, 4, 5];

/// Why a certificate could not be issued.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// The SPIFFE ID is not in the signing authority's trust domain.
    #[error("spiffe id {id} is not in trust domain {trust_domain}")]
    WrongTrustDomain {
        /// The requested ID.
        id: String,
        /// The authority's trust domain.
        trust_domain: String,
    },
    /// A leaf SVID needs a SPIFFE ID with a path.
    #[error("spiffe id {0} has no path; a workload SVID needs one")]
    EmptyPath(String),
    /// A DNS name is not a valid host name.
    #[error("invalid dns name {0:?}")]
    InvalidDnsName(String),
    /// The signing authority has expired, or expires before the certificate would start.
    #[error("signing authority is not valid at the requested time")]
    AuthorityExpired,
    /// A leaf named by DNS names alone needs at least one.
    #[error("a dns-named leaf needs at least one dns name")]
    NoName,
    /// The TTL is zero.
    #[error("ttl must be positive")]
    ZeroTtl,
    /// The signing certificate or key is unusable.
    #[error("signing authority is unusable: {0}")]
    Authority(String),
    /// rcgen or ring failed to build or sign the certificate.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// What the CA decides for one workload (leaf) SVID.
#[derive(Debug, Clone)]
pub struct X509SvidParams {
    /// The identity, from the CA's authorization, never from the CSR.
    pub spiffe_id: SpiffeId,
    /// Optional DNS SANs from the registration entry.
    pub dns_names: Vec<String>,
    /// The lifetime wanted; capped by the signing authority's notAfter.
    pub ttl: Duration,
    /// How far notBefore is moved into the past.
    pub backdate: Duration,
}

/// What the CA decides for a signing (root or intermediate) certificate.
#[derive(Debug, Clone)]
pub struct SigningCaParams {
    /// The trust domain the CA signs for.
    pub trust_domain: TrustDomain,
    /// Lifetime; an intermediate's is capped by its parent's notAfter.
    pub ttl: Duration,
    /// How far notBefore is moved into the past.
    pub backdate: Duration,
}

/// A certificate just issued.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate.
    pub der: CertificateDer<'static>,
    /// The serial number, big-endian, as encoded.
    pub serial: Vec<u8>,
    /// notBefore.
    pub not_before: SystemTime,
    /// notAfter.
    pub not_after: SystemTime,
    /// The certificate followed by the intermediates a peer needs to reach
    /// a root of the bundle (the root itself is not included).
    pub chain: Vec<CertificateDer<'static>>,
}

impl IssuedCert {
    /// The serial number in lowercase hex.
    #[must_use]
    pub fn serial_hex(&self) -> String {
        hex_lower(&self.serial)
    }
}

/// A CA certificate with its private key, able to sign.
pub struct SigningAuthority {
    trust_domain: TrustDomain,
    cert: CertificateDer<'static>,
    upstream: Vec<CertificateDer<'static>>,
    self_signed: bool,
    key: PrivateKey,
    issuer: Issuer<'static, KeyPair>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl fmt::Debug for SigningAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("self_signed", &self.self_signed)
            .field("not_after", &self.not_after)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl SigningAuthority {
    /// Builds an authority from its certificate, the intermediates between it
    /// and the trust anchor (`upstream`, nearest first, anchor excluded), and
    /// its private key.
    ///
    /// # Errors
    /// [`IssueError::Authority`] when the certificate does not parse, is not a
    /// CA, or does not belong to the key.
    pub fn new(
        trust_domain: TrustDomain,
        cert: CertificateDer<'static>,
        upstream: Vec<CertificateDer<'static>>,
        key: PrivateKey,
    ) -> Result<Self, IssueError> {
        let bad = |m: String| IssueError::Authority(m);
        let (rest, parsed) = X509Certificate::from_der(&cert).map_err(|e| bad(e.to_string()))?;
        if !rest.is_empty() {
            return Err(bad("trailing data after the certificate".into()));
        }
        if !parsed.is_ca() {
            return Err(bad("certificate is not a CA".into()));
        }
        if parsed.public_key().raw != key.public_key_spki().as_slice() {
            return Err(bad("private key does not match the certificate".into()));
        }
        // A signing certificate that names a trust domain must name this one.
        if let Some(id) = super::rules::check_parsed(&parsed).spiffe_id
            && !id.is_member_of(&trust_domain)
        {
            return Err(bad(format!(
                "certificate belongs to {}, not {trust_domain}",
                id.trust_domain()
            )));
        }
        let self_signed = parsed.subject().as_raw() == parsed.issuer().as_raw();
        let mut not_before = to_system_time(parsed.validity().not_before.to_datetime());
        let mut not_after = to_system_time(parsed.validity().not_after.to_datetime());
        for up in &upstream {
            let (_, p) =
                X509Certificate::from_der(up).map_err(|e| bad(format!("upstream: {e}")))?;
            not_before = not_before.max(to_system_time(p.validity().not_before.to_datetime()));
            not_after = not_after.min(to_system_time(p.validity().not_after.to_datetime()));
        }
        let pair = KeyPair::try_from(key.pkcs8_der()).map_err(|e| bad(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_der(&cert, pair).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            trust_domain,
            cert,
            upstream,
            self_signed,
            key,
            issuer,
            not_before,
            not_after,
        })
    }

    /// The trust domain.
    #[must_use]
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The signing certificate.
    #[must_use]
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The intermediates above the signing certificate (anchor excluded).
    #[must_use]
    pub fn upstream(&self) -> &[CertificateDer<'static>] {
        &self.upstream
    }

    /// The private key.
    #[must_use]
    pub fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// The end of the authority's validity: the earliest notAfter on its chain.
    #[must_use]
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The start of the authority's validity: the latest notBefore on its chain.
    #[must_use]
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// Certificates a peer needs after a leaf signed by this authority.
    #[must_use]
    pub fn served_chain(&self) -> Vec<CertificateDer<'static>> {
        if self.self_signed {
            Vec::new()
        } else {
            std::iter::once(self.cert.clone())
                .chain(self.upstream.iter().cloned())
                .collect()
        }
    }

    /// Signs a throwaway SVID with this authority and verifies it against
    /// `anchors`, so that a new key is only trusted once it demonstrably works.
    ///
    /// # Errors
    /// [`IssueError::Authority`] describing what failed.
    pub fn self_test(
        &self,
        anchors: &[CertificateDer<'static>],
        now: SystemTime,
    ) -> Result<(), IssueError> {
        let probe = PrivateKey::generate(KeyType::EcdsaP256)
            .map_err(|e| IssueError::Authority(e.to_string()))?;
        let csr = probe
            .csr_der()
            .map_err(|e| IssueError::Authority(e.to_string()))?;
        let csr = VerifiedCsr::from_der(&csr).map_err(|e| IssueError::Authority(e.to_string()))?;
        let id = SpiffeId::from_segments(&self.trust_domain, &["signet", "self-test"])
            .map_err(|e| IssueError::Authority(e.to_string()))?;
        let params = X509SvidParams {
            spiffe_id: id.clone(),
            dns_names: Vec::new(),
            ttl: Duration::from_secs(60),
            backdate: DEFAULT_BACKDATE,
        };
        let issued = issue_x509_svid(&csr, &params, self, now)?;
        let bundle = crate::bundle::TrustBundle::new(self.trust_domain.clone())
            .with_x509_authorities(anchors.to_vec())
            .map_err(|e| IssueError::Authority(format!("trust anchors: {e}")))?;
        let verified = super::verify::verify_x509_svid(&issued.chain, &bundle, now)
            .map_err(|e| IssueError::Authority(format!("self-test svid does not verify: {e}")))?;
        if verified.spiffe_id != id {
            return Err(IssueError::Authority(
                "self-test svid has the wrong identity".into(),
            ));
        }
        Ok(())
    }
}

/// Signs an X.509-SVID for `csr`'s public key under `authority`.
///
/// Leaf profile: exactly one URI SAN (the SPIFFE ID) plus optional DNS SANs,
/// empty subject (so the SAN is critical), BasicConstraints CA:false and
/// KeyUsage digitalSignature (+keyEncipherment for RSA), both critical, EKU
/// serverAuth and clientAuth, SKI and AKI, a 128-bit random serial.
///
/// # Errors
/// See [`IssueError`]; nothing is signed when an error is returned.
pub fn issue_x509_svid(
    csr: &VerifiedCsr,
    params: &X509SvidParams,
    authority: &SigningAuthority,
    now: SystemTime,
) -> Result<IssuedCert, IssueError> {
    if !params.spiffe_id.is_member_of(&authority.trust_domain) {
        return Err(IssueError::WrongTrustDomain {
            id: params.spiffe_id.to_string(),
            trust_domain: authority.trust_domain.to_string(),
        });
    }
    if params.spiffe_id.path().is_empty() {
        return Err(IssueError::EmptyPath(params.spiffe_id.to_string()));
    }
    let mut cert = leaf_template(csr);
    cert.subject_alt_names
        .push(SanType::URI(ia5(params.spiffe_id.as_str())?));
    for name in &params.dns_names {
        validate_dns_name(name)?;
        cert.subject_alt_names.push(SanType::DnsName(ia5(name)?));
    }
    let public_key = SubjectPublicKeyInfo::from_der(csr.public_key_spki())
        .map_err(|e| IssueError::Sign(e.to_string()))?;
    sign(
        cert,
        &public_key,
        authority,
        params.ttl,
        params.backdate,
        now,
    )
}

/// Signs a TLS leaf that names its holder by DNS names only, with no SPIFFE
/// ID: the profile of meshes that identify workloads by DNS-style names
/// (Linkerd). Same key usages, lifetime rules and chain as
/// [`issue_x509_svid`]; the subject's CN is the first name, as in the
/// certificates linkerd-identity issues.
///
/// # Errors
/// [`IssueError::NoName`] without a name, [`IssueError::InvalidDnsName`],
/// and as [`issue_x509_svid`]; nothing is signed when an error is returned.
pub fn issue_dns_leaf(
    csr: &VerifiedCsr,
    dns_names: &[String],
    ttl: Duration,
    backdate: Duration,
    authority: &SigningAuthority,
    now: SystemTime,
) -> Result<IssuedCert, IssueError> {
    let first = dns_names.first().ok_or(IssueError::NoName)?;
    let mut cert = leaf_template(csr);
    for name in dns_names {
        validate_dns_name(name)?;
        cert.subject_alt_names.push(SanType::DnsName(ia5(name)?));
    }
    cert.distinguished_name
        .push(DnType::CommonName, first.as_str());
    let public_key = SubjectPublicKeyInfo::from_der(csr.public_key_spki())
        .map_err(|e| IssueError::Sign(e.to_string()))?;
    sign(cert, &public_key, authority, ttl, backdate, now)
}

/// What every leaf shares: empty subject, CA:false, digitalSignature
/// (+keyEncipherment for RSA), serverAuth and clientAuth.
fn leaf_template(csr: &VerifiedCsr) -> CertificateParams {
    let mut cert = CertificateParams::default();
    cert.distinguished_name = DistinguishedName::new();
    cert.is_ca = IsCa::ExplicitNoCa;
    cert.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if csr.key_type().is_rsa() {
        cert.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    cert.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    cert
}

/// Creates a self-signed root for `params.trust_domain` with `key`.
///
/// # Errors
/// See [`IssueError`].
pub fn new_root(
    params: &SigningCaParams,
    key: &PrivateKey,
    now: SystemTime,
) -> Result<CertificateDer<'static>, IssueError> {
    if params.ttl.is_zero() {
        return Err(IssueError::ZeroTtl);
    }
    let mut cert = signing_ca_template(&params.trust_domain, "root CA")?;
    cert.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let start = now.checked_sub(params.backdate).unwrap_or(now);
    cert.not_before = OffsetDateTime::from(start);
    cert.not_after = OffsetDateTime::from(now + params.ttl);
    cert.serial_number = Some(random_serial()?);
    let signed = cert
        .self_signed(key.key_pair())
        .map_err(|e| IssueError::Sign(e.to_string()))?;
    Ok(signed.der().clone())
}

/// Creates an intermediate (signing) CA for `key` under `parent`.
///
/// # Errors
/// See [`IssueError`].
pub fn new_intermediate(
    params: &SigningCaParams,
    key: &PrivateKey,
    parent: &SigningAuthority,
    now: SystemTime,
) -> Result<IssuedCert, IssueError> {
    let mut cert = signing_ca_template(&params.trust_domain, "signing CA")?;
    cert.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    sign(
        cert,
        key.key_pair(),
        parent,
        params.ttl,
        params.backdate,
        now,
    )
}

fn signing_ca_template(td: &TrustDomain, role: &str) -> Result<CertificateParams, IssueError> {
    let mut cert = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Signet");
    dn.push(DnType::CommonName, format!("{td} {role}"));
    let unique = hex_lower(&random_bytes::<16>()?);
    let printable = unique
        .try_into()
        .map_err(|e: rcgen::Error| IssueError::Sign(e.to_string()))?;
    dn.push(
        DnType::from_oid(OID_DN_SERIAL_NUMBER),
        DnValue::PrintableString(printable),
    );
    cert.distinguished_name = dn;
    cert.subject_alt_names
        .push(SanType::URI(ia5(&td.id_string())?));
    cert.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    cert.use_authority_key_identifier_extension = true;
    Ok(cert)
}

fn sign(
    mut cert: CertificateParams,
    public_key: &impl rcgen::PublicKeyData,
    authority: &SigningAuthority,
    ttl: Duration,
    backdate: Duration,
    now: SystemTime,
) -> Result<IssuedCert, IssueError> {
    if ttl.is_zero() {
        return Err(IssueError::ZeroTtl);
    }
    let not_before = now
        .checked_sub(backdate)
        .unwrap_or(now)
        .max(authority.not_before);
    let not_after = (now + ttl).min(authority.not_after);
    if not_after <= now || not_after <= not_before {
        return Err(IssueError::AuthorityExpired);
    }
    // Truncate to whole seconds: X.509 time has no fractions, and the times
    // reported to callers must match the certificate exactly.
    let not_before = whole_seconds(not_before);
    let not_after = whole_seconds(not_after);
    cert.not_before = OffsetDateTime::from(not_before);
    cert.not_after = OffsetDateTime::from(not_after);
    cert.use_authority_key_identifier_extension = true;
    let serial = random_serial()?;
    cert.serial_number = Some(serial.clone());
    let signed = cert
        .signed_by(public_key, &authority.issuer)
        .map_err(|e| IssueError::Sign(e.to_string()))?;
    let der = signed.der().clone();
    let mut chain = vec![der.clone()];
    chain.extend(authority.served_chain());
    Ok(IssuedCert {
        der,
        serial: canonical_serial(&serial.to_bytes()),
        not_before,
        not_after,
        chain,
    })
}

/// A random, positive, 128-bit serial.
fn random_serial() -> Result<SerialNumber, IssueError> {
    let mut bytes = random_bytes::<16>()?;
    // Never let the value be zero or encode shorter than needed for uniqueness.
    if bytes[0] == 0 {
        bytes[0] = 1;
    }
    Ok(SerialNumber::from_slice(&bytes))
}

/// The serial as a DER INTEGER would carry it, without the sign byte.
fn canonical_serial(bytes: &[u8]) -> Vec<u8> {
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    bytes[first..].to_vec()
}

fn random_bytes<const N: usize>() -> Result<[u8; N], IssueError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| IssueError::Sign("system random generator failed".into()))?;
    Ok(bytes)
}

fn ia5(s: &str) -> Result<rcgen::string::Ia5String, IssueError> {
    s.try_into()
        .map_err(|e: rcgen::Error| IssueError::Sign(e.to_string()))
}

fn whole_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

fn to_system_time(t: OffsetDateTime) -> SystemTime {
    SystemTime::from(t)
}

pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Checks that `name` is a DNS host name (optionally with a leading `*.`
/// wildcard label), as allowed in an SVID's DNS SANs.
///
/// # Errors
/// [`IssueError::InvalidDnsName`].
pub fn validate_dns_name(name: &str) -> Result<(), IssueError> {
    let invalid = || IssueError::InvalidDnsName(name.to_owned());
    let host = name.strip_prefix("*.").unwrap_or(name);
    if host.is_empty() || name.len() > 253 {
        return Err(invalid());
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(invalid());
        }
    }
    Ok(())
}

#[cfg(test)]
mod dns_leaf_tests {
    use super::*;
    use crate::testing::TestCa;
    use x509_parser::prelude::GeneralName;

    const NAME: &str = "web.default.serviceaccount.identity.linkerd.cluster.local";

    #[test]
    fn a_dns_leaf_names_its_holder_by_dns_alone() {
        let ca = TestCa::new(TrustDomain::new("example.org").unwrap()).unwrap();
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let csr = VerifiedCsr::from_der(&key.csr_der().unwrap()).unwrap();
        let ttl = Duration::from_secs(600);
        let now = SystemTime::now();
        let issue = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            issue_dns_leaf(&csr, &names, ttl, Duration::ZERO, ca.authority(), now)
        };
        let leaf = issue(&[NAME]).unwrap();
        let (_, cert) = X509Certificate::from_der(&leaf.der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names, [GeneralName::DNSName(NAME)]);
        let cn: Vec<&str> = cert
            .subject()
            .iter_common_name()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(cn, [NAME]);
        assert!(!cert.is_ca());
        assert_eq!(leaf.chain.first(), Some(&leaf.der));
        for (names, want) in [
            (&[][..], IssueError::NoName),
            (
                &["not a name"][..],
                IssueError::InvalidDnsName("not a name".into()),
            ),
        ] {
            assert_eq!(issue(names).unwrap_err(), want, "{names:?}");
        }
    }
}
