//! signet-ca: the control-plane CA. See `signet-ca run --help`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use signet_ca_server::config::{Config, Settings};
use signet_ca_server::store::{Store, StoreLocation, StoreSetting};
use signet_service::LogFormat;

#[derive(Parser)]
#[command(
    name = "signet-ca",
    version,
    about = "Signet's control-plane certificate authority"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the CA (with no flags: an embedded default in ./signet-data).
    Run {
        /// TOML configuration file; flags override it.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Box<Settings>,
    },
    /// Copy a trust domain from one store to another (e.g. from the
    /// embedded SQLite file to PostgreSQL), keeping its roots. The target
    /// must be empty; the source only has its schema brought up to this
    /// build's (as a start would). Keys stay in the data
    /// directory: run the CA on the new store with the same one.
    Migrate {
        /// The store to copy from: sqlite:PATH (the file must exist) or a URL.
        #[arg(long)]
        from: StoreSetting,
        /// The store to copy into: postgres://… (or sqlite:PATH).
        #[arg(long)]
        to: StoreSetting,
    },
}

fn main() -> std::process::ExitCode {
    let (config, settings) = match Cli::parse().command {
        Command::Run { config, settings } => (config, *settings),
        Command::Migrate { from, to } => {
            return match migrate(&from, &to) {
                Ok(summary) => {
                    println!("{summary}");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
    };
    signet_service::run_daemon(
        "signet-ca",
        Config::load(config.as_deref(), settings),
        |c| {
            if c.log_json {
                LogFormat::Json
            } else {
                LogFormat::Text
            }
        },
        signet_ca_server::server::run,
    )
}

fn migrate(from: &StoreSetting, to: &StoreSetting) -> anyhow::Result<String> {
    use anyhow::Context;
    let (from, to): (StoreLocation, StoreLocation) = (from.parse()?, to.parse()?);
    let (from, to) = (&from, &to);
    if let StoreLocation::Sqlite(path) = from
        && !path.is_file()
    {
        anyhow::bail!("the source store {from} does not exist");
    }
    let source = Store::open_location(from).with_context(|| format!("opening {from}"))?;
    let target = Store::open_location(to).with_context(|| format!("opening {to}"))?;
    let report = signet_ca_server::store::copy::copy(&source, &target)
        .with_context(|| format!("copying {from} to {to}"))?;
    let trust_domain = target.meta("trust_domain")?.unwrap_or_default();
    let counts: Vec<String> = report
        .tables
        .iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect();
    Ok(format!(
        "copied trust domain {trust_domain} from {from} to {to}: {}",
        counts.join(", ")
    ))
}
