//! The X509-SVID standard's rules for one certificate, leaf or signing.
//! `signet inspect` reports every finding; chain validation fails on the first.

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe_id::{SpiffeId, SpiffeIdError};

/// One departure from the X509-SVID standard (or from RFC 5280 where the
/// standard relies on it).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Finding {
    /// A leaf has no URI SAN.
    #[error("leaf has no URI SAN; an X509-SVID carries exactly one")]
    NoUriSan,
    /// More than one URI SAN.
    #[error("certificate has {0} URI SANs; an X509-SVID carries exactly one")]
    MultipleUriSans(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN {uri:?} is not a valid SPIFFE ID: {reason}")]
    InvalidSpiffeId {
        /// The SAN.
        uri: String,
        /// Why it is invalid.
        reason: SpiffeIdError,
    },
    /// A leaf's SPIFFE ID has no path.
    #[error("leaf SPIFFE ID {0} has no path")]
    LeafIdWithoutPath(String),
    /// A signing certificate's SPIFFE ID has a path.
    #[error("signing certificate SPIFFE ID {0} must not have a path")]
    SigningIdWithPath(String),
    /// BasicConstraints is absent.
    #[error("basicConstraints extension is missing")]
    MissingBasicConstraints,
    /// KeyUsage is absent.
    #[error("keyUsage extension is missing")]
    MissingKeyUsage,
    /// KeyUsage is not marked critical.
    #[error("keyUsage extension is not critical")]
    KeyUsageNotCritical,
    /// A leaf lacks digitalSignature.
    #[error("leaf keyUsage lacks digitalSignature")]
    LeafWithoutDigitalSignature,
    /// A leaf has keyCertSign.
    #[error("leaf keyUsage has keyCertSign")]
    LeafWithKeyCertSign,
    /// A leaf has cRLSign.
    #[error("leaf keyUsage has cRLSign")]
    LeafWithCrlSign,
    /// A leaf's EKU lacks serverAuth or clientAuth.
    #[error("leaf extendedKeyUsage lacks {0}")]
    LeafEkuMissing(&'static str),
    /// A signing certificate lacks keyCertSign.
    #[error("signing certificate keyUsage lacks keyCertSign")]
    SigningWithoutKeyCertSign,
    /// The subject is empty but the SAN extension is not critical (RFC 5280 4.2.1.6).
    #[error("subject is empty but subjectAltName is not critical")]
    EmptySubjectSanNotCritical,
}

/// Whether a certificate is a CA (signing) certificate or a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// BasicConstraints CA:true.
    Signing,
    /// Anything else.
    Leaf,
}

/// What the rules found in one certificate.
#[derive(Debug, Clone)]
pub struct CertReport {
    /// Leaf or signing.
    pub role: Role,
    /// The SPIFFE ID from the single valid URI SAN, if there is one.
    pub spiffe_id: Option<SpiffeId>,
    /// Every rule broken; empty for a conforming certificate.
    pub findings: Vec<Finding>,
}

/// Applies the X509-SVID rules to one certificate.
///
/// # Errors
/// A description of the parse failure when `der` is not a certificate.
pub fn check_certificate(der: &[u8]) -> Result<CertReport, String> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!(
            "{} bytes of trailing data after the certificate",
            rest.len()
        ));
    }
    Ok(check_parsed(&cert))
}

pub(crate) fn check_parsed(cert: &X509Certificate<'_>) -> CertReport {
    let mut findings = Vec::new();
    let mut basic = None;
    let mut key_usage = None;
    let mut eku = None;
    let mut uris = Vec::new();
    let mut san_critical = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) => basic = Some(bc.ca),
            ParsedExtension::KeyUsage(ku) => key_usage = Some((*ku, ext.critical)),
            ParsedExtension::ExtendedKeyUsage(e) => eku = Some((e.server_auth, e.client_auth)),
            ParsedExtension::SubjectAlternativeName(san) => {
                san_critical = Some(ext.critical);
                for name in &san.general_names {
                    if let GeneralName::URI(uri) = name {
                        uris.push((*uri).to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    let role = if basic == Some(true) {
        Role::Signing
    } else {
        Role::Leaf
    };
    if basic.is_none() {
        findings.push(Finding::MissingBasicConstraints);
    }

    let mut spiffe_id = None;
    match uris.as_slice() {
        [] if role == Role::Leaf => findings.push(Finding::NoUriSan),
        [] => {}
        [uri] => match SpiffeId::parse(uri) {
            Ok(id) => {
                if role == Role::Leaf && id.path().is_empty() {
                    findings.push(Finding::LeafIdWithoutPath(id.to_string()));
                }
                if role == Role::Signing && !id.path().is_empty() {
                    findings.push(Finding::SigningIdWithPath(id.to_string()));
                }
                spiffe_id = Some(id);
            }
            Err(reason) => findings.push(Finding::InvalidSpiffeId {
                uri: uri.clone(),
                reason,
            }),
        },
        many => findings.push(Finding::MultipleUriSans(many.len())),
    }

    match &key_usage {
        None => findings.push(Finding::MissingKeyUsage),
        Some((ku, critical)) => {
            if !critical {
                findings.push(Finding::KeyUsageNotCritical);
            }
            match role {
                Role::Leaf => {
                    if !ku.digital_signature() {
                        findings.push(Finding::LeafWithoutDigitalSignature);
                    }
                    if ku.key_cert_sign() {
                        findings.push(Finding::LeafWithKeyCertSign);
                    }
                    if ku.crl_sign() {
                        findings.push(Finding::LeafWithCrlSign);
                    }
                }
                Role::Signing => {
                    if !ku.key_cert_sign() {
                        findings.push(Finding::SigningWithoutKeyCertSign);
                    }
                }
            }
        }
    }
    if role == Role::Leaf
        && let Some((server, client)) = eku
    {
        if !server {
            findings.push(Finding::LeafEkuMissing("serverAuth"));
        }
        if !client {
            findings.push(Finding::LeafEkuMissing("clientAuth"));
        }
    }
    if cert.subject().iter().next().is_none() && san_critical == Some(false) {
        findings.push(Finding::EmptySubjectSanNotCritical);
    }
    CertReport {
        role,
        spiffe_id,
        findings,
    }
}
