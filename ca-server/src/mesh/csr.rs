//! What a mesh proxy's CSR asks for. Only read to refuse a CSR that names
//! another identity: the certificate's names come from the token.

use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509CertificationRequest};

/// The subject alternative names a CSR requests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestedNames {
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    /// Other kinds (IP, e-mail...): never granted.
    pub other: usize,
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
}

/// Reads the requested SANs of a DER CSR (already verified by the caller
/// or about to be).
///
/// # Errors
/// A message when the CSR does not parse.
pub fn requested_names(der: &[u8]) -> Result<RequestedNames, String> {
    let (_, csr) = X509CertificationRequest::from_der(der).map_err(|e| e.to_string())?;
    let mut names = RequestedNames {
        common_name: csr
            .certification_request_info
            .subject
            .iter_common_name()
            .next()
            .map(|cn| cn.as_str().map(str::to_owned).unwrap_or_default()),
        ..RequestedNames::default()
    };
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(u) => names.uris.push((*u).to_owned()),
                        GeneralName::DNSName(d) => names.dns.push((*d).to_owned()),
                        _ => names.other += 1,
                    }
                }
            }
        }
    }
    Ok(names)
}
