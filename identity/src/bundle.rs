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

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use serde_json::{Map, Value};
use x509_parser::asn1_rs::{Class, Oid, Tag};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::RSAPublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::spiffe_id::TrustDomain;

/// The largest bundle, in bytes, that the parsers accept. Real bundles hold a
/// handful of keys; anything near this size is a mistake or an attack.
pub const MAX_BUNDLE_LEN: usize = 1024 * 1024;

/// The `use` of a JWK that authenticates X.509-SVIDs (X509-SVID standard).
const USE_X509_SVID: &str = "x509-svid";
/// The `use` of a JWK that authenticates JWT-SVIDs (JWT-SVID standard).
const USE_JWT_SVID: &str = "jwt-svid";

const PEM_CERTIFICATE: &str = "CERTIFICATE";
const PEM_BEGIN: &[u8] = b"-----BEGIN ";

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

    /// The X.509 authorities as PEM `CERTIFICATE` blocks. JWT authorities,
    /// the sequence number and the refresh hint have no place in this form.
    pub fn to_pem(&self) -> String {
        let blocks: Vec<pem::Pem> = self
            .x509_authorities
            .iter()
            .map(|cert| pem::Pem::new(PEM_CERTIFICATE, cert.to_vec()))
            .collect();
        let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
        pem::encode_many_config(&blocks, config)
    }

    /// Reads X.509 authorities from PEM. Every block must be a `CERTIFICATE`
    /// holding exactly one certificate; text between blocks is ignored, as
    /// RFC 7468 allows. Identical certificates are kept once.
    ///
    /// # Errors
    /// [`BundleError::TooLarge`], [`BundleError::Pem`] for broken or
    /// unterminated blocks, [`BundleError::UnexpectedPemBlock`],
    /// [`BundleError::NoCertificates`], or the error from
    /// [`TrustBundle::add_x509_authority`].
    pub fn from_pem(trust_domain: TrustDomain, bytes: &[u8]) -> Result<Self, BundleError> {
        check_size(bytes)?;
        let blocks = pem::parse_many(bytes).map_err(|e| BundleError::Pem {
            reason: e.to_string(),
        })?;
        // The PEM parser stops quietly at a block with no END line; a truncated
        // file must not pass as a shorter bundle.
        if count_occurrences(bytes, PEM_BEGIN) != blocks.len() {
            return Err(BundleError::Pem {
                reason: "a block has no END line".into(),
            });
        }
        let mut bundle = Self::new(trust_domain);
        for block in blocks {
            if block.tag() != PEM_CERTIFICATE {
                return Err(BundleError::UnexpectedPemBlock {
                    label: block.tag().chars().take(64).collect(),
                });
            }
            bundle.add_x509_authority(CertificateDer::from(block.into_contents()))?;
        }
        if bundle.x509_authorities.is_empty() {
            return Err(BundleError::NoCertificates);
        }
        Ok(bundle)
    }

    /// The bundle as a SPIFFE bundle: a pretty-printed JWK Set with
    /// `spiffe_sequence`, `spiffe_refresh_hint` if set, and one key per
    /// authority. An X.509 authority is written with `use: "x509-svid"`, its
    /// certificate as the only `x5c` entry and the certificate's public key as
    /// JWK members; a JWT authority with `use: "jwt-svid"` and its `kid`.
    /// Expiry times of JWT authorities are not part of the format.
    pub fn to_jwks(&self) -> String {
        let mut keys = Vec::with_capacity(self.x509_authorities.len() + self.jwt_authorities.len());
        for (cert, key) in self.x509_authorities.iter().zip(&self.x509_keys) {
            let mut jwk = Map::new();
            jwk.insert("use".into(), USE_X509_SVID.into());
            key.write_members(&mut jwk);
            jwk.insert(
                "x5c".into(),
                Value::Array(vec![STANDARD.encode(cert).into()]),
            );
            keys.push(Value::Object(jwk));
        }
        for authority in &self.jwt_authorities {
            let mut jwk = Map::new();
            jwk.insert("use".into(), USE_JWT_SVID.into());
            jwk.insert("kid".into(), authority.key_id.clone().into());
            authority.key.write_members(&mut jwk);
            keys.push(Value::Object(jwk));
        }
        let mut set = Map::new();
        set.insert("keys".into(), Value::Array(keys));
        set.insert("spiffe_sequence".into(), self.sequence.into());
        if let Some(hint) = self.refresh_hint {
            set.insert("spiffe_refresh_hint".into(), hint.as_secs().into());
        }
        format!("{:#}", Value::Object(set))
    }

    /// Reads a SPIFFE bundle (a JWK Set). As the standard requires, keys with
    /// an unknown `use` or `kty` (or curve) are skipped, and so are unknown
    /// members. An `x509-svid` key must carry exactly one certificate in `x5c`
    /// whose public key matches the key's members; a `jwt-svid` key must have
    /// a `kid`. Identical X.509 authorities are kept once. A set with no usable
    /// key gives an empty bundle, which trusts nothing.
    ///
    /// # Errors
    /// [`BundleError::TooLarge`], [`BundleError::Json`],
    /// [`BundleError::NotAnObject`], [`BundleError::MissingKeys`],
    /// [`BundleError::BadSequence`], [`BundleError::BadRefreshHint`], or
    /// [`BundleError::InKey`] naming the first key that is malformed.
    pub fn from_jwks(trust_domain: TrustDomain, bytes: &[u8]) -> Result<Self, BundleError> {
        check_size(bytes)?;
        let document: Value = serde_json::from_slice(bytes).map_err(|e| BundleError::Json {
            reason: e.to_string(),
        })?;
        let set = document.as_object().ok_or(BundleError::NotAnObject)?;
        let keys = set
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(BundleError::MissingKeys)?;
        let mut bundle = Self::new(trust_domain);
        if let Some(sequence) = set.get("spiffe_sequence") {
            bundle.sequence = sequence.as_u64().ok_or(BundleError::BadSequence)?;
        }
        if let Some(hint) = set.get("spiffe_refresh_hint") {
            let seconds = hint.as_u64().ok_or(BundleError::BadRefreshHint)?;
            bundle.refresh_hint = Some(Duration::from_secs(seconds));
        }
        for (index, key) in keys.iter().enumerate() {
            bundle.read_jwk(key).map_err(|error| BundleError::InKey {
                index,
                error: Box::new(error),
            })?;
        }
        Ok(bundle)
    }

    fn read_jwk(&mut self, key: &Value) -> Result<(), BundleError> {
        let jwk = key.as_object().ok_or(BundleError::KeyNotAnObject)?;
        let key_use =
            string_member(jwk, "use")?.ok_or(BundleError::MissingMember { member: "use" })?;
        if key_use != USE_X509_SVID && key_use != USE_JWT_SVID {
            return Ok(());
        }
        let Some(key) = JwkKey::from_members(jwk)? else {
            return Ok(());
        };
        if key_use == USE_X509_SVID {
            let cert = single_x5c(jwk)?;
            if JwkKey::from_certificate(&cert)? != key {
                return Err(BundleError::X5cKeyMismatch);
            }
            self.add_x509_authority(cert)?;
        } else {
            let key_id = string_member(jwk, "kid")?.ok_or(BundleError::MissingKeyId)?;
            self.add_jwt_authority(JwtAuthority::from_key(key_id.to_owned(), key)?)?;
        }
        Ok(())
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

fn string_member<'a>(
    jwk: &'a Map<String, Value>,
    member: &'static str,
) -> Result<Option<&'a str>, BundleError> {
    match jwk.get(member) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(BundleError::BadMember { member }),
    }
}

fn base64url_member(
    jwk: &Map<String, Value>,
    member: &'static str,
) -> Result<Vec<u8>, BundleError> {
    let text = string_member(jwk, member)?.ok_or(BundleError::MissingMember { member })?;
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| BundleError::BadBase64 { member })
}

fn single_x5c(jwk: &Map<String, Value>) -> Result<CertificateDer<'static>, BundleError> {
    const MEMBER: &str = "x5c";
    let chain = match jwk.get(MEMBER) {
        None => return Err(BundleError::MissingMember { member: MEMBER }),
        Some(Value::Array(chain)) => chain,
        Some(_) => return Err(BundleError::BadMember { member: MEMBER }),
    };
    let [entry] = chain.as_slice() else {
        return Err(BundleError::X5cCount { count: chain.len() });
    };
    let text = entry
        .as_str()
        .ok_or(BundleError::BadMember { member: MEMBER })?;
    let der = STANDARD
        .decode(text)
        .map_err(|_| BundleError::BadBase64 { member: MEMBER })?;
    Ok(CertificateDer::from(der))
}

/// The elliptic curves a JWK can name and this module can re-encode.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    const ALL: [Self; 3] = [Self::P256, Self::P384, Self::P521];

    /// The JWK `crv` name (RFC 7518 section 6.2.1.1).
    fn name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
            Self::P521 => "P-521",
        }
    }

    /// The contents of the named-curve OID (RFC 5480).
    fn oid(self) -> &'static [u8] {
        match self {
            Self::P256 => &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            Self::P384 => &[0x2b, 0x81, 0x04, 0x00, 0x22],
            Self::P521 => &[0x2b, 0x81, 0x04, 0x00, 0x23],
        }
    }

    /// The size in bytes of one coordinate, which the JWK must use in full.
    fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
            Self::P521 => 66,
        }
    }
}

/// OID contents of the key algorithms (RFC 3279, RFC 5480, RFC 8410).
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

const ED25519_KEY_LEN: usize = 32;

/// A public key in the terms of a JWK (RFC 7518 section 6, RFC 8037). Byte
/// strings are big-endian; RSA integers carry no leading zeros.
#[derive(Clone, PartialEq, Eq, Debug)]
enum JwkKey {
    Ec {
        curve: Curve,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Ed25519 {
        x: Vec<u8>,
    },
}

impl JwkKey {
    fn from_certificate(der: &[u8]) -> Result<Self, BundleError> {
        let (rest, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| BundleError::BadCertificate {
                reason: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(BundleError::TrailingData { len: rest.len() });
        }
        Self::from_spki(cert.public_key())
    }

    fn from_spki_der(der: &[u8]) -> Result<Self, BundleError> {
        let (rest, spki) =
            SubjectPublicKeyInfo::from_der(der).map_err(|e| bad_key(e.to_string()))?;
        if !rest.is_empty() {
            return Err(bad_key("trailing bytes after the SubjectPublicKeyInfo"));
        }
        Self::from_spki(&spki)
    }

    fn from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<Self, BundleError> {
        if spki.subject_public_key.unused_bits != 0 {
            return Err(bad_key("public key bit string has unused bits"));
        }
        let bits: &[u8] = &spki.subject_public_key.data;
        let params = spki.algorithm.parameters.as_ref();
        match spki.algorithm.algorithm.as_bytes() {
            OID_EC_PUBLIC_KEY => {
                let named = params
                    .filter(|p| p.tag() == Tag::Oid && p.class() == Class::Universal)
                    .ok_or_else(|| bad_key("EC key does not name its curve"))?;
                let curve = Curve::ALL
                    .into_iter()
                    .find(|c| c.oid() == named.data)
                    .ok_or_else(|| BundleError::UnsupportedKeyType {
                        algorithm: format!("EC curve {}", oid_string(named.data)),
                    })?;
                let len = curve.coordinate_len();
                // Only the uncompressed form (SEC 1 section 2.3.3) carries y,
                // which the JWK needs.
                match bits.split_first() {
                    Some((0x04, point)) if point.len() == 2 * len => {
                        let (x, y) = point.split_at(len);
                        Ok(Self::Ec {
                            curve,
                            x: x.to_vec(),
                            y: y.to_vec(),
                        })
                    }
                    _ => Err(bad_key(format!(
                        "EC key is not an uncompressed {} point",
                        curve.name()
                    ))),
                }
            }
            OID_RSA_ENCRYPTION => {
                // RFC 3279 says NULL; tolerate the absent form some encoders use.
                if params.is_some_and(|p| p.tag() != Tag::Null || !p.data.is_empty()) {
                    return Err(bad_key("RSA key has parameters"));
                }
                let (rest, rsa) =
                    RSAPublicKey::from_der(bits).map_err(|e| bad_key(e.to_string()))?;
                if !rest.is_empty() {
                    return Err(bad_key("trailing bytes after the RSA key"));
                }
                Ok(Self::Rsa {
                    n: positive_der_integer(rsa.modulus, "RSA modulus")?,
                    e: positive_der_integer(rsa.exponent, "RSA exponent")?,
                })
            }
            OID_ED25519 => {
                if params.is_some() {
                    return Err(bad_key("Ed25519 key has parameters"));
                }
                if bits.len() != ED25519_KEY_LEN {
                    return Err(bad_key("Ed25519 key is not 32 bytes"));
                }
                Ok(Self::Ed25519 { x: bits.to_vec() })
            }
            _ => Err(BundleError::UnsupportedKeyType {
                algorithm: spki.algorithm.algorithm.to_id_string(),
            }),
        }
    }

    /// Reads the key members of a JWK. `None` means a key type or curve this
    /// module does not know, which the standard says to skip.
    fn from_members(jwk: &Map<String, Value>) -> Result<Option<Self>, BundleError> {
        let kty = string_member(jwk, "kty")?.ok_or(BundleError::MissingMember { member: "kty" })?;
        match kty {
            "EC" => {
                let crv = string_member(jwk, "crv")?
                    .ok_or(BundleError::MissingMember { member: "crv" })?;
                let Some(curve) = Curve::ALL.into_iter().find(|c| c.name() == crv) else {
                    return Ok(None);
                };
                let x = base64url_member(jwk, "x")?;
                let y = base64url_member(jwk, "y")?;
                let len = curve.coordinate_len();
                if x.len() != len || y.len() != len {
                    return Err(bad_key(format!(
                        "{} coordinates must be {len} bytes each",
                        curve.name()
                    )));
                }
                Ok(Some(Self::Ec { curve, x, y }))
            }
            "RSA" => {
                let n = base64url_member(jwk, "n")?;
                let e = base64url_member(jwk, "e")?;
                Ok(Some(Self::Rsa {
                    n: positive_integer(&n, "RSA modulus")?,
                    e: positive_integer(&e, "RSA exponent")?,
                }))
            }
            "OKP" => {
                let crv = string_member(jwk, "crv")?
                    .ok_or(BundleError::MissingMember { member: "crv" })?;
                if crv != "Ed25519" {
                    return Ok(None);
                }
                let x = base64url_member(jwk, "x")?;
                if x.len() != ED25519_KEY_LEN {
                    return Err(bad_key("Ed25519 key is not 32 bytes"));
                }
                Ok(Some(Self::Ed25519 { x }))
            }
            _ => Ok(None),
        }
    }

    fn write_members(&self, jwk: &mut Map<String, Value>) {
        let mut put = |member: &str, value: String| {
            jwk.insert(member.into(), Value::String(value));
        };
        match self {
            Self::Ec { curve, x, y } => {
                put("kty", "EC".into());
                put("crv", curve.name().into());
                put("x", URL_SAFE_NO_PAD.encode(x));
                put("y", URL_SAFE_NO_PAD.encode(y));
            }
            Self::Rsa { n, e } => {
                put("kty", "RSA".into());
                put("n", URL_SAFE_NO_PAD.encode(n));
                put("e", URL_SAFE_NO_PAD.encode(e));
            }
            Self::Ed25519 { x } => {
                put("kty", "OKP".into());
                put("crv", "Ed25519".into());
                put("x", URL_SAFE_NO_PAD.encode(x));
            }
        }
    }

    /// The DER SubjectPublicKeyInfo (RFC 5280 section 4.1) of the key.
    fn to_spki_der(&self) -> Vec<u8> {
        let (algorithm, key) = match self {
            Self::Ec { curve, x, y } => (
                [der::oid(OID_EC_PUBLIC_KEY), der::oid(curve.oid())].concat(),
                [&[0x04][..], x, y].concat(),
            ),
            Self::Rsa { n, e } => (
                [der::oid(OID_RSA_ENCRYPTION), der::null()].concat(),
                der::sequence(&[der::unsigned_integer(n), der::unsigned_integer(e)].concat()),
            ),
            Self::Ed25519 { x } => (der::oid(OID_ED25519), x.clone()),
        };
        der::sequence(&[der::sequence(&algorithm), der::bit_string(&key)].concat())
    }

    fn describe(&self) -> String {
        match self {
            Self::Ec { curve, .. } => format!("EC {}", curve.name()),
            Self::Rsa { n, .. } => format!("RSA {}", n.len() * 8),
            Self::Ed25519 { .. } => "Ed25519".into(),
        }
    }
}

fn bad_key(reason: impl Into<String>) -> BundleError {
    BundleError::BadPublicKey {
        reason: reason.into(),
    }
}

/// The contents of a DER INTEGER as a magnitude without leading zeros; see
/// [`positive_integer`].
fn positive_der_integer(contents: &[u8], what: &str) -> Result<Vec<u8>, BundleError> {
    if contents.first().is_some_and(|b| b & 0x80 != 0) {
        return Err(bad_key(format!("{what} is negative")));
    }
    positive_integer(contents, what)
}

/// An unsigned big-endian integer without its leading zeros; zero is refused
/// since no key uses it.
fn positive_integer(bytes: &[u8], what: &str) -> Result<Vec<u8>, BundleError> {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    if start == bytes.len() {
        return Err(bad_key(format!("{what} is zero")));
    }
    Ok(bytes[start..].to_vec())
}

fn oid_string(contents: &[u8]) -> String {
    Oid::new(contents.into()).to_id_string()
}

/// Just enough DER to write a SubjectPublicKeyInfo (X.690 section 8 and 10).
mod der {
    const INTEGER: u8 = 0x02;
    const BIT_STRING: u8 = 0x03;
    const NULL: u8 = 0x05;
    const OID: u8 = 0x06;
    const SEQUENCE: u8 = 0x30;

    fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
        let len = contents.len();
        let mut out = Vec::with_capacity(len + 10);
        out.push(tag);
        match u8::try_from(len) {
            Ok(short) if short < 0x80 => out.push(short),
            _ => {
                let bytes = len.to_be_bytes();
                let first = bytes.iter().position(|b| *b != 0).unwrap_or(0);
                let significant = &bytes[first..];
                out.push(0x80 | significant.len() as u8);
                out.extend_from_slice(significant);
            }
        }
        out.extend_from_slice(contents);
        out
    }

    pub(super) fn sequence(contents: &[u8]) -> Vec<u8> {
        tlv(SEQUENCE, contents)
    }

    pub(super) fn oid(contents: &[u8]) -> Vec<u8> {
        tlv(OID, contents)
    }

    pub(super) fn null() -> Vec<u8> {
        tlv(NULL, &[])
    }

    /// A bit string of whole bytes.
    pub(super) fn bit_string(bytes: &[u8]) -> Vec<u8> {
        tlv(BIT_STRING, &[&[0][..], bytes].concat())
    }

    /// A non-negative INTEGER from its magnitude without leading zeros.
    pub(super) fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
        // A set top bit would read as negative, so a zero byte goes first.
        let pad = magnitude.first().is_none_or(|b| b & 0x80 != 0);
        let contents = if pad {
            [&[0][..], magnitude].concat()
        } else {
            magnitude.to_vec()
        };
        tlv(INTEGER, &contents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rcgen::{
        BasicConstraints, CertificateParams, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256,
        PKCS_ECDSA_P384_SHA384, PKCS_ED25519, PublicKeyData, SignatureAlgorithm,
    };

    /// Made with `openssl req -x509 -newkey rsa:2048`: rcgen cannot make RSA
    /// keys with ring.
    const RSA_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIDFzCCAf+gAwIBAgIUb2ZV85xwmXJQ58VZWe/KlV6HexUwDQYJKoZIhvcNAQEL
BQAwGjEYMBYGA1UECgwPc2lnbmV0LXRlc3QtcnNhMCAXDTI2MTEyNTIwNTc0NloY
DzIxMjYxMTAxMjA1NzQ2WjAaMRgwFgYDVQQKDA9zaWduZXQtdGVzdC1yc2EwggEi
MA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQCoYvvKw5X4uysFlzmCZltK8Bjd
/fR5Drv+cn8hRffx7imVz5crHwDtlvv+Jyucvaiu2r3LbMckJQJJtIPNSTtltjIS
upo4/bG1sU1ItMnXTudYACuqFLEdecrXG/sd4Czpo85DVXZPT0/EWdSswmtz3P/p
CEPz9myH9RehnQD55E7VCGMD7w2WIpe0NQqNdqR4zih4bAwCZUCYskN07UrHoEOH
k9DEY/hSP/JwaEw7dC6pqDdqRrKBTcvW9DfoNwbnZbf/qtoAehpsmOfdak8CpfRl
GbbhYoxHnMdeBDVBYYklzFi8S1IjSb6YQbbyswdVqZUJCvarJ38/sof+5as1AgMB
AAGjUzBRMB0GA1UdDgQWBBRC54BIL2TBRq0H9LD/yKJbV1uHXjAfBgNVHSMEGDAW
gBRC54BIL2TBRq0H9LD/yKJbV1uHXjAPBgNVHRMBAf8EBTADAQH/MA0GCSqGSIb3
DQEBCwUAA4IBAQCRVciUrv18qpjHhnvpcMaQhtkzkUUgFzSuWK8JtMhXDivo7qlN
EvjhIbr06ZNewMuNsNKf7W3LVEzqpNiD3/RtNnaXthD/swFzdvoE4Yc4Ai50WoK8
A4DCDO9QH1NrPDU9yB/91QbtEuxoalvrw13h29/eeenPAW0i3nH/0wlrT/POndIb
VRQbJTEEZQKcRjSggK/3gbKEcR4X8CHj0LqSp9DxgsTtXWV952BeYbhZ5vYxbQGz
7HOjfoXUmAPAP8slKyPxZOELvnt92dcXm2g6S6Qz7RlW7FMid8k3bTGKqnwLXVdT
00AVhlc8+qQ27ZSVQoj3Tm9Ppl0gjhcTOylu
-----END CERTIFICATE-----
";

    /// `openssl x509 -noout -modulus` of [`RSA_CA_PEM`].
    const RSA_CA_MODULUS_HEX: &str = "A862FBCAC395F8BB2B05973982665B4AF018DDFDF4790EBBFE727F2145F7F1EE2995CF972B1F00ED96FBFE272B9CBDA8AEDABDCB6CC724250249B483CD493B65B63212BA9A38FDB1B5B14D48B4C9D74EE758002BAA14B11D79CAD71BFB1DE02CE9A3CE4355764F4F4FC459D4ACC26B73DCFFE90843F3F66C87F517A19D00F9E44ED5086303EF0D962297B4350A8D76A478CE28786C0C02654098B24374ED4AC7A0438793D0C463F8523FF270684C3B742EA9A8376A46B2814DCBD6F437E83706E765B7FFAADA007A1A6C98E7DD6A4F02A5F46519B6E1628C479CC75E043541618925CC58BC4B522349BE9841B6F2B30755A995090AF6AB277F3FB287FEE5AB35";

    /// Made with `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-521`
    /// (ring has no P-521). Its x coordinate starts with a zero byte, which the
    /// JWK must keep.
    const P521_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIICFDCCAXagAwIBAgIUEi8iHJKm6N4FSw14uet/DT8RyYUwCgYIKoZIzj0EAwIw
GzEZMBcGA1UECgwQc2lnbmV0LXRlc3QtcDUyMTAgFw0yNjExMjUyMDU3NDZaGA8y
MTI2MTEwMTIwNTc0NlowGzEZMBcGA1UECgwQc2lnbmV0LXRlc3QtcDUyMTCBmzAQ
BgcqhkjOPQIBBgUrgQQAIwOBhgAEANJXjgDMUKL6U8UOk9QceK7ZEIDxtrI1HvCQ
NJnEBXKW5Y8xgkSYRHidskHCiu4CV5NKtyuYlyoOZf0ntKFqpE5IAdVf64/sgi5F
4r2rNeGSdemaZQR8Y8Bb0j7GdFKIJ8PSjvrd/u9SrdWoJljLxrghuuANzaUhjkjH
3jIpFdI4mFA5o1MwUTAdBgNVHQ4EFgQU4/RPZ70JyM1f4MGCEFZiY/aIEVQwHwYD
VR0jBBgwFoAU4/RPZ70JyM1f4MGCEFZiY/aIEVQwDwYDVR0TAQH/BAUwAwEB/zAK
BggqhkjOPQQDAgOBiwAwgYcCQQ7l0Ftu2O3HZd/hl3YC5ppcB2XQVT6QXva5qypI
w6fn03OvGpu4zNftEJkaJsaQ/RYNMd01rBwwrrXSKzyqjNb3AkIAu4kh0frMV9iN
qG6IPcXY5R6rUg9oOyxzG7HmJtyWrJ4Uzvo81iYzSeMa8A/iw4qYL34OC+Bca8/m
yCk1jclwqG8=
-----END CERTIFICATE-----
";

    /// The public point of [`P521_CA_PEM`] as `openssl ec -pubin -text` shows it.
    const P521_CA_POINT_HEX: &str = "0400d2578e00cc50a2fa53c50e93d41c78aed91080f1b6b2351ef0903499c4057296e58f31824498447\
        89db241c28aee0257934ab72b98972a0e65fd27b4a16aa44e4801d55feb8fec822e45e2bdab35e19275e99a65047c63c05bd23ec674528827\
        c3d28efaddfeef52add5a82658cbc6b821bae00dcda5218e48c7de322915d238985039";

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn hex(text: &str) -> Vec<u8> {
        let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn ca(alg: &'static SignatureAlgorithm) -> (KeyPair, CertificateDer<'static>) {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (key, cert.der().clone())
    }

    fn pem_cert(text: &str) -> CertificateDer<'static> {
        CertificateDer::from(pem::parse(text).unwrap().into_contents())
    }

    fn jwks_value(bundle: &TrustBundle) -> Value {
        serde_json::from_str(&bundle.to_jwks()).unwrap()
    }

    fn decode_url(value: &Value) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(value.as_str().unwrap()).unwrap()
    }

    /// Two P-256 roots and one P-256 JWT key, sequence 7, hint 300 s.
    fn sample() -> (TrustBundle, Vec<KeyPair>) {
        let (key1, root1) = ca(&PKCS_ECDSA_P256_SHA256);
        let (key2, root2) = ca(&PKCS_ECDSA_P256_SHA256);
        let jwt_key = KeyPair::generate().unwrap();
        let mut bundle = TrustBundle::new(td())
            .with_x509_authorities([root1, root2])
            .unwrap();
        let jwt = JwtAuthority::new("key-1", &jwt_key.subject_public_key_info()).unwrap();
        assert!(bundle.add_jwt_authority(jwt).unwrap());
        bundle.set_sequence(7);
        bundle.set_refresh_hint(Some(Duration::from_secs(300)));
        (bundle, vec![key1, key2, jwt_key])
    }

    /// A JWK Set with the given keys, for hand-made inputs.
    fn set_of(keys: Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap()
    }

    fn x509_jwk(cert: &CertificateDer<'_>) -> Value {
        let bundle = TrustBundle::new(td())
            .with_x509_authorities([cert.clone().into_owned()])
            .unwrap();
        jwks_value(&bundle)["keys"][0].clone()
    }

    fn key_error(bytes: &[u8]) -> BundleError {
        match TrustBundle::from_jwks(td(), bytes) {
            Err(BundleError::InKey { error, .. }) => *error,
            other => panic!("expected a key error, got {other:?}"),
        }
    }

    #[test]
    fn jwks_round_trip() {
        let (bundle, _keys) = sample();
        let text = bundle.to_jwks();
        let back = TrustBundle::from_jwks(td(), text.as_bytes()).unwrap();
        assert_eq!(back, bundle);
        assert_eq!(back.x509_authorities().len(), 2);
        assert_eq!(back.jwt_authorities().len(), 1);
        assert_eq!(back.sequence(), 7);
        assert_eq!(back.refresh_hint(), Some(Duration::from_secs(300)));
        assert_eq!(TrustBundle::parse(td(), text.as_bytes()).unwrap(), bundle);
    }

    #[test]
    fn jwks_members_follow_the_standard() {
        let (bundle, keys) = sample();
        let set = jwks_value(&bundle);
        assert_eq!(set["spiffe_sequence"], 7);
        assert_eq!(set["spiffe_refresh_hint"], 300);
        let jwks = set["keys"].as_array().unwrap();
        assert_eq!(jwks.len(), 3);
        for (i, jwk) in jwks.iter().enumerate() {
            assert_eq!(jwk["kty"], "EC");
            assert_eq!(jwk["crv"], "P-256");
            // The coordinates are the key's own uncompressed point.
            let point = [&[0x04][..], &decode_url(&jwk["x"]), &decode_url(&jwk["y"])].concat();
            assert_eq!(point, keys[i].public_key_raw(), "key {i}");
        }
        for (jwk, cert) in jwks.iter().zip(bundle.x509_authorities()) {
            assert_eq!(jwk["use"], "x509-svid");
            let x5c = jwk["x5c"].as_array().unwrap();
            assert_eq!(x5c.len(), 1);
            assert_eq!(
                STANDARD.decode(x5c[0].as_str().unwrap()).unwrap(),
                cert.as_ref()
            );
            assert!(jwk.get("kid").is_none());
        }
        assert_eq!(jwks[2]["use"], "jwt-svid");
        assert_eq!(jwks[2]["kid"], "key-1");
        assert!(jwks[2].get("x5c").is_none());
    }

    #[test]
    fn every_key_type_round_trips() {
        let (p384_key, p384) = ca(&PKCS_ECDSA_P384_SHA384);
        let (ed_key, ed) = ca(&PKCS_ED25519);
        let rsa = pem_cert(RSA_CA_PEM);
        let p521 = pem_cert(P521_CA_PEM);
        let mut bundle = TrustBundle::new(td())
            .with_x509_authorities([p384, ed, rsa, p521])
            .unwrap();
        for (kid, key) in [("p384", &p384_key), ("ed", &ed_key)] {
            let jwt = JwtAuthority::new(kid, &key.subject_public_key_info()).unwrap();
            bundle.add_jwt_authority(jwt).unwrap();
        }
        let set = jwks_value(&bundle);
        let keys = &set["keys"];
        assert_eq!(keys[0]["crv"], "P-384");
        assert_eq!(
            [
                &[0x04][..],
                &decode_url(&keys[0]["x"]),
                &decode_url(&keys[0]["y"])
            ]
            .concat(),
            p384_key.public_key_raw()
        );
        assert_eq!(keys[1]["kty"], "OKP");
        assert_eq!(keys[1]["crv"], "Ed25519");
        assert_eq!(decode_url(&keys[1]["x"]), ed_key.public_key_raw());
        assert_eq!(keys[2]["kty"], "RSA");
        assert_eq!(decode_url(&keys[2]["n"]), hex(RSA_CA_MODULUS_HEX));
        assert_eq!(keys[2]["e"], "AQAB");
        assert_eq!(keys[3]["crv"], "P-521");
        let point = [
            &[0x04][..],
            &decode_url(&keys[3]["x"]),
            &decode_url(&keys[3]["y"]),
        ]
        .concat();
        assert_eq!(point, hex(P521_CA_POINT_HEX));

        let back = TrustBundle::from_jwks(td(), bundle.to_jwks().as_bytes()).unwrap();
        assert_eq!(back, bundle);
    }

    #[test]
    fn spki_is_rebuilt_byte_for_byte() {
        // The DER we write from JWK members must equal what rcgen and openssl
        // wrote, or a key would change on its way through a JWK Set.
        for alg in [
            &PKCS_ECDSA_P256_SHA256,
            &PKCS_ECDSA_P384_SHA384,
            &PKCS_ED25519,
        ] {
            let spki = KeyPair::generate_for(alg)
                .unwrap()
                .subject_public_key_info();
            let key = JwkKey::from_spki_der(&spki).unwrap();
            assert_eq!(key.to_spki_der(), spki, "{}", key.describe());
        }
        for text in [RSA_CA_PEM, P521_CA_PEM] {
            let cert = pem_cert(text);
            let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
            let spki = parsed.public_key().raw;
            let key = JwkKey::from_spki_der(spki).unwrap();
            assert_eq!(key.to_spki_der(), spki, "{}", key.describe());
        }
    }

    #[test]
    fn pem_round_trip() {
        let (bundle, _keys) = sample();
        let text = bundle.to_pem();
        assert_eq!(text.matches("-----BEGIN CERTIFICATE-----\n").count(), 2);
        assert!(!text.contains('\r'));
        let back = TrustBundle::from_pem(td(), text.as_bytes()).unwrap();
        assert_eq!(back.x509_authorities(), bundle.x509_authorities());
        assert!(back.jwt_authorities().is_empty());
        assert_eq!(TrustBundle::parse(td(), text.as_bytes()).unwrap(), back);
    }

    #[test]
    fn pem_allows_text_between_blocks_and_keeps_duplicates_once() {
        let (_, root) = ca(&PKCS_ECDSA_P256_SHA256);
        let block = pem::encode(&pem::Pem::new("CERTIFICATE", root.to_vec()));
        let text = format!("# our root\n{block}\nsubject: the same root again\n{block}");
        let bundle = TrustBundle::parse(td(), text.as_bytes()).unwrap();
        assert_eq!(bundle.x509_authorities(), [root]);
    }

    #[test]
    fn pem_rejections() {
        let (_, root) = ca(&PKCS_ECDSA_P256_SHA256);
        let block = |label: &str, der: &[u8]| pem::encode(&pem::Pem::new(label, der.to_vec()));
        let good = block("CERTIFICATE", &root);
        let trailing = block("CERTIFICATE", &[root.as_ref(), &[0, 0]].concat());
        let truncated = format!("{good}-----BEGIN CERTIFICATE-----\nMIIB\n");
        let rows: Vec<(String, BundleError)> = vec![
            (String::new(), BundleError::NoCertificates),
            ("no pem here".into(), BundleError::NoCertificates),
            (trailing, BundleError::TrailingData { len: 2 }),
            (
                block("PRIVATE KEY", &[1, 2, 3]),
                BundleError::UnexpectedPemBlock {
                    label: "PRIVATE KEY".into(),
                },
            ),
            (
                format!("{good}{}", block("X509 CRL", &[1])),
                BundleError::UnexpectedPemBlock {
                    label: "X509 CRL".into(),
                },
            ),
            (
                truncated,
                BundleError::Pem {
                    reason: "a block has no END line".into(),
                },
            ),
        ];
        for (text, want) in rows {
            assert_eq!(
                TrustBundle::from_pem(td(), text.as_bytes()),
                Err(want),
                "{text:?}"
            );
        }
        let garbage = block("CERTIFICATE", b"not a certificate");
        assert!(matches!(
            TrustBundle::from_pem(td(), garbage.as_bytes()),
            Err(BundleError::BadCertificate { .. })
        ));
        let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            TrustBundle::from_pem(td(), bad_base64.as_bytes()),
            Err(BundleError::Pem { .. })
        ));
    }

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
    fn jwks_document_rejections() {
        let rows: Vec<(&[u8], BundleError)> = vec![
            (b"[]", BundleError::NotAnObject),
            (b"{}", BundleError::MissingKeys),
            (b"{\"keys\": {}}", BundleError::MissingKeys),
            (
                b"{\"keys\": [], \"spiffe_sequence\": -1}",
                BundleError::BadSequence,
            ),
            (
                b"{\"keys\": [], \"spiffe_sequence\": 1.5}",
                BundleError::BadSequence,
            ),
            (
                b"{\"keys\": [], \"spiffe_sequence\": \"1\"}",
                BundleError::BadSequence,
            ),
            (
                b"{\"keys\": [], \"spiffe_sequence\": 18446744073709551616}",
                BundleError::BadSequence,
            ),
            (
                b"{\"keys\": [], \"spiffe_refresh_hint\": -5}",
                BundleError::BadRefreshHint,
            ),
            (
                b"{\"keys\": [], \"spiffe_refresh_hint\": null}",
                BundleError::BadRefreshHint,
            ),
        ];
        for (bytes, want) in rows {
            assert_eq!(
                TrustBundle::from_jwks(td(), bytes),
                Err(want),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        for not_json in [&b"{"[..], b"{\"keys\": [],}", b"{} trailing", b"\xff"] {
            assert!(
                matches!(
                    TrustBundle::from_jwks(td(), not_json),
                    Err(BundleError::Json { .. })
                ),
                "{not_json:?}"
            );
        }
    }

    #[test]
    fn jwks_ignores_what_the_standard_says_to_ignore() {
        let (_, root) = ca(&PKCS_ECDSA_P256_SHA256);
        let good = x509_jwk(&root);
        let mut unknown_use = good.clone();
        unknown_use["use"] = "x509-svid-v2".into();
        unknown_use["x5c"] = 42.into();
        let mut unknown_kty = good.clone();
        unknown_kty["kty"] = "oct".into();
        let mut unknown_curve = good.clone();
        unknown_curve["crv"] = "secp256k1".into();
        let mut other_okp = good.clone();
        other_okp["kty"] = "OKP".into();
        other_okp["crv"] = "X25519".into();
        let mut extra_members = good.clone();
        extra_members["alg"] = "ES256".into();
        extra_members["x-vendor"] = serde_json::json!({"a": [1, 2]});
        let mut set = serde_json::json!({
            "keys": [unknown_use, unknown_kty, unknown_curve, other_okp, extra_members, good],
            "spiffe_sequence": 3,
            "vendor": {"nested": true},
        });
        let bytes = serde_json::to_vec(&set).unwrap();
        let bundle = TrustBundle::from_jwks(td(), &bytes).unwrap();
        assert_eq!(bundle.x509_authorities(), std::slice::from_ref(&root));
        assert_eq!(bundle.sequence(), 3);
        assert_eq!(bundle.refresh_hint(), None);

        set["keys"] = serde_json::json!([]);
        let empty = TrustBundle::from_jwks(td(), &serde_json::to_vec(&set).unwrap()).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn jwks_key_rejections() {
        let (_, root) = ca(&PKCS_ECDSA_P256_SHA256);
        let (_, other_root) = ca(&PKCS_ECDSA_P256_SHA256);
        let (_, ed_root) = ca(&PKCS_ED25519);
        let good = x509_jwk(&root);
        let edit = |f: &dyn Fn(&mut Value)| {
            let mut jwk = good.clone();
            f(&mut jwk);
            set_of(Value::Array(vec![jwk]))
        };
        let encoded_root = STANDARD.encode(&root);
        let with_trailing = STANDARD.encode([root.as_ref(), &[0]].concat());
        let x_of_other = x509_jwk(&other_root)["x"].clone();
        let ed_jwk = x509_jwk(&ed_root);

        let rows: Vec<(Vec<u8>, BundleError)> = vec![
            (set_of(serde_json::json!([1])), BundleError::KeyNotAnObject),
            (
                edit(&|j| {
                    j.as_object_mut().unwrap().remove("use");
                }),
                BundleError::MissingMember { member: "use" },
            ),
            (
                edit(&|j| j["use"] = 7.into()),
                BundleError::BadMember { member: "use" },
            ),
            (
                edit(&|j| {
                    j.as_object_mut().unwrap().remove("kty");
                }),
                BundleError::MissingMember { member: "kty" },
            ),
            (
                edit(&|j| {
                    j.as_object_mut().unwrap().remove("x5c");
                }),
                BundleError::MissingMember { member: "x5c" },
            ),
            (
                edit(&|j| j["x5c"] = encoded_root.clone().into()),
                BundleError::BadMember { member: "x5c" },
            ),
            (
                edit(&|j| j["x5c"] = serde_json::json!([])),
                BundleError::X5cCount { count: 0 },
            ),
            (
                edit(&|j| j["x5c"] = serde_json::json!([encoded_root, encoded_root])),
                BundleError::X5cCount { count: 2 },
            ),
            (
                edit(&|j| j["x5c"] = serde_json::json!(["not base64!"])),
                BundleError::BadBase64 { member: "x5c" },
            ),
            (
                edit(&|j| j["x5c"] = serde_json::json!([with_trailing])),
                BundleError::TrailingData { len: 1 },
            ),
            (
                edit(&|j| j["x"] = "***".into()),
                BundleError::BadBase64 { member: "x" },
            ),
            (
                edit(&|j| {
                    j.as_object_mut().unwrap().remove("y");
                }),
                BundleError::MissingMember { member: "y" },
            ),
            (
                edit(&|j| j["x"] = x_of_other.clone()),
                BundleError::X5cKeyMismatch,
            ),
            (
                edit(&|j| {
                    j["kty"] = "OKP".into();
                    j["crv"] = "Ed25519".into();
                    j["x"] = ed_jwk["x"].clone();
                }),
                BundleError::X5cKeyMismatch,
            ),
        ];
        for (bytes, want) in rows {
            assert_eq!(
                key_error(&bytes),
                want,
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let garbage_cert = edit(&|j| j["x5c"] = serde_json::json!([STANDARD.encode(b"garbage")]));
        assert!(matches!(
            key_error(&garbage_cert),
            BundleError::BadCertificate { .. }
        ));
        let short_x = edit(&|j| j["x"] = URL_SAFE_NO_PAD.encode([1u8; 31]).into());
        assert!(matches!(
            key_error(&short_x),
            BundleError::BadPublicKey { .. }
        ));
    }

    #[test]
    fn jwt_key_rejections() {
        let (bundle, _keys) = sample();
        let jwt = jwks_value(&bundle)["keys"][2].clone();
        let edit = |f: &dyn Fn(&mut Value)| {
            let mut jwk = jwt.clone();
            f(&mut jwk);
            set_of(Value::Array(vec![jwk]))
        };
        let rows: Vec<(Vec<u8>, BundleError)> = vec![
            (
                edit(&|j| {
                    j.as_object_mut().unwrap().remove("kid");
                }),
                BundleError::MissingKeyId,
            ),
            (edit(&|j| j["kid"] = "".into()), BundleError::MissingKeyId),
            (
                edit(&|j| j["kid"] = 1.into()),
                BundleError::BadMember { member: "kid" },
            ),
            (
                edit(&|j| j["x"] = "AAAA=".into()),
                BundleError::BadBase64 { member: "x" },
            ),
            (
                edit(&|j| {
                    j["kty"] = "RSA".into();
                    j["n"] = "AA".into();
                    j["e"] = "AQAB".into();
                }),
                BundleError::BadPublicKey {
                    reason: "RSA modulus is zero".into(),
                },
            ),
        ];
        for (bytes, want) in rows {
            assert_eq!(
                key_error(&bytes),
                want,
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }

        // The same kid for two different keys is ambiguous.
        let other = KeyPair::generate().unwrap();
        let mut clash = jwt.clone();
        let other_jwk = JwtAuthority::new("key-1", &other.subject_public_key_info()).unwrap();
        other_jwk.key.write_members(clash.as_object_mut().unwrap());
        let bytes = set_of(serde_json::json!([jwt, clash]));
        assert_eq!(
            TrustBundle::from_jwks(td(), &bytes),
            Err(BundleError::InKey {
                index: 1,
                error: Box::new(BundleError::DuplicateKeyId {
                    kid: "key-1".into()
                }),
            })
        );
        // The same key twice is harmless.
        let bytes = set_of(serde_json::json!([jwt, jwt]));
        assert_eq!(
            TrustBundle::from_jwks(td(), &bytes)
                .unwrap()
                .jwt_authorities()
                .len(),
            1
        );
    }

    #[test]
    fn rsa_jwk_members_are_normalised() {
        // Leading zero bytes in n are tolerated on input and never written.
        let rsa = pem_cert(RSA_CA_PEM);
        let mut jwk = x509_jwk(&rsa);
        let n = decode_url(&jwk["n"]);
        jwk["n"] = URL_SAFE_NO_PAD.encode([&[0][..], &n].concat()).into();
        let bundle = TrustBundle::from_jwks(td(), &set_of(serde_json::json!([jwk]))).unwrap();
        assert_eq!(
            jwks_value(&bundle)["keys"][0]["n"],
            URL_SAFE_NO_PAD.encode(&n)
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
    fn der_lengths_use_the_long_form_past_127() {
        assert_eq!(der::sequence(&[]), [0x30, 0x00]);
        assert_eq!(der::sequence(&[7; 127])[..2], [0x30, 0x7f]);
        assert_eq!(der::sequence(&[7; 128])[..3], [0x30, 0x81, 0x80]);
        assert_eq!(der::sequence(&[7; 256])[..4], [0x30, 0x82, 0x01, 0x00]);
        assert_eq!(der::unsigned_integer(&[0x7f]), [0x02, 0x01, 0x7f]);
        assert_eq!(der::unsigned_integer(&[0x80]), [0x02, 0x02, 0x00, 0x80]);
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
