//! The trust lifecycle proven under live traffic (issue 7, Deliver 5 a-d):
//! real signet-ca, signet-agent and Envoy processes, requests flowing the
//! whole time, each on a new mTLS handshake, and not one allowed to fail.
//!
//! - `rotation`: two full root rotations and two intermediate rotations,
//!   driven by the CA's own schedule with short lifetimes;
//! - `taint`: the active intermediate tainted (every SVID re-issued within
//!   the window), then revoked (an SVID still under it is refused by Envoy);
//! - `jwt`: JWT key rotations while one workload mints and another (py-spiffe)
//!   validates;
//! - `federation`: two trust domains, each in its own network namespace,
//!   federated both ways over https_spiffe; a root rotation on one side and
//!   the deletion of the relationship.
//!
//! The Envoys are never restarted: each keeps its PID to the end.
//!
//! Needs the workspace binaries (`cargo build --workspace --bins`), Envoy
//! (`SIGNET_ENVOY`), `setpriv`, openssl, `ip` (iproute2), root, and
//! `SIGNET_PYTHON` with py-spiffe for `jwt` (scripts/test.sh sets these up).

// This whole crate is test code: a failed expectation should panic with
// its message, in helpers as in the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod federation;
mod jwt;
mod rotation;
mod taint;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use signet_proto::ca::v1 as pb;
use signet_tests::{
    AgentProcess, CaProcess, EnvoyOptions, EnvoyProcess, SERVER_BODY, Traffic, Validation,
};

/// One request through the mesh every this often.
const REQUEST_INTERVAL: Duration = Duration::from_millis(200);

/// How often the tests look at what the Envoys and the CA hold.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);

/// A CA, its agent, and a server and a client Envoy on that agent.
struct Mesh {
    ca: CaProcess,
    agent: AgentProcess,
    client_id: String,
    server: EnvoyProcess,
    client: EnvoyProcess,
    /// The Envoys' PIDs at the start: they must never change.
    pids: [u32; 2],
}

impl Mesh {
    /// Starts an agent on `ca`, registers `/client` and `/server` for the
    /// two uids with `ttl`, and starts the server then the client Envoy,
    /// both LIVE and answering on return.
    async fn start(
        ca: CaProcess,
        node: &str,
        uids: [u32; 2],
        ttl: &str,
        validation: [Validation; 2],
    ) -> Self {
        let agent = AgentProcess::start(&ca, node, &[]).await.unwrap();
        let client_id = ca.id("/client");
        let server_id = ca.id("/server");
        register(&ca, node, &client_id, uids[0], ttl, &[]).await;
        register(&ca, node, &server_id, uids[1], ttl, &[]).await;
        let sds = agent.sds_socket();
        let server = EnvoyProcess::start(
            EnvoyOptions::server("server", uids[1], sds, &client_id).validation(validation[1]),
        )
        .await
        .unwrap();
        let client = EnvoyProcess::start(
            EnvoyOptions::client("client", uids[0], sds, server.port().unwrap(), &server_id)
                .validation(validation[0]),
        )
        .await
        .unwrap();
        let first = client.get("/").await.unwrap();
        assert_eq!(
            (first.status, first.body.as_str()),
            (200, SERVER_BODY),
            "the first request through client → server failed\n{}\n{}",
            client.log(),
            server.log()
        );
        let pids = [client.pid().unwrap(), server.pid().unwrap()];
        Self {
            ca,
            agent,
            client_id,
            server,
            client,
            pids,
        }
    }

    fn envoys(&self) -> [&EnvoyProcess; 2] {
        [&self.client, &self.server]
    }

    /// Panics with everything worth seeing when any request failed.
    async fn assert_no_failures(&self, traffic: &Traffic, when: &str) {
        assert_no_failures(traffic, when, &self.envoys(), &[&self.agent]).await;
    }

    /// The Envoys still run under the PIDs they started with.
    fn assert_never_restarted(&self) {
        let now = [self.client.pid(), self.server.pid()];
        assert_eq!(
            now,
            [Some(self.pids[0]), Some(self.pids[1])],
            "an Envoy was restarted or died"
        );
    }

    /// Stops every process by its PID, Envoys first.
    async fn shut_down(mut self) {
        for envoy in [&mut self.client, &mut self.server] {
            envoy.stop().await.unwrap();
        }
        self.agent.stop().await.unwrap();
        self.ca.stop().await.unwrap();
    }
}

/// `signet ca entry create` for a workload of `node` running as `uid`.
async fn register(
    ca: &CaProcess,
    node: &str,
    spiffe_id: &str,
    uid: u32,
    ttl: &str,
    federates_with: &[&str],
) {
    let selector = format!("unix:uid:{uid}");
    let mut args = vec![
        "--spiffe-id",
        spiffe_id,
        "--parent-node",
        node,
        "--selector",
        &selector,
        "--ttl",
        ttl,
    ];
    for td in federates_with {
        args.extend(["--federates-with", td]);
    }
    ca.entry_cli(&args).await.unwrap();
}

/// Every request of `traffic` so far succeeded; otherwise the message
/// shows what each Envoy holds and the agents' logs.
async fn assert_no_failures(
    traffic: &Traffic,
    when: &str,
    envoys: &[&EnvoyProcess],
    agents: &[&AgentProcess],
) {
    let failures = traffic.failures();
    if failures.is_empty() {
        return;
    }
    let mut summaries = Vec::new();
    for envoy in envoys {
        summaries.push(envoy.summary().await);
        summaries.push(format!("--- {} log ---\n{}", envoy.name(), envoy.log()));
    }
    let logs: Vec<String> = agents
        .iter()
        .map(|a| format!("--- agent {} log ---\n{}", a.node_name(), a.log()))
        .collect();
    panic!(
        "{} of {} requests failed {when}:\n{}\n--- Envoys now ---\n{}\n{}",
        failures.len(),
        traffic.outcomes().len(),
        failures.join("\n"),
        summaries.join("\n"),
        logs.join("\n")
    );
}

/// Traffic ran the whole time: at least half the requests it should have
/// sent were sent (a stalled driver would pass the failure check by
/// sending nothing).
fn assert_traffic_flowed(outcomes: usize, took: Duration) {
    let expected = took.as_millis() / REQUEST_INTERVAL.as_millis() / 2;
    assert!(
        outcomes as u128 >= expected,
        "only {outcomes} requests in {took:?}"
    );
}

/// Every authority the CA knows, from ListAuthorities.
async fn authorities(ca: &CaProcess) -> Vec<pb::Authority> {
    ca.admin()
        .await
        .unwrap()
        .list_authorities(pb::ListAuthoritiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .authorities
}

/// The one active authority of `kind`.
async fn active(ca: &CaProcess, kind: pb::AuthorityKind) -> pb::Authority {
    let all = authorities(ca).await;
    let mut found: Vec<pb::Authority> = all
        .into_iter()
        .filter(|a| a.kind == i32::from(kind) && a.state == i32::from(pb::AuthorityState::Active))
        .collect();
    assert_eq!(found.len(), 1, "not exactly one active {kind:?}: {found:?}");
    found.remove(0)
}

/// `signet ca --output json authority ARGS`, which must succeed.
async fn authority_cli(ca: &CaProcess, args: &[&str]) -> Value {
    let mut full = vec!["--output", "json", "authority"];
    full.extend_from_slice(args);
    let out = ca.signet_ca(full).await.unwrap().ok().unwrap();
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("`signet ca authority {args:?}` printed no JSON ({e}): {out}"))
}

/// The serial of a DER certificate as Envoy's `/certs` writes serials.
fn serial_of(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    normal_serial(&hex(cert.tbs_certificate.raw_serial()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase, without leading zeros: the same serial written by two tools.
fn normal_serial(s: &str) -> String {
    let s = s.to_ascii_lowercase().replace(':', "");
    let trimmed = s.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// For each Envoy, the intermediates (normalised serials) its loaded SVIDs
/// chain through right now.
async fn intermediates_in_use(envoys: &[&EnvoyProcess]) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for envoy in envoys {
        let chains = envoy.secret_chains().await.unwrap();
        let mut ints: Vec<String> = chains
            .iter()
            .filter_map(|c| c.get(1))
            .map(|der| serial_of(der))
            .collect();
        ints.sort();
        ints.dedup();
        out.insert(envoy.name().to_owned(), ints);
    }
    out
}

/// The python interpreter with py-spiffe (`SIGNET_PYTHON`); its absence
/// fails the test (the existing convention).
fn python() -> String {
    std::env::var("SIGNET_PYTHON").unwrap_or_else(|_| {
        panic!("SIGNET_PYTHON is not set: it must name a python with py-spiffe (scripts/test.sh)")
    })
}
