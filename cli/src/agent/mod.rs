//! `signet agent ...`: the SPIFFE Workload API as a person (or a script)
//! sees it. Every command is a Workload API client on the local socket of
//! signet-agent (or of any Workload API server), attested as this very
//! process: it shows what this process is entitled to, nothing more.

mod bundle;
mod client;
mod endpoint;
mod jwt;
mod svid;

use std::path::PathBuf;

use anyhow::Context as _;
use signet_identity::{SpiffeId, TrustDomain};

use crate::output::Format;

pub use endpoint::DEFAULT_SOCKET;

/// Arguments of `signet agent`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The Workload API socket: a path, `unix:/path` or `unix:///path`.
    #[arg(
        long,
        global = true,
        env = "SPIFFE_ENDPOINT_SOCKET",
        default_value = DEFAULT_SOCKET,
        value_parser = endpoint::parse,
        value_name = "PATH"
    )]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// This process's SVIDs.
    #[command(subcommand)]
    Svid(SvidCommand),
    /// The trust bundles the agent serves.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// JWT-SVIDs of other workloads.
    #[command(subcommand)]
    Jwt(JwtCommand),
}

#[derive(Debug, clap::Subcommand)]
enum SvidCommand {
    /// Fetch the X509-SVIDs (or, with --jwt, JWT-SVIDs) of this process.
    Fetch(FetchArgs),
    /// Print a line for every X509-SVID update until Ctrl-C.
    Watch,
}

#[derive(Debug, clap::Args)]
struct FetchArgs {
    /// Write svid.pem, svid_key.pem (mode 0600) and bundle.pem of the default
    /// SVID to DIR (created if missing).
    #[arg(long, value_name = "DIR", conflicts_with = "jwt")]
    out: Option<PathBuf>,
    /// With --out: also write svid_N.pem, svid_N_key.pem and bundle_N.pem
    /// for every SVID, N counting from 0 in the server's order.
    #[arg(long, requires = "out")]
    all: bool,
    /// Fetch JWT-SVIDs instead (needs --audience).
    #[arg(long, requires = "audiences")]
    jwt: bool,
    /// An audience of the JWT-SVIDs (repeatable).
    #[arg(long = "audience", value_name = "AUD", requires = "jwt")]
    audiences: Vec<String>,
    /// Only the JWT-SVID of this identity.
    #[arg(long, value_name = "ID", requires = "jwt")]
    spiffe_id: Option<SpiffeId>,
}

#[derive(Debug, clap::Subcommand)]
enum BundleCommand {
    /// Print the trust bundles: PEM CA certificates, or a SPIFFE bundle (JWK Set).
    Show {
        /// PEM holds the X.509 authorities only; jwks holds those and the
        /// JWT authorities, as a SPIFFE bundle.
        #[arg(long, value_enum, default_value_t = bundle::BundleFormat::Pem)]
        format: bundle::BundleFormat,
        /// Only this trust domain's bundle (needed for jwks when the agent
        /// serves several).
        #[arg(long, value_name = "TD")]
        trust_domain: Option<TrustDomain>,
    },
}

#[derive(Debug, clap::Subcommand)]
enum JwtCommand {
    /// Have the agent validate a JWT-SVID for an audience of this process.
    Validate {
        /// The audience the token must name (this process's own).
        #[arg(long, value_name = "AUD")]
        audience: String,
        /// The token (JWS compact serialization).
        #[arg(value_name = "TOKEN")]
        token: String,
    },
}

/// Runs `signet agent ...`.
///
/// # Errors
/// When the agent cannot be reached or refuses the call, or when local files
/// cannot be written.
pub fn run(args: Args, format: Format) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut client = client::connect(&args.socket).await?;
        match args.command {
            Command::Svid(SvidCommand::Fetch(fetch)) if fetch.jwt => {
                jwt::fetch(&mut client, fetch.audiences, fetch.spiffe_id, format).await
            }
            Command::Svid(SvidCommand::Fetch(fetch)) => match fetch.out {
                Some(dir) => svid::fetch_to_dir(&mut client, &dir, fetch.all, format).await,
                None => svid::fetch(&mut client, format).await,
            },
            Command::Svid(SvidCommand::Watch) => svid::watch(&mut client, format).await,
            Command::Bundle(BundleCommand::Show {
                format: bundle_format,
                trust_domain,
            }) => bundle::show(&mut client, bundle_format, trust_domain.as_ref()).await,
            Command::Jwt(JwtCommand::Validate { audience, token }) => {
                jwt::validate(&mut client, audience, token, format).await
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(flatten)]
        agent: Args,
    }

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        TestCli::try_parse_from(std::iter::once("signet-agent").chain(args.iter().copied()))
            .map(|c| c.agent)
    }

    #[test]
    fn the_socket_takes_every_spelling_anywhere_on_the_line() {
        for spelling in ["/run/a.sock", "unix:/run/a.sock", "unix:///run/a.sock"] {
            let args = parse(&["svid", "fetch", "--socket", spelling]).unwrap();
            assert_eq!(args.socket, PathBuf::from("/run/a.sock"), "{spelling}");
            let args = parse(&["--socket", spelling, "bundle", "show"]).unwrap();
            assert_eq!(args.socket, PathBuf::from("/run/a.sock"), "{spelling}");
        }
        assert!(parse(&["--socket", "tcp://127.0.0.1:1", "svid", "watch"]).is_err());
    }

    #[test]
    fn jwt_fetch_needs_an_audience_and_audiences_need_jwt() {
        assert!(parse(&["svid", "fetch", "--jwt"]).is_err());
        assert!(parse(&["svid", "fetch", "--audience", "x"]).is_err());
        assert!(parse(&["svid", "fetch", "--jwt", "--audience", "x", "--out", "d"]).is_err());
        let args = parse(&[
            "svid",
            "fetch",
            "--jwt",
            "--audience",
            "a",
            "--audience",
            "b",
            "--spiffe-id",
            "spiffe://example.org/web",
        ])
        .unwrap();
        let Command::Svid(SvidCommand::Fetch(fetch)) = args.command else {
            panic!("{:?}", args.command);
        };
        assert!(fetch.jwt);
        assert_eq!(fetch.audiences, ["a", "b"]);
        assert_eq!(
            fetch.spiffe_id.map(|id| id.to_string()).as_deref(),
            Some("spiffe://example.org/web")
        );
    }

    #[test]
    fn all_needs_out() {
        assert!(parse(&["svid", "fetch", "--all"]).is_err());
        assert!(parse(&["svid", "fetch", "--all", "--out", "d"]).is_ok());
    }
}
