//! signet-ca: the control-plane CA. See `signet-ca run --help`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use signet_ca_server::config::{Config, Settings};

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
    let cli = Cli::parse();
    let Command::Run { config, settings } = cli.command;
    let config = match Config::load(config.as_deref(), settings) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("signet-ca: configuration error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(config.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("signet-ca: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(signet_ca_server::server::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "signet-ca failed");
            eprintln!("signet-ca: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIGNET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
