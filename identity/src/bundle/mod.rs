//! Trust bundles: the keys of one trust domain's authorities, in the two forms
//! Signet reads and writes. The SPIFFE bundle is a JWK Set (section 4 of the
//! SPIFFE Trust Domain and Bundle standard) carrying X.509 and JWT authorities;
//! the PEM form is a plain list of X.509 CA certificates.
//!
//! Every authority in a [`TrustBundle`] was parsed when it was added and has a
//! key type the JWK Set form can express. That is why [`TrustBundle::to_jwks`]
//! cannot fail and why [`TrustBundle::from_jwks`] reads back exactly what it
//! wrote.
//!
//! A bundle names no trust domain of its own: the caller says which trust
//! domain it expects, as the standard requires (section 3).

mod der;
pub mod federated;
#[cfg(test)]
mod fixtures;
mod jwk;
mod jwks;
mod pem;

use std::fmt;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer};

use crate::spiffe_id::TrustDomain;
use jwk::JwkKey;
use pem::PEM_BEGIN;

/// The largest bundle, in bytes, that the parsers accept. Real bundles hold a
/// handful of keys; anything near this size is a mistake or an attack.
pub const MAX_BUNDLE_LEN: usize = 1024 * 1024;

/// Why bytes are not a trust bundle, or an authority cannot join one.
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum BundleError {
    #[error("bundle is {len} bytes long; the limit is {MAX_BUNDLE_LEN}")]
    TooLarge { len: usize },
    #[error("bundle is neither PEM nor a JWK set")]
    UnknownFormat,
    #[error("bundle is not valid JSON: {reason}")]
    Json { reason: String },
    #[error("bundle is not a JSON object")]
    NotAnObject,
    #[error("bundle has no \"keys\" array")]
    MissingKeys,
    #[error("\"spiffe_sequence\" must be a non-negative integer")]
    BadSequence,
    #[error("\"spiffe_refresh_hint\" must be a non-negative integer number of seconds")]
    BadRefreshHint,
    #[error("key {index}: {error}")]
    InKey {
        index: usize,
        error: Box<BundleError>,
    },
    #[error("key is not a JSON object")]
    KeyNotAnObject,
    #[error("key has no {member:?} member")]
    MissingMember { member: &'static str },
    #[error("key member {member:?} has the wrong JSON type")]
    BadMember { member: &'static str },
    #[error("key member {member:?} is not valid base64")]
    BadBase64 { member: &'static str },
    #[error("\"x5c\" must hold exactly one certificate, found {count}")]
    X5cCount { count: usize },
    #[error("key members do not match the public key of the certificate in \"x5c\"")]
    X5cKeyMismatch,
    #[error("jwt authority has no key id (\"kid\")")]
    MissingKeyId,
    #[error("jwt authority key id {kid:?} is used by two different keys")]
    DuplicateKeyId { kid: String },
    #[error("bundle is not valid PEM: {reason}")]
    Pem { reason: String },
    #[error("PEM block {label:?} is not a CERTIFICATE")]
    UnexpectedPemBlock { label: String },
    #[error("bundle holds no certificates")]
    NoCertificates,
    #[error("certificate is not valid DER: {reason}")]
    BadCertificate { reason: String },
    #[error("certificate is followed by {len} bytes that are not part of it")]
    TrailingData { len: usize },
    #[error("public key is not valid: {reason}")]
    BadPublicKey { reason: String },
    #[error("public key type {algorithm} is not supported")]
    UnsupportedKeyType { algorithm: String },
}

/// The authorities of one trust domain: X.509 CA certificates that sign
/// X.509-SVIDs and public keys that sign JWT-SVIDs, with the publishing
/// metadata of the SPIFFE bundle format.
#[derive(Clone, PartialEq, Eq)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    x509_authorities: Vec<CertificateDer<'static>>,
    // The public key of the certificate at the same index, parsed once so that
    // writing the JWK Set cannot fail.
    x509_keys: Vec<JwkKey>,
    jwt_authorities: Vec<JwtAuthority>,
    sequence: u64,
    refresh_hint: Option<Duration>,
}

impl TrustBundle {
    /// An empty bundle for `trust_domain`, with sequence number 0 and no
    /// refresh hint.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            x509_authorities: Vec::new(),
            x509_keys: Vec::new(),
            jwt_authorities: Vec::new(),
            sequence: 0,
            refresh_hint: None,
        }
    }

    /// The trust domain whose authorities these are.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The X.509 authorities (CA certificates), in the order they were added.
    pub fn x509_authorities(&self) -> &[CertificateDer<'static>] {
        &self.x509_authorities
    }

    /// The JWT authorities, in the order they were added.
    pub fn jwt_authorities(&self) -> &[JwtAuthority] {
        &self.jwt_authorities
    }

    /// The JWT authority with key id `key_id`, if there is one.
    pub fn jwt_authority(&self, key_id: &str) -> Option<&JwtAuthority> {
        self.jwt_authorities.iter().find(|a| a.key_id == key_id)
    }

    /// Whether the bundle holds no authority at all, and so trusts nothing.
    pub fn is_empty(&self) -> bool {
        self.x509_authorities.is_empty() && self.jwt_authorities.is_empty()
    }

    /// The bundle's sequence number (`spiffe_sequence`).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// How often consumers should fetch the bundle again (`spiffe_refresh_hint`).
    pub fn refresh_hint(&self) -> Option<Duration> {
        self.refresh_hint
    }

    /// Sets the sequence number. The standard asks publishers to increase it
    /// whenever the contents change.
    pub fn set_sequence(&mut self, sequence: u64) {
        self.sequence = sequence;
    }

    /// Sets or clears the refresh hint. The bundle format counts in whole
    /// seconds, so a fraction is rounded up: a hint never becomes shorter.
    pub fn set_refresh_hint(&mut self, hint: Option<Duration>) {
        self.refresh_hint = hint.map(|d| {
            let round_up = u64::from(d.subsec_nanos() > 0);
            Duration::from_secs(d.as_secs().saturating_add(round_up))
        });
    }

    /// Adds every certificate in `certs` as an X.509 authority; see
    /// [`TrustBundle::add_x509_authority`].
    ///
    /// # Errors
    /// The error for the first certificate that cannot be added.
    pub fn with_x509_authorities(
        mut self,
        certs: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<Self, BundleError> {
        for cert in certs {
            self.add_x509_authority(cert)?;
        }
        Ok(self)
    }

    /// Adds a CA certificate as an X.509 authority. Returns `false`, and
    /// changes nothing, if the bundle already holds the identical DER.
    ///
    /// # Errors
    /// [`BundleError::BadCertificate`] or [`BundleError::TrailingData`] if the
    /// DER is not exactly one certificate, [`BundleError::BadPublicKey`] or
    /// [`BundleError::UnsupportedKeyType`] if its key cannot be written as a
    /// JWK (RSA, EC P-256/P-384/P-521 and Ed25519 can).
    pub fn add_x509_authority(
        &mut self,
        cert: CertificateDer<'static>,
    ) -> Result<bool, BundleError> {
        if self.x509_authorities.contains(&cert) {
            return Ok(false);
        }
        let key = JwkKey::from_certificate(&cert)?;
        self.x509_authorities.push(cert);
        self.x509_keys.push(key);
        Ok(true)
    }

    /// Removes an X.509 authority; returns whether it was there.
    pub fn remove_x509_authority(&mut self, cert: &CertificateDer<'_>) -> bool {
        let Some(index) = self.x509_authorities.iter().position(|c| c == cert) else {
            return false;
        };
        self.x509_authorities.remove(index);
        self.x509_keys.remove(index);
        true
    }

    /// Adds a JWT authority. Returns `false`, and changes nothing, if the
    /// bundle already holds the same key under the same key id.
    ///
    /// # Errors
    /// [`BundleError::DuplicateKeyId`] if the key id is already used by a
    /// different key: a JWT names its key by id, so the id must be unique.
    pub fn add_jwt_authority(&mut self, authority: JwtAuthority) -> Result<bool, BundleError> {
        match self.jwt_authority(&authority.key_id) {
            Some(existing) if existing.public_key == authority.public_key => Ok(false),
            Some(_) => Err(BundleError::DuplicateKeyId {
                kid: authority.key_id,
            }),
            None => {
                self.jwt_authorities.push(authority);
                Ok(true)
            }
        }
    }

    /// Removes the JWT authority with key id `key_id` and returns it.
    pub fn remove_jwt_authority(&mut self, key_id: &str) -> Option<JwtAuthority> {
        let index = self
            .jwt_authorities
            .iter()
            .position(|a| a.key_id == key_id)?;
        Some(self.jwt_authorities.remove(index))
    }

    /// Reads a bundle in either form: a JWK Set if the first non-blank byte is
    /// `{`, PEM if the input contains a `-----BEGIN ` line.
    ///
    /// # Errors
    /// [`BundleError::UnknownFormat`] if it is neither, otherwise as
    /// [`TrustBundle::from_jwks`] or [`TrustBundle::from_pem`].
    pub fn parse(trust_domain: TrustDomain, bytes: &[u8]) -> Result<Self, BundleError> {
        check_size(bytes)?;
        if bytes.trim_ascii_start().starts_with(b"{") {
            Self::from_jwks(trust_domain, bytes)
        } else if count_occurrences(bytes, PEM_BEGIN) > 0 {
            Self::from_pem(trust_domain, bytes)
        } else {
            Err(BundleError::UnknownFormat)
        }
    }
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain.as_str())
            .field("x509_authorities", &self.x509_authorities.len())
            .field("jwt_authorities", &self.jwt_authorities)
            .field("sequence", &self.sequence)
            .field("refresh_hint", &self.refresh_hint)
            .finish()
    }
}

/// A public key that signs JWT-SVIDs, named by its key id.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtAuthority {
    key_id: String,
    public_key: SubjectPublicKeyInfoDer<'static>,
    // Parsed from `public_key` once, so that writing the JWK cannot fail.
    key: JwkKey,
    expires_at: Option<i64>,
}

impl JwtAuthority {
    /// A JWT authority with key id `key_id` and the DER SubjectPublicKeyInfo
    /// `public_key`. The key is kept in canonical DER form, re-encoded from its
    /// parameters, so that it survives a trip through the JWK Set unchanged.
    ///
    /// # Errors
    /// [`BundleError::MissingKeyId`] for an empty key id,
    /// [`BundleError::BadPublicKey`] or [`BundleError::UnsupportedKeyType`] for
    /// a key that is not RSA, EC P-256/P-384/P-521 or Ed25519.
    pub fn new(key_id: impl Into<String>, public_key: &[u8]) -> Result<Self, BundleError> {
        Self::from_key(key_id.into(), JwkKey::from_spki_der(public_key)?)
    }

    fn from_key(key_id: String, key: JwkKey) -> Result<Self, BundleError> {
        if key_id.is_empty() {
            return Err(BundleError::MissingKeyId);
        }
        Ok(Self {
            key_id,
            public_key: SubjectPublicKeyInfoDer::from(key.to_spki_der()),
            key,
            expires_at: None,
        })
    }

    /// Records when the key stops being valid, in seconds since the Unix
    /// epoch. The JWK Set form does not carry it.
    #[must_use]
    pub fn with_expires_at(mut self, unix_seconds: i64) -> Self {
        self.expires_at = Some(unix_seconds);
        self
    }

    /// The key id (`kid`) that JWT-SVIDs name in their header.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key as DER SubjectPublicKeyInfo.
    pub fn public_key(&self) -> &SubjectPublicKeyInfoDer<'static> {
        &self.public_key
    }

    /// When the key stops being valid, in seconds since the Unix epoch.
    pub fn expires_at(&self) -> Option<i64> {
        self.expires_at
    }
}

impl fmt::Debug for JwtAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthority")
            .field("key_id", &self.key_id)
            .field("key_type", &self.key.describe())
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

fn check_size(bytes: &[u8]) -> Result<(), BundleError> {
    if bytes.len() > MAX_BUNDLE_LEN {
        return Err(BundleError::TooLarge { len: bytes.len() });
    }
    Ok(())
}

fn count_occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

#[cfg(test)]
mod tests {
    use super::jwk::{Curve, OID_EC_PUBLIC_KEY};
    use super::*;
    use crate::bundle::fixtures::*;

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let mut big = b"{\"keys\": []}".to_vec();
        big.resize(MAX_BUNDLE_LEN + 1, b' ');
        let want = Err(BundleError::TooLarge {
            len: MAX_BUNDLE_LEN + 1,
        });
        assert_eq!(TrustBundle::from_jwks(td(), &big), want);
        assert_eq!(TrustBundle::parse(td(), &big), want);
        assert_eq!(TrustBundle::from_pem(td(), &big), want);
        big.truncate(MAX_BUNDLE_LEN);
        assert!(TrustBundle::from_jwks(td(), &big).is_ok());
    }

    #[test]
    fn parse_sniffs_the_format() {
        assert_eq!(
            TrustBundle::parse(td(), b""),
            Err(BundleError::UnknownFormat)
        );
        assert_eq!(
            TrustBundle::parse(td(), b"hello"),
            Err(BundleError::UnknownFormat)
        );
        let empty = TrustBundle::parse(td(), b" \n\t{\"keys\": []}").unwrap();
        assert!(empty.is_empty());
        assert_eq!(
            TrustBundle::parse(td(), b"-----BEGIN CERTIFICATE-----\n"),
            Err(BundleError::Pem {
                reason: "a block has no END line".into()
            })
        );
    }

    #[test]
    fn authorities_are_checked_when_added() {
        let mut bundle = TrustBundle::new(td());
        assert!(matches!(
            bundle.add_x509_authority(CertificateDer::from(vec![0x30, 0x00])),
            Err(BundleError::BadCertificate { .. })
        ));
        let (_, root) = ca(&PKCS_ECDSA_P256_SHA256);
        assert!(bundle.add_x509_authority(root.clone()).unwrap());
        assert!(!bundle.add_x509_authority(root.clone()).unwrap());
        assert_eq!(bundle.x509_authorities().len(), 1);
        assert!(bundle.remove_x509_authority(&root));
        assert!(!bundle.remove_x509_authority(&root));
        assert!(bundle.is_empty());

        let spki = KeyPair::generate().unwrap().subject_public_key_info();
        assert_eq!(JwtAuthority::new("", &spki), Err(BundleError::MissingKeyId));
        assert!(matches!(
            JwtAuthority::new("k", &spki[..spki.len() - 1]),
            Err(BundleError::BadPublicKey { .. })
        ));
        assert!(matches!(
            JwtAuthority::new("k", &[spki.as_slice(), &[0]].concat()),
            Err(BundleError::BadPublicKey { .. })
        ));
        // A DSA key (OID 1.2.840.10040.4.1) has no JWK form.
        let dsa = der::sequence(
            &[
                der::sequence(&der::oid(&[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x01])),
                der::bit_string(&der::unsigned_integer(&[5])),
            ]
            .concat(),
        );
        assert_eq!(
            JwtAuthority::new("k", &dsa),
            Err(BundleError::UnsupportedKeyType {
                algorithm: "1.2.840.10040.4.1".into()
            })
        );
        // A compressed point has no y for the JWK.
        let (x, _) = spki[spki.len() - 64..].split_at(32);
        let compressed = der::sequence(
            &[
                der::sequence(&[der::oid(OID_EC_PUBLIC_KEY), der::oid(Curve::P256.oid())].concat()),
                der::bit_string(&[&[0x02][..], x].concat()),
            ]
            .concat(),
        );
        assert!(matches!(
            JwtAuthority::new("k", &compressed),
            Err(BundleError::BadPublicKey { .. })
        ));

        let jwt = JwtAuthority::new("k", &spki)
            .unwrap()
            .with_expires_at(1_900_000_000);
        assert_eq!(jwt.key_id(), "k");
        assert_eq!(jwt.public_key().as_ref(), spki.as_slice());
        assert_eq!(jwt.expires_at(), Some(1_900_000_000));
        assert!(bundle.add_jwt_authority(jwt.clone()).unwrap());
        assert!(!bundle.add_jwt_authority(jwt.clone()).unwrap());
        assert_eq!(bundle.jwt_authority("k"), Some(&jwt));
        assert_eq!(bundle.remove_jwt_authority("k"), Some(jwt));
        assert_eq!(bundle.remove_jwt_authority("k"), None);
    }

    #[test]
    fn refresh_hint_is_whole_seconds() {
        let mut bundle = TrustBundle::new(td());
        bundle.set_refresh_hint(Some(Duration::from_millis(1500)));
        assert_eq!(bundle.refresh_hint(), Some(Duration::from_secs(2)));
        bundle.set_refresh_hint(Some(Duration::from_millis(1)));
        assert_eq!(bundle.refresh_hint(), Some(Duration::from_secs(1)));
        bundle.set_refresh_hint(None);
        assert_eq!(bundle.refresh_hint(), None);
        assert!(jwks_value(&bundle).get("spiffe_refresh_hint").is_none());
    }

    #[test]
    fn debug_is_short() {
        let (bundle, _keys) = sample();
        let shown = format!("{bundle:?}");
        assert!(shown.contains("x509_authorities: 2"), "{shown}");
        assert!(shown.contains("key_id: \"key-1\""), "{shown}");
        assert!(shown.contains("EC P-256"), "{shown}");
        assert!(shown.len() < 400, "{shown}");
    }

    #[test]
    fn messages_are_lowercase() {
        let errors = [
            BundleError::TooLarge { len: 1 },
            BundleError::UnknownFormat,
            BundleError::NotAnObject,
            BundleError::MissingKeys,
            BundleError::BadSequence,
            BundleError::BadRefreshHint,
            BundleError::KeyNotAnObject,
            BundleError::MissingMember { member: "kty" },
            BundleError::X5cCount { count: 2 },
            BundleError::X5cKeyMismatch,
            BundleError::MissingKeyId,
            BundleError::NoCertificates,
            BundleError::TrailingData { len: 1 },
            BundleError::InKey {
                index: 0,
                error: Box::new(BundleError::MissingKeyId),
            },
        ];
        for error in errors {
            let message = error.to_string();
            assert!(
                message.starts_with(|c: char| c.is_lowercase() || c == '"'),
                "{message}"
            );
        }
        assert_eq!(
            BundleError::InKey {
                index: 3,
                error: Box::new(BundleError::X5cCount { count: 2 })
            }
            .to_string(),
            "key 3: \"x5c\" must hold exactly one certificate, found 2"
        );
    }
}
