//! Integration tests of signet-ca and the `signet` CLI: each test starts its
//! own CA process (own data directory, own port), drives it through the
//! node API over TLS, the admin socket and the CLI, and has openssl and
//! rustls/webpki judge what it issued.
//!
//! Needs the workspace binaries: `cargo build --workspace --bins` first.

// This whole crate is test code: a failed expectation should panic with
// its message, in helpers as in the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod authorization;
mod cli;
mod drain;
mod evict;
mod federation;
mod health;
mod issuance;
mod k8s;
mod lifecycle;
mod limits;
mod mesh;
mod mtls;
mod policy_crd;
mod replicas;
mod restart;
mod status;
mod store;
mod upstream;
mod watch;

use rustls_pki_types::CertificateDer;
use signet_proto::ca::v1 as pb;
use signet_tests::{AuditRow, CaProcess};
use x509_parser::prelude::*;

/// gRPC status codes as `ItemError.code` carries them.
pub const INVALID_ARGUMENT: i32 = 3;
pub const PERMISSION_DENIED: i32 = 7;

pub use signet_identity::unix_time::unix_seconds;

/// The SVID of a batch item, or a panic naming the item's error.
pub fn svid_of(result: &pb::SignResult) -> &pb::X509Svid {
    match &result.result {
        Some(pb::sign_result::Result::Svid(svid)) => svid,
        other => panic!("entry {}: expected an SVID, got {other:?}", result.entry_id),
    }
}

/// The error of a batch item, or a panic if it carries an SVID.
pub fn item_error(result: &pb::SignResult) -> &pb::ItemError {
    match &result.result {
        Some(pb::sign_result::Result::Error(e)) => e,
        Some(pb::sign_result::Result::Svid(svid)) => panic!(
            "entry {}: expected a refusal, but an SVID was issued: {} serial {}",
            result.entry_id, svid.spiffe_id, svid.serial
        ),
        None => panic!("entry {}: empty result", result.entry_id),
    }
}

/// Asserts that since `mark` the audit log recorded a `rejected` row for
/// `action` and no `issued` row at all. Returns the new rows.
pub fn assert_rejected_not_issued(ca: &CaProcess, mark: i64, action: &str) -> Vec<AuditRow> {
    let rows = ca.audit_since(mark).unwrap();
    assert!(
        rows.iter()
            .any(|r| r.result == "rejected" && r.action == action),
        "no `rejected` audit row for {action}; rows since the request: {rows:#?}"
    );
    let issued: Vec<&AuditRow> = rows.iter().filter(|r| r.result == "issued").collect();
    assert!(
        issued.is_empty(),
        "a refused request left `issued` audit rows: {issued:#?}"
    );
    rows
}

/// Checks the X.509-SVID leaf profile: empty subject, exactly one URI SAN
/// (`spiffe_id`) plus exactly `dns_names`, SAN critical, CA:false critical,
/// KeyUsage digitalSignature (no CA bits) critical, EKU serverAuth and
/// clientAuth, SKI and AKI, a 128-bit serial.
pub fn assert_leaf_profile(leaf: &CertificateDer<'_>, spiffe_id: &str, dns_names: &[&str]) {
    let (rest, cert) = X509Certificate::from_der(leaf).expect("leaf parses");
    assert!(rest.is_empty(), "trailing bytes after the leaf");
    assert_eq!(cert.version(), X509Version::V3);
    assert_eq!(
        cert.subject().iter().count(),
        0,
        "subject must be empty, got {}",
        cert.subject()
    );

    let san = cert
        .subject_alternative_name()
        .expect("one SAN extension")
        .expect("a SAN extension");
    assert!(
        san.critical,
        "SAN must be critical when the subject is empty"
    );
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    for name in &san.value.general_names {
        match name {
            GeneralName::URI(u) => uris.push(*u),
            GeneralName::DNSName(d) => dns.push(*d),
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    assert_eq!(uris, [spiffe_id], "exactly one URI SAN, the SPIFFE ID");
    assert_eq!(dns, dns_names, "DNS SANs");

    let bc = cert
        .basic_constraints()
        .expect("one BasicConstraints")
        .expect("BasicConstraints present");
    assert!(bc.critical, "BasicConstraints must be critical");
    assert!(!bc.value.ca, "a leaf must not be a CA");

    let ku = cert
        .key_usage()
        .expect("one KeyUsage")
        .expect("KeyUsage present");
    assert!(ku.critical, "KeyUsage must be critical");
    assert!(ku.value.digital_signature(), "digitalSignature required");
    assert!(
        !ku.value.key_cert_sign() && !ku.value.crl_sign(),
        "a leaf must not sign certificates or CRLs: {}",
        ku.value
    );

    let eku = cert
        .extended_key_usage()
        .expect("one EKU")
        .expect("EKU present");
    assert!(eku.value.server_auth, "EKU serverAuth");
    assert!(eku.value.client_auth, "EKU clientAuth");
    assert!(!eku.value.any, "no anyExtendedKeyUsage");

    let mut has_ski = false;
    let mut has_aki = false;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(_) => has_ski = true,
            ParsedExtension::AuthorityKeyIdentifier(_) => has_aki = true,
            _ => {}
        }
    }
    assert!(has_ski && has_aki, "SKI and AKI required");

    let serial = cert.raw_serial();
    let significant = serial
        .iter()
        .position(|b| *b != 0)
        .map_or(&[][..], |i| &serial[i..]);
    assert_eq!(
        significant.len(),
        16,
        "128-bit serial expected, got {}",
        cert.raw_serial_as_string()
    );
}

/// notBefore and notAfter of a certificate, Unix seconds.
pub fn validity(cert: &CertificateDer<'_>) -> (i64, i64) {
    let (_, cert) = X509Certificate::from_der(cert).expect("certificate parses");
    (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    )
}

/// Lowercase hex of the certificate's serial, without leading zero bytes.
pub fn serial_hex(cert: &CertificateDer<'_>) -> String {
    let (_, cert) = X509Certificate::from_der(cert).expect("certificate parses");
    let serial = cert.raw_serial();
    let start = serial
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(serial.len().saturating_sub(1));
    serial[start..].iter().map(|b| format!("{b:02x}")).collect()
}

/// The URI SANs of a certificate.
pub fn uri_sans(cert: &CertificateDer<'_>) -> Vec<String> {
    let (_, cert) = X509Certificate::from_der(cert).expect("certificate parses");
    let Some(san) = cert.subject_alternative_name().expect("one SAN extension") else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect()
}
