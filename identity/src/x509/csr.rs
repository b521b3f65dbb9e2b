//! CSR intake. The CA takes exactly one thing from a certificate signing
//! request: its public key, and only after checking the request's signature
//! with that key (proof of possession). Subject, SANs and requested
//! extensions are ignored: the identity comes from the CA's authorization.

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, X509CertificationRequest};
use x509_parser::public_key::PublicKey;

/// The largest CSR accepted, in bytes. A 4096-bit RSA request is under 2 KiB.
pub const MAX_CSR_LEN: usize = 64 * 1024;
/// The smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// The largest RSA modulus accepted, in bits.
pub const MAX_RSA_BITS: usize = 4096;

/// The kinds of public key an SVID may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrKeyType {
    /// ECDSA on P-256.
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA with a modulus of the given size in bits (2048 to 4096).
    Rsa(usize),
}

impl CsrKeyType {
    /// Whether the key is RSA, whose certificates also get keyEncipherment.
    #[must_use]
    pub fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa(_))
    }
}

impl std::fmt::Display for CsrKeyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::EcdsaP256 => f.write_str("ECDSA P-256"),
            Self::EcdsaP384 => f.write_str("ECDSA P-384"),
            Self::Ed25519 => f.write_str("Ed25519"),
            Self::Rsa(bits) => write!(f, "RSA {bits}"),
        }
    }
}

/// Why a CSR was refused. Nothing is issued for any of these.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// The input is larger than [`MAX_CSR_LEN`].
    #[error("csr is {len} bytes; the limit is {MAX_CSR_LEN}")]
    TooLarge {
        /// Size of the input.
        len: usize,
    },
    /// The input is empty.
    #[error("csr is empty")]
    Empty,
    /// The input is not a DER CertificationRequest.
    #[error("csr is not a valid DER certification request: {0}")]
    Malformed(String),
    /// Bytes follow the DER CertificationRequest.
    #[error("csr has {0} bytes of trailing data")]
    TrailingData(usize),
    /// The request version is not v1 (0).
    #[error("csr version {0} is not supported; only version 1 (0) is")]
    UnsupportedVersion(u32),
    /// The public key algorithm is not one Signet issues for.
    #[error(
        "csr public key algorithm {0} is not supported (use ECDSA P-256/P-384, Ed25519 or RSA 2048-4096)"
    )]
    UnsupportedKeyAlgorithm(String),
    /// The EC key is on a curve other than P-256 or P-384.
    #[error("csr EC key is on an unsupported curve {0}")]
    UnsupportedCurve(String),
    /// The RSA modulus is shorter than [`MIN_RSA_BITS`].
    #[error("csr RSA key has {0} bits; at least {MIN_RSA_BITS} are required")]
    RsaKeyTooSmall(usize),
    /// The RSA modulus is longer than [`MAX_RSA_BITS`].
    #[error("csr RSA key has {0} bits; at most {MAX_RSA_BITS} are accepted")]
    RsaKeyTooLarge(usize),
    /// The public key could not be decoded.
    #[error("csr public key is malformed: {0}")]
    MalformedKey(String),
    /// The signature algorithm is unknown or does not fit the key.
    #[error("csr signature algorithm {0} is not supported for this key")]
    UnsupportedSignatureAlgorithm(String),
    /// The signature does not verify with the request's own key.
    #[error("csr signature does not verify with its public key")]
    BadSignature,
}

/// A CSR whose signature has been checked. Holds only the public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCsr {
    spki_der: Vec<u8>,
    key_type: CsrKeyType,
}

impl VerifiedCsr {
    /// Parses a DER CSR, checks its key is acceptable and that its signature
    /// verifies with that key.
    ///
    /// # Errors
    /// One [`CsrError`] variant per rule: size, DER shape, trailing data,
    /// version, key algorithm and size, signature algorithm, signature.
    pub fn from_der(der: &[u8]) -> Result<Self, CsrError> {
        if der.is_empty() {
            return Err(CsrError::Empty);
        }
        if der.len() > MAX_CSR_LEN {
            return Err(CsrError::TooLarge { len: der.len() });
        }
        let (rest, csr) = X509CertificationRequest::from_der(der)
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CsrError::TrailingData(rest.len()));
        }
        let info = &csr.certification_request_info;
        if info.version.0 != 0 {
            return Err(CsrError::UnsupportedVersion(info.version.0));
        }
        let spki = &info.subject_pki;
        let key_alg = &spki.algorithm.algorithm;
        let key_type = if *key_alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or_else(|| CsrError::MalformedKey("EC key without a named curve".into()))?;
            if curve == OID_EC_P256 {
                CsrKeyType::EcdsaP256
            } else if curve == OID_NIST_EC_P384 {
                CsrKeyType::EcdsaP384
            } else {
                return Err(CsrError::UnsupportedCurve(curve.to_id_string()));
            }
        } else if *key_alg == OID_SIG_ED25519 {
            CsrKeyType::Ed25519
        } else if *key_alg == OID_PKCS1_RSAENCRYPTION {
            let bits = match spki.parsed() {
                Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
                Ok(_) => {
                    return Err(CsrError::MalformedKey(
                        "rsaEncryption key is not RSA".into(),
                    ));
                }
                Err(e) => return Err(CsrError::MalformedKey(e.to_string())),
            };
            if bits < MIN_RSA_BITS {
                return Err(CsrError::RsaKeyTooSmall(bits));
            }
            if bits > MAX_RSA_BITS {
                return Err(CsrError::RsaKeyTooLarge(bits));
            }
            CsrKeyType::Rsa(bits)
        } else {
            return Err(CsrError::UnsupportedKeyAlgorithm(key_alg.to_id_string()));
        };

        let sig_alg = &csr.signature_algorithm.algorithm;
        let unsupported = || CsrError::UnsupportedSignatureAlgorithm(sig_alg.to_id_string());
        let verifier: &dyn VerificationAlgorithm = match key_type {
            CsrKeyType::EcdsaP256 if *sig_alg == OID_SIG_ECDSA_WITH_SHA256 => {
                &signature::ECDSA_P256_SHA256_ASN1
            }
            CsrKeyType::EcdsaP256 if *sig_alg == OID_SIG_ECDSA_WITH_SHA384 => {
                &signature::ECDSA_P256_SHA384_ASN1
            }
            CsrKeyType::EcdsaP384 if *sig_alg == OID_SIG_ECDSA_WITH_SHA384 => {
                &signature::ECDSA_P384_SHA384_ASN1
            }
            CsrKeyType::EcdsaP384 if *sig_alg == OID_SIG_ECDSA_WITH_SHA256 => {
                &signature::ECDSA_P384_SHA256_ASN1
            }
            CsrKeyType::Ed25519 if *sig_alg == OID_SIG_ED25519 => &signature::ED25519,
            CsrKeyType::Rsa(_) if *sig_alg == OID_PKCS1_SHA256WITHRSA => {
                &signature::RSA_PKCS1_2048_8192_SHA256
            }
            CsrKeyType::Rsa(_) if *sig_alg == OID_PKCS1_SHA384WITHRSA => {
                &signature::RSA_PKCS1_2048_8192_SHA384
            }
            CsrKeyType::Rsa(_) if *sig_alg == OID_PKCS1_SHA512WITHRSA => {
                &signature::RSA_PKCS1_2048_8192_SHA512
            }
            _ => return Err(unsupported()),
        };
        UnparsedPublicKey::new(verifier, &*spki.subject_public_key.data)
            .verify(info.raw, &csr.signature_value.data)
            .map_err(|_| CsrError::BadSignature)?;

        Ok(Self {
            spki_der: spki.raw.to_vec(),
            key_type,
        })
    }

    /// Parses a PEM `CERTIFICATE REQUEST` (or `NEW CERTIFICATE REQUEST`) and
    /// applies [`VerifiedCsr::from_der`].
    ///
    /// # Errors
    /// [`CsrError::Malformed`] when the PEM is unreadable, otherwise as `from_der`.
    pub fn from_pem(text: &str) -> Result<Self, CsrError> {
        if text.len() > MAX_CSR_LEN * 2 {
            return Err(CsrError::TooLarge { len: text.len() });
        }
        let block = pem::parse(text).map_err(|e| CsrError::Malformed(e.to_string()))?;
        if !matches!(
            block.tag(),
            "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST"
        ) {
            return Err(CsrError::Malformed(format!(
                "PEM block is {:?}, not a certificate request",
                block.tag()
            )));
        }
        Self::from_der(block.contents())
    }

    /// The DER SubjectPublicKeyInfo taken from the request.
    #[must_use]
    pub fn public_key_spki(&self) -> &[u8] {
        &self.spki_der
    }

    /// The kind of key.
    #[must_use]
    pub fn key_type(&self) -> CsrKeyType {
        self.key_type
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyType, PrivateKey};

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/fixtures/csr/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn generated(kind: KeyType) -> Vec<u8> {
        PrivateKey::generate(kind).unwrap().csr_der().unwrap()
    }

    #[test]
    fn accepts_every_supported_key_type() {
        let cases: Vec<(Vec<u8>, CsrKeyType)> = vec![
            (generated(KeyType::EcdsaP256), CsrKeyType::EcdsaP256),
            (generated(KeyType::EcdsaP384), CsrKeyType::EcdsaP384),
            (generated(KeyType::Ed25519), CsrKeyType::Ed25519),
            (fixture("rsa-2048.der"), CsrKeyType::Rsa(2048)),
            (fixture("rsa-4096.der"), CsrKeyType::Rsa(4096)),
            // Subject and SANs of the request are ignored; only the key is taken.
            (
                fixture("ec-p256-with-spoofed-san.der"),
                CsrKeyType::EcdsaP256,
            ),
        ];
        for (der, want) in cases {
            let csr = VerifiedCsr::from_der(&der).unwrap_or_else(|e| panic!("{want:?}: {e}"));
            assert_eq!(csr.key_type(), want);
            assert!(!csr.public_key_spki().is_empty());
        }
    }

    #[test]
    fn takes_exactly_the_requesters_public_key() {
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let csr = VerifiedCsr::from_der(&key.csr_der().unwrap()).unwrap();
        assert_eq!(csr.public_key_spki(), key.public_key_spki());
    }

    #[test]
    fn rejects_rsa_below_2048_bits() {
        assert_eq!(
            VerifiedCsr::from_der(&fixture("rsa-1024-too-small.der")),
            Err(CsrError::RsaKeyTooSmall(1024))
        );
    }

    #[test]
    fn rejects_rsa_above_4096_bits() {
        assert_eq!(
            VerifiedCsr::from_der(&fixture("rsa-5120-too-large.der")),
            Err(CsrError::RsaKeyTooLarge(5120))
        );
    }

    #[test]
    fn rejects_dsa() {
        assert!(matches!(
            VerifiedCsr::from_der(&fixture("dsa-2048-unsupported-algorithm.der")),
            Err(CsrError::UnsupportedKeyAlgorithm(oid)) if oid == "1.2.840.10040.4.1"
        ));
    }

    #[test]
    fn rejects_unknown_algorithms() {
        assert!(matches!(
            VerifiedCsr::from_der(&fixture("ed448-unsupported-algorithm.der")),
            Err(CsrError::UnsupportedKeyAlgorithm(_))
        ));
        assert!(matches!(
            VerifiedCsr::from_der(&fixture("ec-secp256k1-unsupported-curve.der")),
            Err(CsrError::UnsupportedCurve(_))
        ));
        assert!(matches!(
            VerifiedCsr::from_der(&fixture("rsa-2048-sha1-unsupported-signature.der")),
            Err(CsrError::UnsupportedSignatureAlgorithm(_))
        ));
    }

    #[test]
    fn rejects_a_bad_signature() {
        for der in [
            generated(KeyType::EcdsaP256),
            generated(KeyType::Ed25519),
            fixture("rsa-2048.der"),
        ] {
            let mut bad = der.clone();
            let last = bad.len() - 1;
            bad[last] ^= 0x01;
            assert_eq!(VerifiedCsr::from_der(&bad), Err(CsrError::BadSignature));
        }
    }

    #[test]
    fn rejects_a_request_whose_content_was_changed_after_signing() {
        // Re-sign nothing: swap the key of one request into another's body.
        let a = generated(KeyType::EcdsaP256);
        let b = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let a_key = VerifiedCsr::from_der(&a)
            .unwrap()
            .public_key_spki()
            .to_vec();
        let b_spki = b.public_key_spki();
        let pos = a
            .windows(a_key.len())
            .position(|w| w == a_key.as_slice())
            .unwrap();
        let mut swapped = a.clone();
        swapped[pos..pos + b_spki.len()].copy_from_slice(&b_spki);
        assert_eq!(VerifiedCsr::from_der(&swapped), Err(CsrError::BadSignature));
    }

    #[test]
    fn rejects_trailing_garbage() {
        let mut der = generated(KeyType::EcdsaP256);
        der.extend_from_slice(b"\x00\x01garbage");
        assert_eq!(VerifiedCsr::from_der(&der), Err(CsrError::TrailingData(9)));
    }

    #[test]
    fn rejects_oversized_input() {
        let der = vec![0x30; MAX_CSR_LEN + 1];
        assert_eq!(
            VerifiedCsr::from_der(&der),
            Err(CsrError::TooLarge {
                len: MAX_CSR_LEN + 1
            })
        );
    }

    #[test]
    fn rejects_empty_and_malformed_input() {
        assert_eq!(VerifiedCsr::from_der(b""), Err(CsrError::Empty));
        assert!(matches!(
            VerifiedCsr::from_der(b"not der at all"),
            Err(CsrError::Malformed(_))
        ));
        let der = generated(KeyType::EcdsaP256);
        assert!(matches!(
            VerifiedCsr::from_der(&der[..der.len() / 2]),
            Err(CsrError::Malformed(_))
        ));
    }

    #[test]
    fn reads_pem() {
        let key = PrivateKey::generate(KeyType::EcdsaP384).unwrap();
        let text = pem::encode(&pem::Pem::new(
            "CERTIFICATE REQUEST",
            key.csr_der().unwrap(),
        ));
        assert_eq!(
            VerifiedCsr::from_pem(&text).unwrap().key_type(),
            CsrKeyType::EcdsaP384
        );
        let wrong = pem::encode(&pem::Pem::new("CERTIFICATE", key.csr_der().unwrap()));
        assert!(matches!(
            VerifiedCsr::from_pem(&wrong),
            Err(CsrError::Malformed(_))
        ));
    }
}
