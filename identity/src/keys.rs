//! Private keys held by Signet: generated with ring, stored as PKCS#8, never
//! printed.
//!
//! What is zeroized, and what is not: the PKCS#8 copy this type keeps (and
//! every PEM it hands out, as `Zeroizing<String>`) is wiped when dropped.
//! The `rcgen::KeyPair` inside, which signs, holds its own copy of the key
//! bytes and ring's parsed key, and neither rcgen nor ring wipes those on
//! drop. So key material can outlive a `PrivateKey` in freed memory; the
//! protection against reading it is the process boundary, not zeroization.

use std::fmt;

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519};
use zeroize::Zeroizing;

/// The key algorithms Signet generates for itself and its workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA on NIST P-256 with SHA-256 (the default everywhere).
    EcdsaP256,
    /// ECDSA on NIST P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
}

/// Errors from generating or loading keys.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The random generator or the key generator failed.
    #[error("key generation failed: {0}")]
    Generate(String),
    /// The PEM or PKCS#8 input is not a private key Signet can use.
    #[error("not a usable private key: {0}")]
    Parse(String),
}

/// A private key, in PKCS#8 form. `Debug` prints `<redacted>`. Only the
/// PKCS#8 copy is zeroized on drop (see the module documentation).
pub struct PrivateKey {
    pkcs8: Zeroizing<Vec<u8>>,
    pair: KeyPair,
}

impl PrivateKey {
    /// Generates a new key of the given type.
    ///
    /// # Errors
    /// [`KeyError::Generate`] when the system random generator fails.
    pub fn generate(kind: KeyType) -> Result<Self, KeyError> {
        let alg = match kind {
            KeyType::EcdsaP256 => &PKCS_ECDSA_P256_SHA256,
            KeyType::EcdsaP384 => &PKCS_ECDSA_P384_SHA384,
            KeyType::Ed25519 => &PKCS_ED25519,
        };
        let pair = KeyPair::generate_for(alg).map_err(|e| KeyError::Generate(e.to_string()))?;
        Ok(Self::from_pair(pair))
    }

    /// Loads a PKCS#8 (or SEC1 / PKCS#1, as rcgen accepts) PEM private key.
    ///
    /// # Errors
    /// [`KeyError::Parse`] when the PEM holds no key rcgen and ring can sign with.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let pair = KeyPair::from_pem(pem).map_err(|e| KeyError::Parse(e.to_string()))?;
        Ok(Self::from_pair(pair))
    }

    fn from_pair(pair: KeyPair) -> Self {
        Self {
            pkcs8: Zeroizing::new(pair.serialize_der()),
            pair,
        }
    }

    /// The PKCS#8 PEM encoding. Handle with care: this is the secret.
    #[must_use]
    pub fn to_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(pem::encode(&pem::Pem::new(
            "PRIVATE KEY",
            self.pkcs8.to_vec(),
        )))
    }

    /// The PKCS#8 DER encoding. Handle with care: this is the secret.
    #[must_use]
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The DER SubjectPublicKeyInfo of the key's public half.
    #[must_use]
    pub fn public_key_spki(&self) -> Vec<u8> {
        use rcgen::PublicKeyData;
        self.pair.subject_public_key_info()
    }

    /// The rcgen signer, for building certificates and CSRs.
    #[must_use]
    pub fn key_pair(&self) -> &KeyPair {
        &self.pair
    }

    /// A certificate signing request for this key, with an empty subject.
    /// The CA ignores everything in it but the public key.
    ///
    /// # Errors
    /// [`KeyError::Generate`] if signing the request fails.
    pub fn csr_der(&self) -> Result<Vec<u8>, KeyError> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&self.pair)
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        Ok(csr.der().to_vec())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_key_material() {
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let shown = format!("{key:?}");
        assert_eq!(shown, "PrivateKey(<redacted>)");
        let pem = key.to_pem();
        let body: String = pem.lines().nth(1).unwrap().chars().take(16).collect();
        assert!(!shown.contains(&body));
    }

    #[test]
    fn pem_round_trip_keeps_the_public_key() {
        for kind in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Ed25519] {
            let key = PrivateKey::generate(kind).unwrap();
            let again = PrivateKey::from_pem(&key.to_pem()).unwrap();
            assert_eq!(key.public_key_spki(), again.public_key_spki(), "{kind:?}");
        }
    }
}
