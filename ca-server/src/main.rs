//! signet-ca: the control-plane CA. See `signet-ca run --help`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use signet_ca_server::config::{Config, Settings};
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
        settings: Settings,
    },
}

fn main() -> std::process::ExitCode {
    let Command::Run { config, settings } = Cli::parse().command;
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
