//! signet-agent: the per-node agent. See `signet-agent run --help`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use signet_node_agent::config::{Config, Settings};

#[derive(Parser)]
#[command(
    name = "signet-agent",
    version,
    about = "Signet's node agent: Workload API and SDS for this node's workloads"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent.
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
    let config = match Config::load(config.as_deref(), settings) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("signet-agent: configuration error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIGNET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("signet-agent: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(signet_node_agent::run::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "signet-agent failed");
            eprintln!("signet-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
