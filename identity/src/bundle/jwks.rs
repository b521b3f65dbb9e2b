//! The SPIFFE bundle form: a JWK Set with X.509 and JWT authorities
//! (SPIFFE Trust Domain and Bundle standard, section 4).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::CertificateDer;
use serde_json::{Map, Value};

use super::jwk::{JwkKey, string_member};
use super::{BundleError, JwtAuthority, TrustBundle, check_size};
use crate::spiffe_id::TrustDomain;

/// The `use` of a JWK that authenticates X.509-SVIDs (X509-SVID standard).
const USE_X509_SVID: &str = "x509-svid";
/// The `use` of a JWK that authenticates JWT-SVIDs (JWT-SVID standard).
const USE_JWT_SVID: &str = "jwt-svid";

impl TrustBundle {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::fixtures::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

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
}
