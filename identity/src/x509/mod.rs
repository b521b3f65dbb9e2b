//! X.509-SVIDs: the issuance profile (what the CA puts in a certificate),
//! CSR intake (what it takes from a request), the SPIFFE conformance rules,
//! and chain validation against a trust bundle.

pub mod csr;
pub mod issue;
pub mod pem;
pub mod rules;
pub mod verify;

pub use csr::{CsrError, CsrKeyType, VerifiedCsr};
pub use issue::{
    IssueError, IssuedCert, SigningAuthority, SigningCaParams, X509SvidParams, issue_dns_leaf,
    issue_x509_svid, new_intermediate, new_root,
};
pub use pem::chain_to_pem;
pub use rules::{Finding, check_certificate};
pub use verify::{SvidError, VerifiedSvid, verify_x509_svid};

/// The id under which the CA and the agents name an authority (a root or
/// intermediate certificate, or a JWT key's SubjectPublicKeyInfo): the first
/// 8 bytes of the SHA-256 of its DER, in lowercase hex. Both sides compute
/// it from the same bytes, so an id in a status report or a taint notice
/// means the same authority everywhere.
#[must_use]
pub fn authority_id(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    hex::encode(&digest.as_ref()[..8])
}
