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
    IssueError, IssuedCert, SigningAuthority, SigningCaParams, X509SvidParams, issue_x509_svid,
    new_intermediate, new_root,
};
pub use pem::chain_to_pem;
pub use rules::{Finding, check_certificate};
pub use verify::{SvidError, VerifiedSvid, verify_x509_svid};
