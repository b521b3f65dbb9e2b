//! `signet ca federation ...`: relationships with other trust domains,
//! whose bundles signet-ca fetches from their bundle endpoints.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::Context as _;
use serde::Serialize;
use signet_identity::TrustDomain;
use signet_identity::unix_time::unix_seconds;
use signet_proto::ca::v1 as pb;
use signet_proto::ca::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::grpc::status_error;
use crate::output::{self, Format};

/// Largest file read for --bundle-file or --web-roots-file.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, clap::Subcommand)]
pub(super) enum FederationCommand {
    /// Federate with a trust domain: fetch its bundle from its endpoint.
    Create(CreateArgs),
    /// List the relationships.
    List,
    /// Show one relationship and the bundle last fetched.
    Show {
        /// The remote trust domain.
        trust_domain: TrustDomain,
    },
    /// Delete a relationship: its bundle is no longer given to anyone.
    Delete {
        /// The remote trust domain.
        trust_domain: TrustDomain,
    },
    /// Fetch the remote bundle now.
    Refresh {
        /// The remote trust domain.
        trust_domain: TrustDomain,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(super) enum ProfileArg {
    /// The endpoint presents an X509-SVID of the remote trust domain.
    HttpsSpiffe,
    /// The endpoint presents a Web PKI certificate.
    HttpsWeb,
}

#[derive(Debug, clap::Args)]
pub(super) struct CreateArgs {
    /// The remote trust domain.
    trust_domain: TrustDomain,
    /// Its bundle endpoint, https://host[:port]/path.
    #[arg(long, value_name = "URL")]
    url: String,
    /// How the endpoint authenticates itself.
    #[arg(long, value_enum)]
    profile: ProfileArg,
    /// https_spiffe: the SPIFFE ID the endpoint presents.
    #[arg(long, value_name = "ID")]
    endpoint_spiffe_id: Option<String>,
    /// https_spiffe: the remote trust domain's bundle obtained out of band
    /// (SPIFFE JWK Set or PEM); it authenticates the first fetch.
    #[arg(long, value_name = "FILE")]
    bundle_file: Option<PathBuf>,
    /// https_web: PEM roots to check the endpoint with instead of the
    /// built-in Web PKI roots.
    #[arg(long, value_name = "FILE")]
    web_roots_file: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct FederationView {
    trust_domain: String,
    bundle_endpoint_url: String,
    profile: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    endpoint_spiffe_id: String,
    from_config: bool,
    last_attempt_at: Option<String>,
    last_success_at: Option<String>,
    last_error: String,
    next_fetch_at: Option<String>,
    consecutive_failures: u32,
    bundle_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bundle: Option<crate::inspect::Report>,
}

#[derive(Debug, Serialize)]
struct FederationList<'a> {
    federations: &'a [FederationView],
}

#[derive(Debug, Serialize)]
struct Deleted<'a> {
    deleted: &'a str,
}

fn profile_name(p: i32) -> &'static str {
    match pb::FederationProfile::try_from(p) {
        Ok(pb::FederationProfile::HttpsWeb) => "https_web",
        Ok(pb::FederationProfile::HttpsSpiffe) => "https_spiffe",
        _ => "unknown",
    }
}

fn when(t: i64) -> Option<String> {
    (t > 0).then(|| output::rfc3339(t))
}

fn view(f: pb::Federation, with_bundle: bool, now: i64) -> anyhow::Result<FederationView> {
    let bundle = match (&f.bundle, with_bundle) {
        (Some(b), true) => {
            let bundle = signet_proto::convert::bundle_from_pb(b)
                .context("the server sent a bundle that does not decode")?;
            Some(crate::inspect::bundle_report(
                &bundle,
                Some(bundle.trust_domain()),
                now,
            )?)
        }
        _ => None,
    };
    Ok(FederationView {
        bundle_sequence: f.bundle.as_ref().map(|b| b.sequence),
        trust_domain: f.trust_domain,
        bundle_endpoint_url: f.bundle_endpoint_url,
        profile: profile_name(f.profile),
        endpoint_spiffe_id: f.endpoint_spiffe_id,
        from_config: f.from_config,
        last_attempt_at: when(f.last_attempt_at),
        last_success_at: when(f.last_success_at),
        last_error: f.last_error,
        next_fetch_at: when(f.next_fetch_at),
        consecutive_failures: f.consecutive_failures,
        bundle,
    })
}

impl FederationView {
    fn to_text(&self, now: i64) -> String {
        let mut out = String::new();
        let f = |out: &mut String, label: &str, value: &str| {
            output::field(out, "", label, &output::printable(value));
        };
        let never = || "never".to_owned();
        f(&mut out, "Trust domain", &self.trust_domain);
        f(&mut out, "Endpoint", &self.bundle_endpoint_url);
        f(&mut out, "Profile", self.profile);
        if !self.endpoint_spiffe_id.is_empty() {
            f(&mut out, "Endpoint ID", &self.endpoint_spiffe_id);
        }
        f(
            &mut out,
            "Source",
            if self.from_config {
                "configuration file"
            } else {
                "admin API"
            },
        );
        f(
            &mut out,
            "Last attempt",
            &self.last_attempt_at.clone().unwrap_or_else(never),
        );
        f(
            &mut out,
            "Last success",
            &self.last_success_at.clone().unwrap_or_else(never),
        );
        if !self.last_error.is_empty() {
            f(&mut out, "Last error", &self.last_error);
            f(&mut out, "Failures", &self.consecutive_failures.to_string());
        }
        if let Some(next) = &self.next_fetch_at {
            f(&mut out, "Next fetch", next);
        }
        match &self.bundle {
            Some(report) => {
                out.push('\n');
                out.push_str(&crate::inspect::render(report, now));
            }
            None => f(
                &mut out,
                "Bundle",
                &self.bundle_sequence.map_or_else(
                    || "(not fetched yet)".to_owned(),
                    |s| format!("sequence {s}"),
                ),
            ),
        }
        out
    }
}

fn read_limited(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > MAX_FILE_BYTES {
        anyhow::bail!("{} is larger than {MAX_FILE_BYTES} bytes", path.display());
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

pub(super) fn create_request(args: CreateArgs) -> anyhow::Result<pb::CreateFederationRequest> {
    Ok(pb::CreateFederationRequest {
        trust_domain: args.trust_domain.to_string(),
        bundle_endpoint_url: args.url,
        profile: match args.profile {
            ProfileArg::HttpsSpiffe => pb::FederationProfile::HttpsSpiffe,
            ProfileArg::HttpsWeb => pb::FederationProfile::HttpsWeb,
        }
        .into(),
        endpoint_spiffe_id: args.endpoint_spiffe_id.unwrap_or_default(),
        initial_bundle: args
            .bundle_file
            .as_ref()
            .map(read_limited)
            .transpose()?
            .unwrap_or_default(),
        web_roots_pem: args
            .web_roots_file
            .as_ref()
            .map(read_limited)
            .transpose()?
            .unwrap_or_default(),
    })
}

fn print_one(f: pb::Federation, format: Format) -> anyhow::Result<()> {
    let now = unix_seconds(SystemTime::now());
    let v = view(f, true, now)?;
    match format {
        Format::Json => output::print_json(&v),
        Format::Text => output::print(&v.to_text(now)),
    }
}

pub(super) async fn run(
    client: &mut AdminClient<Channel>,
    cmd: FederationCommand,
    format: Format,
) -> anyhow::Result<()> {
    match cmd {
        FederationCommand::Create(args) => {
            let f = client
                .create_federation(create_request(args)?)
                .await
                .map_err(status_error)?;
            print_one(f.into_inner(), format)
        }
        FederationCommand::Show { trust_domain } => {
            let f = client
                .get_federation(pb::GetFederationRequest {
                    trust_domain: trust_domain.to_string(),
                })
                .await
                .map_err(status_error)?;
            print_one(f.into_inner(), format)
        }
        FederationCommand::Refresh { trust_domain } => {
            let f = client
                .refresh_federation(pb::RefreshFederationRequest {
                    trust_domain: trust_domain.to_string(),
                })
                .await
                .map_err(status_error)?;
            print_one(f.into_inner(), format)
        }
        FederationCommand::Delete { trust_domain } => {
            client
                .delete_federation(pb::DeleteFederationRequest {
                    trust_domain: trust_domain.to_string(),
                })
                .await
                .map_err(status_error)?;
            let td = trust_domain.to_string();
            match format {
                Format::Json => output::print_json(&Deleted { deleted: &td }),
                Format::Text => output::print(&format!("Deleted the relationship with {td}\n")),
            }
        }
        FederationCommand::List => {
            let now = unix_seconds(SystemTime::now());
            let list = client
                .list_federations(pb::ListFederationsRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            let views = list
                .federations
                .into_iter()
                .map(|f| view(f, false, now))
                .collect::<anyhow::Result<Vec<_>>>()?;
            match format {
                Format::Json => output::print_json(&FederationList {
                    federations: &views,
                }),
                Format::Text => {
                    let rows: Vec<Vec<String>> = views
                        .iter()
                        .map(|v| {
                            vec![
                                output::printable(&v.trust_domain),
                                v.profile.to_owned(),
                                v.bundle_sequence
                                    .map_or_else(|| "-".to_owned(), |s| s.to_string()),
                                v.last_success_at.clone().unwrap_or_else(|| "never".into()),
                                output::printable(if v.last_error.is_empty() {
                                    "-"
                                } else {
                                    &v.last_error
                                }),
                            ]
                        })
                        .collect();
                    output::print(&output::table(
                        &[
                            "TRUST DOMAIN",
                            "PROFILE",
                            "SEQUENCE",
                            "LAST SUCCESS",
                            "LAST ERROR",
                        ],
                        &rows,
                    ))
                }
            }
        }
    }
}
