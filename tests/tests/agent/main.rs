//! Integration tests of signet-agent: each test starts its own signet-ca and
//! a signet-agent joined to it, registers workloads through the CA, and
//! judges what the agent serves with the `spiffe` crate (an independent
//! Workload API client), a raw client of the standard's proto, openssl and
//! the `signet` CLI. This test process is the attested workload.
//!
//! Needs the workspace binaries: `cargo build --workspace --bins` first.

// This whole crate is test code: a failed expectation should panic with
// its message, in helpers as in the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bootstrap;
mod cli;
mod delivery;
mod denied;
mod evicted;
mod failover;
mod federation;
mod jwt;
mod k8s_pods;
mod metrics;
mod node_state;
mod pod_policy;
mod postgres;
mod propagation;
mod replica_chaos;
mod replicas;
mod restart;
mod rotation;
mod status;
mod taint;
mod unprivileged;
mod x509;

use std::os::unix::fs::MetadataExt as _;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use rustls_pki_types::CertificateDer;
use signet_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use signet_tests::{AgentProcess, CaOptions, CaProcess};
use tonic::transport::{Channel, Endpoint, Uri};

/// Longest wait for anything the agent does on its own (attest, fetch
/// entries, get SVIDs signed).
pub const WAIT: Duration = Duration::from_secs(10);

/// A CA, and an agent (node `node-a`) joined to it. Fields drop in order:
/// the agent goes first.
pub struct Node {
    pub agent: AgentProcess,
    pub ca: CaProcess,
}

impl Node {
    /// A default CA and an agent with `agent_args`.
    pub async fn start(agent_args: &[&str]) -> Self {
        Self::start_with(CaOptions::default(), agent_args).await
    }

    /// A CA with `opts` and an agent with `agent_args`.
    pub async fn start_with(opts: CaOptions, agent_args: &[&str]) -> Self {
        let ca = CaProcess::start(opts).await.unwrap();
        let agent = AgentProcess::start(&ca, "node-a", agent_args)
            .await
            .unwrap();
        Self { agent, ca }
    }

    /// Registers `spiffe://<td><path>` for workloads on this node matching
    /// `selector` (`unix:uid:0`...), with further `signet ca entry create`
    /// flags; returns the entry ID.
    pub async fn entry(&self, path: &str, selector: &str, extra: &[&str]) -> String {
        let id = self.ca.id(path);
        let mut args = vec![
            "--spiffe-id",
            &id,
            "--parent-node",
            self.agent.node_name(),
            "--selector",
            selector,
        ];
        args.extend_from_slice(extra);
        self.ca.entry_cli(&args).await.unwrap()
    }

    /// A `spiffe` crate client of the agent's Workload API.
    pub async fn client(&self) -> spiffe::WorkloadApiClient {
        spiffe::WorkloadApiClient::connect_to(self.agent.workload_api_endpoint())
            .await
            .unwrap()
    }

    /// A client of our own generated code that adds no header by itself.
    pub async fn raw_client(&self) -> SpiffeWorkloadApiClient<Channel> {
        let socket = self.agent.workload_api_socket().to_owned();
        let channel = Endpoint::from_static("http://workload.invalid")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        SpiffeWorkloadApiClient::new(channel)
    }

    /// Waits until the Workload API gives this process an SVID for `path`,
    /// and returns it.
    pub async fn wait_for_svid(&self, path: &str) -> spiffe::X509Svid {
        let id = self.ca.id(path);
        let client = self.client().await;
        let deadline = Instant::now() + WAIT;
        loop {
            let last = match client.fetch_all_x509_svids().await {
                Ok(svids) => {
                    if let Some(svid) = svids.into_iter().find(|s| s.spiffe_id().to_string() == id)
                    {
                        return svid;
                    }
                    "other SVIDs only".to_owned()
                }
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "no SVID for {id} within {WAIT:?} (last answer: {last})\n--- agent log ---\n{}",
                self.agent.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The selector the agent's unix attestor gives this very test process.
pub fn me() -> String {
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    format!("unix:uid:{uid}")
}

/// The DER chain of a `spiffe` crate SVID, leaf first.
pub fn chain_of(svid: &spiffe::X509Svid) -> Vec<CertificateDer<'static>> {
    svid.cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect()
}

/// The leaf's serial, lowercase hex, as the CA reports serials.
pub fn serial_of(svid: &spiffe::X509Svid) -> String {
    let leaf = &chain_of(svid)[0];
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
    hex_lower(cert.raw_serial())
}

fn hex_lower(bytes: &[u8]) -> String {
    // Without the DER sign byte, as the CA writes serials.
    let bytes = match bytes {
        [0, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
