//! What one certificate says, in the words `signet inspect` prints: names,
//! serial, key type, validity, SANs, and the X509-SVID conformance findings
//! from the identity crate. Everything read here comes from untrusted input,
//! so no field can make the description fail once the certificate parses.

use std::fmt::Write as _;

use anyhow::{Context as _, bail};
use serde::Serialize;
use signet_identity::x509::rules::{Role, check_certificate};
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_SIG_ED448, OID_SIG_ED25519,
};
use x509_parser::prelude::{SubjectPublicKeyInfo, X509Name};
use x509_parser::public_key::PublicKey;

use crate::output;

/// One certificate, as both output formats show it.
#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    /// Position in the input, from 0.
    pub index: usize,
    /// RFC 4514 string; empty for an empty subject.
    pub subject: String,
    /// The SPIFFE ID of the single valid URI SAN.
    pub spiffe_id: Option<String>,
    /// Lowercase hex, without the DER sign byte.
    pub serial: String,
    /// RFC 4514 string.
    pub issuer: String,
    /// `ECDSA P-256`, `RSA 2048`, `Ed25519`, ...
    pub key_type: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// Seconds from now to notAfter; negative once expired.
    pub seconds_left: i64,
    /// BasicConstraints CA:true.
    pub is_ca: bool,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// URI SANs other than the SPIFFE ID (or all of them when none is valid).
    pub other_uris: Vec<String>,
    /// X509-SVID rules the certificate breaks; empty when it conforms.
    pub findings: Vec<String>,
    #[serde(skip)]
    not_before_unix: i64,
    #[serde(skip)]
    not_after_unix: i64,
}

/// Describes the DER certificate `der`, found at `index` of the input, as of
/// `now` (Unix seconds).
///
/// # Errors
/// When `der` is not exactly one X.509 certificate.
pub fn describe(index: usize, der: &[u8], now: i64) -> anyhow::Result<CertInfo> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("certificate {index} is not valid X.509"))?;
    if !rest.is_empty() {
        bail!(
            "certificate {index} is followed by {} bytes of other data",
            rest.len()
        );
    }
    let report = check_certificate(der)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("certificate {index} is not valid X.509"))?;
    let spiffe_id = report.spiffe_id.map(|id| id.to_string());

    let mut dns_names = Vec::new();
    let mut other_uris = Vec::new();
    // A duplicate SAN extension is an error for x509-parser; the rules module
    // reports on it, and here we simply show no names.
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                GeneralName::URI(uri) if spiffe_id.as_deref() != Some(*uri) => {
                    other_uris.push((*uri).to_owned());
                }
                _ => {}
            }
        }
    }

    let validity = cert.validity();
    let not_before_unix = validity.not_before.timestamp();
    let not_after_unix = validity.not_after.timestamp();
    Ok(CertInfo {
        index,
        subject: rfc4514(cert.subject()),
        spiffe_id,
        serial: serial_hex(cert.raw_serial()),
        issuer: rfc4514(cert.issuer()),
        key_type: key_type(cert.public_key()),
        not_before: output::rfc3339(not_before_unix),
        not_after: output::rfc3339(not_after_unix),
        seconds_left: not_after_unix.saturating_sub(now),
        is_ca: report.role == Role::Signing,
        dns_names,
        other_uris,
        findings: report.findings.iter().map(ToString::to_string).collect(),
        not_before_unix,
        not_after_unix,
    })
}

impl CertInfo {
    /// The text block for this certificate, as of `now` (Unix seconds).
    pub fn to_text(&self, now: i64) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Certificate {}", self.index);
        let f = |out: &mut String, label: &str, value: &str| {
            output::field(out, "  ", label, &output::printable(value));
        };
        let or_none = |s: &str, none: &str| {
            if s.is_empty() {
                none.to_owned()
            } else {
                s.to_owned()
            }
        };
        f(&mut out, "Subject", &or_none(&self.subject, "(empty)"));
        f(
            &mut out,
            "SPIFFE ID",
            self.spiffe_id.as_deref().unwrap_or("(none)"),
        );
        f(&mut out, "Serial", &self.serial);
        f(&mut out, "Issuer", &or_none(&self.issuer, "(empty)"));
        f(&mut out, "Key type", &self.key_type);
        let not_before = if self.not_before_unix > now {
            format!(
                "{} (not valid for another {})",
                self.not_before,
                wait(self.not_before_unix, now)
            )
        } else {
            self.not_before.clone()
        };
        f(&mut out, "Not before", &not_before);
        let left = output::time_left(self.not_after_unix, now);
        f(
            &mut out,
            "Not after",
            &format!("{} ({left})", self.not_after),
        );
        f(&mut out, "Role", if self.is_ca { "CA" } else { "leaf" });
        if !self.dns_names.is_empty() {
            f(&mut out, "DNS names", &self.dns_names.join(", "));
        }
        if !self.other_uris.is_empty() {
            f(&mut out, "Other URIs", &self.other_uris.join(", "));
        }
        if self.findings.is_empty() {
            f(&mut out, "X509-SVID", "conforms to X509-SVID");
        } else {
            let n = self.findings.len();
            let s = if n == 1 { "" } else { "s" };
            f(
                &mut out,
                "X509-SVID",
                &format!("does not conform ({n} finding{s})"),
            );
            for finding in &self.findings {
                let _ = writeln!(out, "    - {}", output::printable(finding));
            }
        }
        out
    }
}

fn wait(until: i64, now: i64) -> String {
    let secs = until.saturating_sub(now).unsigned_abs();
    output::approx_duration(std::time::Duration::from_secs(secs))
}

/// The serial number as lowercase hex without the sign byte DER adds, the
/// form the CA reports.
pub fn serial_hex(raw: &[u8]) -> String {
    let first = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex::encode(raw.get(first..).unwrap_or_default())
}

/// The public key algorithm and size in the usual words.
pub fn key_type(spki: &SubjectPublicKeyInfo<'_>) -> String {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 => "ECDSA P-256".to_owned(),
            Some(c) if c == OID_NIST_EC_P384 => "ECDSA P-384".to_owned(),
            Some(c) if c == OID_NIST_EC_P521 => "ECDSA P-521".to_owned(),
            Some(c) => format!("ECDSA (curve {})", c.to_id_string()),
            None => "ECDSA (no named curve)".to_owned(),
        }
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => format!("RSA {}", bit_length(rsa.modulus)),
            _ => "RSA (malformed key)".to_owned(),
        }
    } else if *alg == OID_SIG_ED25519 {
        "Ed25519".to_owned()
    } else if *alg == OID_SIG_ED448 {
        "Ed448".to_owned()
    } else {
        format!("unknown ({})", alg.to_id_string())
    }
}

/// The number of significant bits in a big-endian unsigned integer.
fn bit_length(be: &[u8]) -> usize {
    match be.iter().position(|b| *b != 0) {
        None => 0,
        Some(i) => {
            let lead = be.get(i).map_or(0, |b| b.leading_zeros() as usize);
            (be.len() - i) * 8 - lead
        }
    }
}

/// A distinguished name as RFC 4514 writes it: the last RDN first, `,`
/// between RDNs, `+` inside one. Attribute types without a short name in
/// RFC 4514 (and `serialNumber`, which Signet's roots use) appear as dotted
/// OIDs; values that are not strings appear as `#` and the hex of their DER.
pub fn rfc4514(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            let avas: Vec<String> = rdn
                .iter()
                .map(|ava| {
                    let oid = ava.attr_type().to_id_string();
                    let label = short_name(&oid).map_or(oid, str::to_owned);
                    let value = match ava.as_str() {
                        Ok(s) => escape_value(s),
                        Err(_) => format!("#{}", hex::encode(ava.attr_value().as_bytes())),
                    };
                    format!("{label}={value}")
                })
                .collect();
            avas.join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        _ => return None,
    })
}

/// RFC 4514 section 2.4 escaping of an attribute value.
fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, ch) in value.chars().enumerate() {
        match ch {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(ch);
            }
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '#' if i == 0 => out.push_str("\\#"),
            '\0' => out.push_str("\\00"),
            _ => out.push(ch),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };

    fn leaf_params(spiffe_id: &str) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![
            SanType::URI(spiffe_id.try_into().unwrap()),
            SanType::DnsName("web.example.org".try_into().unwrap()),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params
    }

    #[test]
    fn describes_a_self_signed_leaf() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = leaf_params("spiffe://example.org/web");
        params.serial_number = Some(vec![0x00, 0x8f, 0x01].into());
        params.not_after = rcgen::date_time_ymd(2040, 1, 1);
        let not_after = params.not_after.unix_timestamp();
        let cert = params.self_signed(&key).unwrap();

        let info = describe(3, cert.der(), not_after - 3_552).unwrap();
        assert_eq!(info.index, 3);
        assert_eq!(info.subject, "");
        assert_eq!(info.spiffe_id.as_deref(), Some("spiffe://example.org/web"));
        assert_eq!(info.serial, "8f01");
        assert_eq!(info.key_type, "ECDSA P-256");
        assert_eq!(info.seconds_left, 3_552);
        assert!(!info.is_ca);
        assert_eq!(info.dns_names, ["web.example.org"]);
        assert!(info.other_uris.is_empty());

        let text = info.to_text(not_after - 3_552);
        assert!(text.contains("Subject:      (empty)"), "{text}");
        assert!(text.contains("expires in 59m 12s"), "{text}");
        assert!(text.contains("Role:         leaf"), "{text}");
    }

    #[test]
    fn reports_findings_for_a_nonconforming_ca() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let mut params = CertificateParams::default();
        // Encoded in push order; RFC 4514 writes the last RDN first.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Acme, Inc.");
        params.distinguished_name.push(DnType::CommonName, "root");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let info = describe(0, cert.der(), 0).unwrap();
        assert!(info.is_ca);
        assert_eq!(info.key_type, "Ed25519");
        assert_eq!(info.subject, "CN=root,O=Acme\\, Inc.");
        assert_eq!(info.issuer, info.subject);
        assert!(
            info.findings.iter().any(|f| f.contains("keyUsage")),
            "{:?}",
            info.findings
        );
        assert!(info.to_text(0).contains("does not conform"));
    }

    #[test]
    fn rsa_sizes_come_from_the_modulus() {
        assert_eq!(bit_length(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(bit_length(&[0x01, 0x00]), 9);
        assert_eq!(bit_length(&[0x00]), 0);
        assert_eq!(bit_length(&[]), 0);
    }

    #[test]
    fn serial_hex_drops_only_the_sign_byte() {
        assert_eq!(serial_hex(&[0x00, 0x80]), "80");
        assert_eq!(serial_hex(&[0x01, 0x00]), "0100");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[]), "");
    }

    #[test]
    fn escape_value_table() {
        let rows = [
            ("plain", "plain"),
            ("a,b+c", "a\\,b\\+c"),
            (" lead", "\\ lead"),
            ("trail ", "trail\\ "),
            ("#hash", "\\#hash"),
            ("mid#dle", "mid#dle"),
            ("q\"<>;\\", "q\\\"\\<\\>\\;\\\\"),
            ("nul\0", "nul\\00"),
        ];
        for (input, want) in rows {
            assert_eq!(escape_value(input), want, "{input:?}");
        }
    }

    #[test]
    fn rejects_trailing_data() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = leaf_params("spiffe://example.org/web")
            .self_signed(&key)
            .unwrap();
        let mut der = cert.der().to_vec();
        der.push(0);
        let err = describe(0, &der, 0).unwrap_err();
        assert!(err.to_string().contains("followed by 1 bytes"), "{err}");
    }
}
