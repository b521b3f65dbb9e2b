//! Public keys in the terms of a JWK (RFC 7517, RFC 7518, RFC 8037), to and
//! from DER SubjectPublicKeyInfo.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use x509_parser::asn1_rs::{Class, Oid, Tag};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::RSAPublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::BundleError;
use super::der;

pub(super) fn string_member<'a>(
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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    pub(super) const ALL: [Self; 3] = [Self::P256, Self::P384, Self::P521];

    /// The JWK `crv` name (RFC 7518 section 6.2.1.1).
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
            Self::P521 => "P-521",
        }
    }

    /// The contents of the named-curve OID (RFC 5480).
    pub(super) fn oid(self) -> &'static [u8] {
        match self {
            Self::P256 => &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            Self::P384 => &[0x2b, 0x81, 0x04, 0x00, 0x22],
            Self::P521 => &[0x2b, 0x81, 0x04, 0x00, 0x23],
        }
    }

    /// The size in bytes of one coordinate, which the JWK must use in full.
    pub(super) fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
            Self::P521 => 66,
        }
    }
}

/// OID contents of the key algorithms (RFC 3279, RFC 5480, RFC 8410).
pub(super) const OID_RSA_ENCRYPTION: &[u8] =
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
pub(super) const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
pub(super) const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

const ED25519_KEY_LEN: usize = 32;

/// A public key in the terms of a JWK (RFC 7518 section 6, RFC 8037). Byte
/// strings are big-endian; RSA integers carry no leading zeros.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(super) enum JwkKey {
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
    pub(super) fn from_certificate(der: &[u8]) -> Result<Self, BundleError> {
        let (rest, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| BundleError::BadCertificate {
                reason: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(BundleError::TrailingData { len: rest.len() });
        }
        Self::from_spki(cert.public_key())
    }

    pub(super) fn from_spki_der(der: &[u8]) -> Result<Self, BundleError> {
        let (rest, spki) =
            SubjectPublicKeyInfo::from_der(der).map_err(|e| bad_key(e.to_string()))?;
        if !rest.is_empty() {
            return Err(bad_key("trailing bytes after the SubjectPublicKeyInfo"));
        }
        Self::from_spki(&spki)
    }

    pub(super) fn from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<Self, BundleError> {
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
    pub(super) fn from_members(jwk: &Map<String, Value>) -> Result<Option<Self>, BundleError> {
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

    pub(super) fn write_members(&self, jwk: &mut Map<String, Value>) {
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
    pub(super) fn to_spki_der(&self) -> Vec<u8> {
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

    pub(super) fn describe(&self) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::fixtures::*;
    use crate::bundle::{JwtAuthority, TrustBundle};

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
}
