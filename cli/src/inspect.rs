//! `signet inspect`: show what is in a certificate, a chain, or a trust
//! bundle, and whether each certificate conforms to the X509-SVID standard.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::Context as _;
use serde::Serialize;
use signet_identity::unix_time::unix_seconds;
use signet_identity::{SpiffeId, TrustBundle, TrustDomain};
use x509_parser::prelude::{FromDer, SubjectPublicKeyInfo};

use crate::certinfo::{self, CertInfo};
use crate::input::{self, Encoding};
use crate::output::{self, Format};

/// The trust domain a JWK Set is read under when nothing says which it is.
/// A bundle names no trust domain of its own, and inspection only displays it.
const UNKNOWN_TRUST_DOMAIN: &str = "unknown";

/// Arguments of `signet inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A PEM or DER certificate, a PEM chain, or a trust bundle (PEM or SPIFFE
    /// JWK Set); `-` reads stdin.
    #[arg(value_name = "FILE")]
    input: PathBuf,
    /// The trust domain of a JWK Set bundle, which the bundle itself does not
    /// name (default: from the first authority's SPIFFE ID).
    #[arg(long, value_name = "TD")]
    trust_domain: Option<TrustDomain>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    certificates: Vec<CertInfo>,
    bundle: Option<BundleInfo>,
}

#[derive(Debug, Serialize)]
struct BundleInfo {
    trust_domain: String,
    sequence: u64,
    refresh_hint_seconds: Option<u64>,
    x509_authorities: usize,
    jwt_authorities: Vec<JwtKeyInfo>,
}

#[derive(Debug, Serialize)]
struct JwtKeyInfo {
    key_id: String,
    key_type: String,
}

/// Runs `signet inspect`.
///
/// # Errors
/// When the input cannot be read or holds no certificate or bundle.
pub fn run(args: &Args, format: Format) -> anyhow::Result<()> {
    let bytes = input::read(&args.input)?;
    let now = unix_seconds(SystemTime::now());
    let report = match input::sniff(&bytes) {
        Some(Encoding::Jwks) => inspect_jwks(&bytes, args.trust_domain.as_ref(), now)?,
        _ => {
            let (certs, skipped) = input::certificates(&bytes)?;
            for label in skipped {
                eprintln!("note: skipping PEM block {:?}", output::printable(&label));
            }
            let certificates = certs
                .iter()
                .enumerate()
                .map(|(i, der)| certinfo::describe(i, der, now))
                .collect::<anyhow::Result<_>>()?;
            Report {
                certificates,
                bundle: None,
            }
        }
    };
    match format {
        Format::Json => output::print_json(&report),
        Format::Text => output::print(&render(&report, now)),
    }
}

fn inspect_jwks(bytes: &[u8], flag: Option<&TrustDomain>, now: i64) -> anyhow::Result<Report> {
    let read_as = match flag {
        Some(td) => td.clone(),
        None => TrustDomain::new(UNKNOWN_TRUST_DOMAIN).context("placeholder trust domain")?,
    };
    let bundle =
        TrustBundle::from_jwks(read_as, bytes).context("input is not a valid SPIFFE bundle")?;
    bundle_report(&bundle, flag, now)
}

/// What `inspect` shows of `bundle`: its metadata and its authorities.
/// The trust domain shown is `flag`, else the first authority's.
///
/// # Errors
/// When an authority's certificate cannot be described.
pub(crate) fn bundle_report(
    bundle: &TrustBundle,
    flag: Option<&TrustDomain>,
    now: i64,
) -> anyhow::Result<Report> {
    let certificates: Vec<CertInfo> = bundle
        .x509_authorities()
        .iter()
        .enumerate()
        .map(|(i, der)| certinfo::describe(i, der, now))
        .collect::<anyhow::Result<_>>()?;
    let trust_domain = match flag {
        Some(td) => td.to_string(),
        None => certificates
            .iter()
            .find_map(|c| c.spiffe_id.as_deref())
            .and_then(|id| SpiffeId::parse(id).ok())
            .map_or_else(
                || UNKNOWN_TRUST_DOMAIN.to_owned(),
                |id| id.trust_domain().to_string(),
            ),
    };
    let jwt_authorities = bundle
        .jwt_authorities()
        .iter()
        .map(|a| JwtKeyInfo {
            key_id: a.key_id().to_owned(),
            key_type: SubjectPublicKeyInfo::from_der(a.public_key().as_ref()).map_or_else(
                |_| "unknown".to_owned(),
                |(_, spki)| certinfo::key_type(&spki),
            ),
        })
        .collect();
    Ok(Report {
        certificates,
        bundle: Some(BundleInfo {
            trust_domain,
            sequence: bundle.sequence(),
            refresh_hint_seconds: bundle.refresh_hint().map(|d| d.as_secs()),
            x509_authorities: bundle.x509_authorities().len(),
            jwt_authorities,
        }),
    })
}

/// The text form of a report.
pub(crate) fn render(report: &Report, now: i64) -> String {
    let mut out = String::new();
    if let Some(bundle) = &report.bundle {
        out.push_str("Bundle\n");
        let f = |out: &mut String, label: &str, value: &str| {
            output::field(out, "  ", label, &output::printable(value));
        };
        f(&mut out, "Trust domain", &bundle.trust_domain);
        f(&mut out, "Sequence", &bundle.sequence.to_string());
        let hint = bundle.refresh_hint_seconds.map_or_else(
            || "(none)".to_owned(),
            |s| output::approx_duration(std::time::Duration::from_secs(s)),
        );
        f(&mut out, "Refresh hint", &hint);
        f(&mut out, "X.509 CAs", &bundle.x509_authorities.to_string());
        let jwt = if bundle.jwt_authorities.is_empty() {
            "(none)".to_owned()
        } else {
            bundle
                .jwt_authorities
                .iter()
                .map(|k| format!("{} ({})", k.key_id, k.key_type))
                .collect::<Vec<_>>()
                .join(", ")
        };
        f(&mut out, "JWT keys", &jwt);
    }
    for cert in &report.certificates {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&cert.to_text(now));
    }
    if report.certificates.is_empty() {
        let _ = writeln!(out, "\n(no X.509 authorities)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};
    use signet_identity::{JwtAuthority, KeyType, PrivateKey};

    fn jwks() -> String {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![SanType::URI("spiffe://example.org".try_into().unwrap())];
        let root = params.self_signed(&key).unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let mut bundle = TrustBundle::new(td)
            .with_x509_authorities([root.der().clone()])
            .unwrap();
        let jwt_key = PrivateKey::generate(KeyType::EcdsaP384).unwrap();
        bundle
            .add_jwt_authority(JwtAuthority::new("kid-1", &jwt_key.public_key_spki()).unwrap())
            .unwrap();
        bundle.set_sequence(42);
        bundle.set_refresh_hint(Some(std::time::Duration::from_secs(300)));
        bundle.to_jwks()
    }

    #[test]
    fn a_jwks_bundle_shows_its_metadata_and_authorities() {
        let report = inspect_jwks(jwks().as_bytes(), None, 0).unwrap();
        let bundle = report.bundle.as_ref().unwrap();
        assert_eq!(bundle.trust_domain, "example.org");
        assert_eq!(bundle.sequence, 42);
        assert_eq!(bundle.refresh_hint_seconds, Some(300));
        assert_eq!(bundle.x509_authorities, 1);
        assert_eq!(bundle.jwt_authorities[0].key_id, "kid-1");
        assert_eq!(bundle.jwt_authorities[0].key_type, "ECDSA P-384");
        assert_eq!(report.certificates.len(), 1);
        assert!(report.certificates[0].is_ca);

        let text = render(&report, 0);
        assert!(
            text.starts_with("Bundle\n  Trust domain: example.org\n"),
            "{text}"
        );
        assert!(text.contains("JWT keys:     kid-1 (ECDSA P-384)"), "{text}");
        assert!(text.contains("Refresh hint: 5m"), "{text}");

        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["bundle"]["sequence"], 42);
        assert_eq!(json["certificates"][0]["is_ca"], true);
    }

    #[test]
    fn the_trust_domain_flag_wins_and_unknown_is_the_fallback() {
        let other = TrustDomain::new("other.org").unwrap();
        let report = inspect_jwks(jwks().as_bytes(), Some(&other), 0).unwrap();
        assert_eq!(report.bundle.unwrap().trust_domain, "other.org");

        let empty = r#"{"keys": [], "spiffe_sequence": 1}"#;
        let report = inspect_jwks(empty.as_bytes(), None, 0).unwrap();
        assert_eq!(report.bundle.unwrap().trust_domain, "unknown");
        assert!(report.certificates.is_empty());
    }

    #[test]
    fn a_broken_jwks_says_so() {
        let err = inspect_jwks(br#"{"keys": 5}"#, None, 0).unwrap_err();
        assert!(
            format!("{err:#}").contains("not a valid SPIFFE bundle"),
            "{err:#}"
        );
    }
}
