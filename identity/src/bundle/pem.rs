//! The PEM form of a bundle: a plain list of X.509 CA certificates.

use rustls_pki_types::CertificateDer;

use super::{BundleError, TrustBundle, check_size, count_occurrences};
use crate::spiffe_id::TrustDomain;
use crate::x509::chain_to_pem;

const PEM_CERTIFICATE: &str = "CERTIFICATE";
pub(super) const PEM_BEGIN: &[u8] = b"-----BEGIN ";

impl TrustBundle {
    /// the sequence number and the refresh hint have no place in this form.
    pub fn to_pem(&self) -> String {
        chain_to_pem(&self.x509_authorities)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::fixtures::*;

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
}
