//! signet-agent: attests the node to signet-ca, attests workloads by their
//! unix peer credentials, keeps their SVIDs fresh, and serves them over the
//! SPIFFE Workload API and Envoy SDS.

pub mod attest;
pub mod config;
pub mod files;
pub mod manager;
pub mod metrics;
pub mod node;
pub mod public_dir;
pub mod run;
pub mod sds;
pub mod state;
pub mod workload_api;

#[cfg(test)]
mod test_pki;
