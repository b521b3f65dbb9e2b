//! Signet's integration-test harness: starts the real `signet-ca` binary on
//! loopback and a unix socket, talks to it with real clients (tonic over TLS,
//! the `signet` CLI) and judges what it issues with verifiers that share no
//! code with it (openssl, rustls/webpki).
//!
//! Used by the tests in `tests/tests/` and by the `signet-bench` benchmark.
//! The binaries are not built here: run `cargo build --workspace --bins`
//! first (see [`binary`] for where they are looked up).
//!
//! A typical test:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use signet_tests::{CaOptions, CaProcess, attest_node};
//!
//! let ca = CaProcess::start(CaOptions::default()).await?;
//! let node = attest_node(&ca, "node-a").await?;
//! let mut client = ca.node_client(Some(node.tls_identity())).await?;
//! # let _ = &mut client;
//! # Ok(())
//! # }
//! ```
//!
//! Every process the harness starts is owned by a value whose `Drop` kills it
//! by its PID and waits for it, so a failing test leaves nothing behind; a
//! test that panics also prints the CA's log.
//!
//! Separate hosts on one machine: [`NetnsPair`] makes two network namespaces
//! joined by a veth pair (root only); [`Net`] runs a CA (and so its agent)
//! or an Envoy inside one, and reaches their ports from the test.
//!
//! Environment: `SIGNET_BIN_DIR` points at the binaries (see [`binary`]);
//! `SIGNET_LOG` is passed through to signet-ca (readiness does not depend on
//! its log, so any filter works).

mod agent;
mod bins;
mod ca;
mod envoy;
mod kubelet;
mod metrics;
mod netns;
mod node;
mod pki;
pub mod postgres;
mod process;

pub use agent::{AgentProcess, DEFAULT_PUBLIC_DIR};
pub use bins::{CliOutput, binary, signet};
pub use ca::{AuditRow, CaOptions, CaProcess, DEFAULT_TRUST_DOMAIN, health_check};
pub use envoy::{
    EnvoyOptions, EnvoyProcess, HttpResponse, LoadedCert, Outcome, Role, SERVER_BODY,
    SerialHistory, Traffic, Validation, envoy_binary, http_get, http_get_in,
};
pub use kubelet::{FakeKubelet, emulate_proc, pod_json};
pub use metrics::{Sample, Scrape, free_loopback_addr, scrape, scrape_until};
pub use netns::{ADDR_A, ADDR_B, Net, NetNs, NetnsPair};
pub use node::{
    NodeIdentity, attest_node, attest_with_token, chain_of, create_token, new_key_and_csr,
};
pub use pki::{
    Purpose, SvidFiles, crypto_provider, mtls_client_config, mtls_server_config, openssl_verify,
    pem_chain, read_certs, read_private_key, root_store, webpki_verify_client, write_pem_chain,
};
