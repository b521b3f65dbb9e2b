//! `signet verify`: full X.509-SVID validation of a chain against a trust
//! bundle, now, with the same code the agent and the CA use.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;
use serde::Serialize;
use signet_identity::unix_time::unix_seconds;
use signet_identity::x509::rules::check_certificate;
use signet_identity::x509::verify::{VerifiedSvid, verify_x509_svid, verify_x509_svid_for};
use signet_identity::{SpiffeId, TrustBundle, TrustDomain};

use crate::input;
use crate::output::{self, Format};

/// Arguments of `signet verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The trust bundle: PEM CA certificates or a SPIFFE JWK Set.
    #[arg(long, value_name = "FILE")]
    bundle: PathBuf,
    /// Also require the leaf to carry exactly this SPIFFE ID.
    #[arg(long, value_name = "ID")]
    spiffe_id: Option<SpiffeId>,
    /// The trust domain the bundle belongs to (default: that of --spiffe-id,
    /// else that of the leaf).
    #[arg(long, value_name = "TD")]
    trust_domain: Option<TrustDomain>,
    /// The chain to check, leaf first, then intermediates (PEM, or one DER
    /// certificate); `-` reads stdin.
    #[arg(value_name = "CHAIN")]
    chain: PathBuf,
}

#[derive(Debug, Serialize)]
struct Outcome {
    ok: bool,
    spiffe_id: Option<String>,
    not_after: Option<String>,
    error: Option<String>,
}

/// Runs `signet verify`. Every failure, including unreadable input, is
/// reported as `FAILED: <reason>` on stderr with exit code 1, so scripts need
/// only the exit code.
///
/// # Errors
/// Only when the outcome cannot be written.
pub fn run(args: &Args, format: Format) -> anyhow::Result<ExitCode> {
    let result = check(args, SystemTime::now());
    let outcome = match &result {
        Ok(svid) => Outcome {
            ok: true,
            spiffe_id: Some(svid.spiffe_id.to_string()),
            not_after: Some(output::rfc3339(unix_seconds(svid.not_after))),
            error: None,
        },
        Err(e) => Outcome {
            ok: false,
            spiffe_id: None,
            not_after: None,
            error: Some(format!("{e:#}")),
        },
    };
    match format {
        Format::Json => output::print_json(&outcome)?,
        Format::Text => match (&outcome.spiffe_id, &outcome.not_after, &outcome.error) {
            (Some(id), Some(expires), _) => {
                output::print(&format!("OK: {id} (expires {expires})\n"))?
            }
            (_, _, error) => {
                let reason = error.as_deref().unwrap_or("unknown error");
                eprintln!("FAILED: {}", output::printable(reason));
            }
        },
    }
    Ok(if outcome.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn check(args: &Args, now: SystemTime) -> anyhow::Result<VerifiedSvid> {
    let chain_bytes = input::read(&args.chain)?;
    let (chain, skipped) = input::certificates(&chain_bytes)
        .with_context(|| format!("chain {}", args.chain.display()))?;
    if !skipped.is_empty() {
        eprintln!(
            "note: skipping {} PEM block(s) that are not certificates",
            skipped.len()
        );
    }
    let bundle_bytes = input::read(&args.bundle)?;
    let trust_domain = bundle_trust_domain(args, &chain)?;
    let bundle = TrustBundle::parse(trust_domain, &bundle_bytes)
        .with_context(|| format!("bundle {}", args.bundle.display()))?;
    let verified = match &args.spiffe_id {
        Some(expected) => verify_x509_svid_for(&chain, &bundle, expected, now)?,
        None => verify_x509_svid(&chain, &bundle, now)?,
    };
    Ok(verified)
}

/// The trust domain to read the bundle as. A bundle file does not say whose it
/// is, so the caller's word comes first: --trust-domain, then the trust domain
/// of --spiffe-id. Taking it from the leaf means trusting the bundle for
/// whatever domain the leaf claims; that is what a bare `verify` asks.
fn bundle_trust_domain(
    args: &Args,
    chain: &[rustls_pki_types::CertificateDer<'static>],
) -> anyhow::Result<TrustDomain> {
    if let Some(td) = &args.trust_domain {
        return Ok(td.clone());
    }
    if let Some(id) = &args.spiffe_id {
        return Ok(id.trust_domain().clone());
    }
    let leaf_id = chain
        .first()
        .and_then(|leaf| check_certificate(leaf).ok())
        .and_then(|report| report.spiffe_id);
    match leaf_id {
        Some(id) => Ok(id.trust_domain().clone()),
        // Validation rejects a leaf without a SPIFFE ID before it looks at
        // the trust domain, so any valid name gives the precise reason.
        None => TrustDomain::new("unknown").context("placeholder trust domain"),
    }
}
