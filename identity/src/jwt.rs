//! JWT-SVIDs (SPIFFE JWT-SVID standard): compact JWS tokens whose `sub` is a
//! SPIFFE ID, signed by a JWT authority of the trust domain's bundle and
//! named in the header by `kid`.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, UnparsedPublicKey, VerificationAlgorithm};
use serde::{Deserialize, Serialize};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::bundle::TrustBundle;
use crate::keys::PrivateKey;
use crate::spiffe_id::SpiffeId;
use crate::unix_time::unix_seconds;

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Most audiences one JWT-SVID may name. With [`MAX_AUDIENCE_LEN`] this
/// keeps every token the CA mints well below [`MAX_TOKEN_LEN`], so that a
/// token that can be minted can also be validated.
pub const MAX_AUDIENCES: usize = 16;

/// Longest single audience, in bytes.
pub const MAX_AUDIENCE_LEN: usize = 256;

/// Why a JWT-SVID could not be made or is not valid.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Over [`MAX_TOKEN_LEN`].
    #[error("token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    /// Not three base64url parts of JSON.
    #[error("token is malformed: {0}")]
    Malformed(String),
    /// `alg` is missing, `none`, or not one the standard allows.
    #[error("token algorithm {0:?} is not supported")]
    UnsupportedAlgorithm(String),
    /// No `kid` in the header.
    #[error("token header has no kid")]
    MissingKeyId,
    /// The bundle has no key with that `kid`.
    #[error("no JWT authority with kid {0:?} in the bundle of {1}")]
    UnknownKeyId(String, String),
    /// The key does not fit the algorithm.
    #[error("the JWT authority's key does not fit algorithm {0}")]
    KeyMismatch(String),
    /// Signature check failed.
    #[error("token signature is invalid")]
    BadSignature,
    /// `sub` missing or not a SPIFFE ID.
    #[error("token subject is not a valid SPIFFE ID: {0}")]
    BadSubject(String),
    /// The subject is not in the bundle's trust domain.
    #[error("token subject {0} is not in trust domain {1}")]
    WrongTrustDomain(String, String),
    /// `exp` missing.
    #[error("token has no exp claim")]
    MissingExpiry,
    /// Past `exp`.
    #[error("token expired")]
    Expired,
    /// `aud` missing or empty.
    #[error("token has no audience")]
    MissingAudience,
    /// More than [`MAX_AUDIENCES`] audiences.
    #[error("a token may name at most {MAX_AUDIENCES} audiences, not {0}")]
    TooManyAudiences(usize),
    /// An audience over [`MAX_AUDIENCE_LEN`] bytes.
    #[error("an audience may be at most {MAX_AUDIENCE_LEN} bytes, not {0}")]
    AudienceTooLong(usize),
    /// None of the token's audiences is the one expected.
    #[error("token audience {actual:?} does not include {expected:?}")]
    AudienceMismatch {
        /// In the token.
        actual: Vec<String>,
        /// Wanted.
        expected: String,
    },
    /// The signing key is unusable.
    #[error("cannot sign: {0}")]
    Sign(String),
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

/// `aud` is a string or an array of strings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The claims of a JWT-SVID.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Claims {
    /// The SPIFFE ID.
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<Audience>,
    /// Expiry, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Issued at, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Every other claim.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl Claims {
    /// The audiences.
    #[must_use]
    pub fn audience(&self) -> Vec<String> {
        match &self.aud {
            None => Vec::new(),
            Some(Audience::One(a)) => vec![a.clone()],
            Some(Audience::Many(v)) => v.clone(),
        }
    }

    /// The claims as a JSON object (for the Workload API's ValidateJWTSVID).
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// Signs a JWT-SVID with an ECDSA P-256 key (ES256).
///
/// # Errors
/// [`JwtError::MissingAudience`] for no audience, [`JwtError::TooManyAudiences`]
/// and [`JwtError::AudienceTooLong`] over the limits, [`JwtError::TooLong`]
/// when the token would exceed [`MAX_TOKEN_LEN`], [`JwtError::Sign`] when the
/// key is not P-256.
pub fn sign_es256(
    key: &PrivateKey,
    key_id: &str,
    subject: &SpiffeId,
    audience: &[String],
    ttl: Duration,
    now: SystemTime,
) -> Result<String, JwtError> {
    check_audiences(audience)?;
    let rng = SystemRandom::new();
    let pair = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        key.pkcs8_der(),
        &rng,
    )
    .map_err(|e| JwtError::Sign(e.to_string()))?;
    let header = Header {
        alg: "ES256".into(),
        kid: Some(key_id.into()),
        typ: Some("JWT".into()),
    };
    let claims = Claims {
        sub: subject.to_string(),
        aud: Some(if audience.len() == 1 {
            Audience::One(audience[0].clone())
        } else {
            Audience::Many(audience.to_vec())
        }),
        exp: Some(unix_seconds(now + ttl)),
        iat: Some(unix_seconds(now)),
        other: serde_json::Map::new(),
    };
    let enc = |v: &dyn erased::Ser| -> Result<String, JwtError> {
        Ok(URL_SAFE_NO_PAD.encode(v.json().map_err(JwtError::Sign)?))
    };
    let signing_input = format!("{}.{}", enc(&header)?, enc(&claims)?);
    let sig = pair
        .sign(&rng, signing_input.as_bytes())
        .map_err(|e| JwtError::Sign(e.to_string()))?;
    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::TooLong);
    }
    Ok(token)
}

/// Checks a requested audience list against the limits every JWT-SVID
/// honours: at least one, at most [`MAX_AUDIENCES`], none empty, none over
/// [`MAX_AUDIENCE_LEN`] bytes.
///
/// # Errors
/// [`JwtError::MissingAudience`], [`JwtError::TooManyAudiences`] or
/// [`JwtError::AudienceTooLong`].
pub fn check_audiences(audience: &[String]) -> Result<(), JwtError> {
    if audience.is_empty() || audience.iter().any(String::is_empty) {
        return Err(JwtError::MissingAudience);
    }
    if audience.len() > MAX_AUDIENCES {
        return Err(JwtError::TooManyAudiences(audience.len()));
    }
    if let Some(long) = audience.iter().find(|a| a.len() > MAX_AUDIENCE_LEN) {
        return Err(JwtError::AudienceTooLong(long.len()));
    }
    Ok(())
}

mod erased {
    pub trait Ser {
        fn json(&self) -> Result<Vec<u8>, String>;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> Result<Vec<u8>, String> {
            serde_json::to_vec(self).map_err(|e| e.to_string())
        }
    }
}

/// A JWT-SVID that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedJwt {
    /// The subject.
    pub spiffe_id: SpiffeId,
    /// All claims.
    pub claims: Claims,
}

/// Reads a token's claims without checking anything (for display).
///
/// # Errors
/// [`JwtError::Malformed`].
pub fn peek_claims(token: &str) -> Result<Claims, JwtError> {
    let (_, payload, _) = split(token)?;
    decode_json(payload)
}

/// Reads the key id (`kid`) from a token's header without checking
/// anything (to tell which key signed a token held in a cache).
///
/// # Errors
/// [`JwtError::Malformed`]; [`JwtError::MissingKeyId`] without a `kid`.
pub fn peek_key_id(token: &str) -> Result<String, JwtError> {
    let (h, _, _) = split(token)?;
    let header: Header = decode_json(h)?;
    header.kid.ok_or(JwtError::MissingKeyId)
}

fn split(token: &str) -> Result<(&str, &str, &str), JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::TooLong);
    }
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => Ok((h, p, s)),
        _ => Err(JwtError::Malformed(
            "a JWS compact token has three parts".into(),
        )),
    }
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| JwtError::Malformed(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| JwtError::Malformed(e.to_string()))
}

/// Validates a JWT-SVID against `bundle`: signature by the authority named
/// by `kid`, subject in the bundle's trust domain, not expired, and — when
/// `audience` is given — that audience among the token's.
///
/// # Errors
/// One [`JwtError`] variant per rule.
pub fn validate(
    token: &str,
    bundle: &TrustBundle,
    audience: Option<&str>,
    now: SystemTime,
) -> Result<VerifiedJwt, JwtError> {
    let (h, p, s) = split(token)?;
    let header: Header = decode_json(h)?;
    let kid = header.kid.clone().ok_or(JwtError::MissingKeyId)?;
    let authority = bundle
        .jwt_authority(&kid)
        .ok_or_else(|| JwtError::UnknownKeyId(kid.clone(), bundle.trust_domain().to_string()))?;
    let (_, spki) = SubjectPublicKeyInfo::from_der(authority.public_key().as_ref())
        .map_err(|e| JwtError::KeyMismatch(e.to_string()))?;
    let key_alg = &spki.algorithm.algorithm;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    let is_ec = *key_alg == OID_KEY_TYPE_EC_PUBLIC_KEY;
    let is_rsa = *key_alg == OID_PKCS1_RSAENCRYPTION;
    let alg: &dyn VerificationAlgorithm = match header.alg.as_str() {
        "ES256" if is_ec && curve == Some(OID_EC_P256) => &signature::ECDSA_P256_SHA256_FIXED,
        "ES384" if is_ec && curve == Some(OID_NIST_EC_P384) => &signature::ECDSA_P384_SHA384_FIXED,
        "RS256" if is_rsa => &signature::RSA_PKCS1_2048_8192_SHA256,
        "RS384" if is_rsa => &signature::RSA_PKCS1_2048_8192_SHA384,
        "RS512" if is_rsa => &signature::RSA_PKCS1_2048_8192_SHA512,
        "PS256" if is_rsa => &signature::RSA_PSS_2048_8192_SHA256,
        "PS384" if is_rsa => &signature::RSA_PSS_2048_8192_SHA384,
        "PS512" if is_rsa => &signature::RSA_PSS_2048_8192_SHA512,
        "ES256" | "ES384" | "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => {
            return Err(JwtError::KeyMismatch(header.alg));
        }
        other => return Err(JwtError::UnsupportedAlgorithm(other.to_owned())),
    };
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|e| JwtError::Malformed(e.to_string()))?;
    let signing_input = &token[..h.len() + 1 + p.len()];
    UnparsedPublicKey::new(alg, &*spki.subject_public_key.data)
        .verify(signing_input.as_bytes(), &sig)
        .map_err(|_| JwtError::BadSignature)?;

    let claims: Claims = decode_json(p)?;
    let spiffe_id =
        SpiffeId::parse(&claims.sub).map_err(|e| JwtError::BadSubject(e.to_string()))?;
    if !spiffe_id.is_member_of(bundle.trust_domain()) {
        return Err(JwtError::WrongTrustDomain(
            spiffe_id.to_string(),
            bundle.trust_domain().to_string(),
        ));
    }
    let exp = claims.exp.ok_or(JwtError::MissingExpiry)?;
    if unix_seconds(now) >= exp {
        return Err(JwtError::Expired);
    }
    let auds = claims.audience();
    if auds.is_empty() {
        return Err(JwtError::MissingAudience);
    }
    if let Some(expected) = audience
        && !auds.iter().any(|a| a == expected)
    {
        return Err(JwtError::AudienceMismatch {
            actual: auds,
            expected: expected.to_owned(),
        });
    }
    Ok(VerifiedJwt { spiffe_id, claims })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::JwtAuthority;
    use crate::keys::KeyType;
    use crate::spiffe_id::TrustDomain;

    fn setup() -> (PrivateKey, TrustBundle, SpiffeId) {
        let td = TrustDomain::new("example.org").unwrap();
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let mut bundle = TrustBundle::new(td.clone());
        bundle
            .add_jwt_authority(JwtAuthority::new("k1", &key.public_key_spki()).unwrap())
            .unwrap();
        (
            key,
            bundle,
            SpiffeId::parse("spiffe://example.org/web").unwrap(),
        )
    }

    #[test]
    fn audience_limits_are_enforced_when_signing() {
        let (key, _, id) = setup();
        let now = SystemTime::now();
        let ttl = Duration::from_secs(60);
        let at_limit: Vec<String> = (0..MAX_AUDIENCES)
            .map(|i| format!("{i:0>width$}", width = MAX_AUDIENCE_LEN))
            .collect();
        let token = sign_es256(&key, "k1", &id, &at_limit, ttl, now).unwrap();
        assert!(token.len() <= MAX_TOKEN_LEN);
        let mut too_many = at_limit.clone();
        too_many.push("one-more".into());
        assert_eq!(
            sign_es256(&key, "k1", &id, &too_many, ttl, now),
            Err(JwtError::TooManyAudiences(MAX_AUDIENCES + 1))
        );
        let too_long = vec!["a".repeat(MAX_AUDIENCE_LEN + 1)];
        assert_eq!(
            sign_es256(&key, "k1", &id, &too_long, ttl, now),
            Err(JwtError::AudienceTooLong(MAX_AUDIENCE_LEN + 1))
        );
        assert_eq!(
            sign_es256(&key, "k1", &id, &[], ttl, now),
            Err(JwtError::MissingAudience)
        );
    }

    #[test]
    fn signs_and_validates() {
        let (key, bundle, id) = setup();
        let now = SystemTime::now();
        let token = sign_es256(
            &key,
            "k1",
            &id,
            &["db".into(), "cache".into()],
            Duration::from_secs(300),
            now,
        )
        .unwrap();
        let ok = validate(&token, &bundle, Some("cache"), now).unwrap();
        assert_eq!(ok.spiffe_id, id);
        assert_eq!(ok.claims.audience(), vec!["db", "cache"]);
        assert_eq!(ok.claims.exp, Some(unix_seconds(now) + 300));
    }

    #[test]
    fn rejects_each_broken_rule() {
        let (key, bundle, id) = setup();
        let now = SystemTime::now();
        let token = sign_es256(
            &key,
            "k1",
            &id,
            &["db".into()],
            Duration::from_secs(300),
            now,
        )
        .unwrap();
        assert!(matches!(
            validate(&token, &bundle, Some("other"), now),
            Err(JwtError::AudienceMismatch { .. })
        ));
        assert_eq!(
            validate(&token, &bundle, None, now + Duration::from_secs(301)),
            Err(JwtError::Expired)
        );
        let other_key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let forged = sign_es256(
            &other_key,
            "k1",
            &id,
            &["db".into()],
            Duration::from_secs(300),
            now,
        )
        .unwrap();
        assert_eq!(
            validate(&forged, &bundle, None, now),
            Err(JwtError::BadSignature)
        );
        let unknown = sign_es256(
            &key,
            "k2",
            &id,
            &["db".into()],
            Duration::from_secs(300),
            now,
        )
        .unwrap();
        assert!(matches!(
            validate(&unknown, &bundle, None, now),
            Err(JwtError::UnknownKeyId(..))
        ));
        let foreign = SpiffeId::parse("spiffe://other.org/web").unwrap();
        let t = sign_es256(
            &key,
            "k1",
            &foreign,
            &["db".into()],
            Duration::from_secs(300),
            now,
        )
        .unwrap();
        assert!(matches!(
            validate(&t, &bundle, None, now),
            Err(JwtError::WrongTrustDomain(..))
        ));
        assert!(matches!(
            validate("a.b", &bundle, None, now),
            Err(JwtError::Malformed(_))
        ));
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"k1"}"#),
            token.split('.').nth(1).unwrap()
        );
        assert!(matches!(
            validate(&none, &bundle, None, now),
            Err(JwtError::UnsupportedAlgorithm(_))
        ));
        assert_eq!(
            sign_es256(&key, "k1", &id, &[], Duration::from_secs(1), now),
            Err(JwtError::MissingAudience)
        );
        // Tampering with the claims breaks the signature.
        let parts: Vec<&str> = token.split('.').collect();
        let evil = URL_SAFE_NO_PAD
            .encode(br#"{"sub":"spiffe://example.org/admin","aud":"db","exp":99999999999}"#);
        let tampered = format!("{}.{}.{}", parts[0], evil, parts[2]);
        assert_eq!(
            validate(&tampered, &bundle, None, now),
            Err(JwtError::BadSignature)
        );
    }
}
