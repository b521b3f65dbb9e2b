//! signet-agent: the per-node agent. The Workload API, SDS and workload
//! attestation come with the next milestone; today it only reports that.

fn main() -> std::process::ExitCode {
    eprintln!("signet-agent: not implemented yet (see the node-agent milestone)");
    std::process::ExitCode::from(2)
}
