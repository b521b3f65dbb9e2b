//! signet-agent: the per-node agent. See `signet-agent run --help`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use signet_node_agent::config::{Config, Settings};
use signet_service::LogFormat;

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
    signet_service::run_daemon(
        "signet-agent",
        Config::load(config.as_deref(), settings),
        |c| {
            if c.log_json {
                LogFormat::Json
            } else {
                LogFormat::Text
            }
        },
        signet_node_agent::run::run,
    )
}
