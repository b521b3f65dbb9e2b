//! X.509-SVID validation against a trust bundle. Path building and signature
//! checks are rustls-webpki's; the SPIFFE rules are checked on top of it.

use std::time::SystemTime;

use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::rules::{Finding, Role, check_parsed};
use crate::bundle::TrustBundle;
use crate::spiffe_id::SpiffeId;

/// Why a chain is not a valid X.509-SVID for a bundle.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// No certificates were given.
    #[error("the chain is empty")]
    EmptyChain,
    /// A certificate does not parse.
    #[error("certificate {index} does not parse: {reason}")]
    Malformed {
        /// Position in the chain, 0 = leaf.
        index: usize,
        /// Parser message.
        reason: String,
    },
    /// The first certificate is a CA, not a leaf.
    #[error("the first certificate is a CA certificate, not a leaf")]
    LeafIsCa,
    /// The leaf breaks an X509-SVID rule.
    #[error("leaf is not a conforming X509-SVID: {0}")]
    LeafRule(Finding),
    /// An intermediate breaks an X509-SVID rule.
    #[error("intermediate {index} is not a conforming signing certificate: {finding}")]
    SigningRule {
        /// Position in the chain.
        index: usize,
        /// The rule.
        finding: Finding,
    },
    /// An intermediate is not a CA.
    #[error("intermediate {0} is not a CA certificate")]
    IntermediateNotCa(usize),
    /// The leaf's trust domain is not the bundle's.
    #[error("leaf SPIFFE ID {id} is not in the bundle's trust domain {trust_domain}")]
    TrustDomainMismatch {
        /// The leaf's ID.
        id: String,
        /// The bundle's trust domain.
        trust_domain: String,
    },
    /// The bundle has no X.509 authorities.
    #[error("the bundle for {0} has no X.509 authorities")]
    EmptyBundle(String),
    /// A bundle authority cannot serve as a trust anchor.
    #[error("bundle authority {index} is not usable as a trust anchor: {reason}")]
    BadAnchor {
        /// Position in the bundle.
        index: usize,
        /// webpki's message.
        reason: String,
    },
    /// Path validation failed (signature, validity, chaining, constraints).
    #[error("path validation failed: {0}")]
    Path(String),
    /// The leaf's ID differs from the one required.
    #[error("leaf SPIFFE ID is {actual}, expected {expected}")]
    UnexpectedId {
        /// In the leaf.
        actual: String,
        /// Required.
        expected: String,
    },
}

/// A chain that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSvid {
    /// The leaf's identity.
    pub spiffe_id: SpiffeId,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
}

/// Validates `chain` (leaf first, then intermediates) against `bundle` at `now`.
///
/// # Errors
/// The first rule that fails, as an [`SvidError`].
pub fn verify_x509_svid(
    chain: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    now: SystemTime,
) -> Result<VerifiedSvid, SvidError> {
    let (leaf_der, intermediates) = chain.split_first().ok_or(SvidError::EmptyChain)?;
    let parse = |index: usize, der: &[u8]| -> Result<(), SvidError> {
        let (rest, _) = X509Certificate::from_der(der).map_err(|e| SvidError::Malformed {
            index,
            reason: e.to_string(),
        })?;
        if rest.is_empty() {
            Ok(())
        } else {
            Err(SvidError::Malformed {
                index,
                reason: "trailing data".into(),
            })
        }
    };
    parse(0, leaf_der)?;
    let (_, leaf) = X509Certificate::from_der(leaf_der).map_err(|e| SvidError::Malformed {
        index: 0,
        reason: e.to_string(),
    })?;
    let report = check_parsed(&leaf);
    if report.role == Role::Signing {
        return Err(SvidError::LeafIsCa);
    }
    if let Some(finding) = report.findings.into_iter().next() {
        return Err(SvidError::LeafRule(finding));
    }
    let spiffe_id = report
        .spiffe_id
        .ok_or(SvidError::LeafRule(Finding::NoUriSan))?;
    if !spiffe_id.is_member_of(bundle.trust_domain()) {
        return Err(SvidError::TrustDomainMismatch {
            id: spiffe_id.to_string(),
            trust_domain: bundle.trust_domain().to_string(),
        });
    }
    for (i, der) in intermediates.iter().enumerate() {
        let index = i + 1;
        parse(index, der)?;
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| SvidError::Malformed {
            index,
            reason: e.to_string(),
        })?;
        let r = check_parsed(&cert);
        if r.role != Role::Signing {
            return Err(SvidError::IntermediateNotCa(index));
        }
        if let Some(finding) = r.findings.into_iter().next() {
            return Err(SvidError::SigningRule { index, finding });
        }
    }

    if bundle.x509_authorities().is_empty() {
        return Err(SvidError::EmptyBundle(bundle.trust_domain().to_string()));
    }
    let anchors = bundle
        .x509_authorities()
        .iter()
        .enumerate()
        .map(|(index, der)| {
            webpki::anchor_from_trusted_cert(der).map_err(|e| SvidError::BadAnchor {
                index,
                reason: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ee = EndEntityCert::try_from(leaf_der).map_err(|e| SvidError::Path(e.to_string()))?;
    let unix = UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        intermediates,
        unix,
        KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| SvidError::Path(format!("{e:?}")))?;
    Ok(VerifiedSvid {
        spiffe_id,
        not_after: SystemTime::from(leaf.validity().not_after.to_datetime()),
    })
}

/// Like [`verify_x509_svid`], and also requires the leaf to carry `expected`.
///
/// # Errors
/// As [`verify_x509_svid`], plus [`SvidError::UnexpectedId`].
pub fn verify_x509_svid_for(
    chain: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    expected: &SpiffeId,
    now: SystemTime,
) -> Result<VerifiedSvid, SvidError> {
    let verified = verify_x509_svid(chain, bundle, now)?;
    if &verified.spiffe_id != expected {
        return Err(SvidError::UnexpectedId {
            actual: verified.spiffe_id.to_string(),
            expected: expected.to_string(),
        });
    }
    Ok(verified)
}
