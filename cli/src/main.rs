//! `signet`: inspect and verify SPIFFE certificates and bundles, and
//! administer signet-ca over its local admin socket; be a Workload API
//! client of signet-agent.

// Tests may panic on the unexpected; the program may not.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod admin_client;
mod agent;
mod ca;
mod certinfo;
mod files;
mod grpc;
mod input;
mod inspect;
mod install;
mod output;
mod ttl;
mod verify;

use std::process::ExitCode;

use clap::Parser;

/// Inspect and verify SPIFFE X509-SVIDs and trust bundles; administer signet-ca.
#[derive(Debug, Parser)]
#[command(name = "signet", version)]
struct Cli {
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = output::Format::Text)]
    output: output::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Show the certificates in a PEM/DER file, chain or bundle, with X509-SVID findings.
    Inspect(inspect::Args),
    /// Validate an X509-SVID chain against a trust bundle (exit 1 when invalid).
    Verify(verify::Args),
    /// Administer signet-ca through its admin socket.
    Ca(ca::Args),
    /// Talk to the SPIFFE Workload API (signet-agent) as this process's workload.
    Agent(agent::Args),
    /// Write the Kubernetes manifests of the Signet Helm chart (`install --render`).
    Install(install::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => inspect::run(&args, cli.output).map(|()| ExitCode::SUCCESS),
        Command::Verify(args) => verify::run(&args, cli.output),
        Command::Ca(args) => ca::run(args, cli.output).map(|()| ExitCode::SUCCESS),
        Command::Agent(args) => agent::run(args, cli.output).map(|()| ExitCode::SUCCESS),
        Command::Install(args) => install::run(&args).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {}", output::printable(&format!("{e:#}")));
        ExitCode::FAILURE
    })
}
