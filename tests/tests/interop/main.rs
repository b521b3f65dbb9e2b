//! Interop: the agent's Workload API and SDS judged by clients of another
//! gRPC implementation (grpc-core, through Python's grpcio), started as
//! processes next to a real signet-ca and signet-agent:
//!
//! - py-spiffe (PyPI `spiffe`), used as an application would use it, for
//!   every Workload API RPC and a watch across a rotation (`pyspiffe.rs`);
//! - raw grpcio and bare HTTP/2 (`h2`) clients sending each `:authority`
//!   form seen in the wild over unix sockets, against both servers
//!   (`authority.rs`).
//!
//! The clients are the scripts in `tests/python/`; each prints a JSON
//! report, and this test judges it with openssl and x509-parser. They run
//! under `SIGNET_PYTHON` (a Python with spiffe, grpcio, grpcio-tools and h2;
//! `scripts/test.sh` makes one). Without it the tests say so loudly and pass
//! without checking anything.
//!
//! Needs the workspace binaries: `cargo build --workspace --bins` first.

// This whole crate is test code: a failed expectation should panic with
// its message, in helpers as in the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod authority;
mod judges;
mod pyspiffe;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::Value;
use signet_tests::{AgentProcess, CaOptions, CaProcess, Purpose, openssl_verify, read_certs};

/// Longest wait for anything the agent does on its own (attest, fetch
/// entries, get SVIDs signed).
pub const WAIT: Duration = Duration::from_secs(10);

/// Longest a Python client may run: each retries for at most 20 s itself.
const PYTHON_TIMEOUT: Duration = Duration::from_secs(60);

/// The uid the unprivileged clients run under when this test runs as root
/// (`nobody` on Debian).
pub const UNPRIVILEGED_UID: u32 = 65534;

/// The Python interpreter of `SIGNET_PYTHON`. A test without it fails
/// rather than pass having checked nothing; scripts/test.sh always sets it.
pub fn python(test: &str) -> PathBuf {
    match std::env::var_os("SIGNET_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "{test}: SIGNET_PYTHON is not set. Point it at a Python with spiffe==0.3.2, \
             grpcio, grpcio-tools and h2 (scripts/test.sh creates .venv-py and sets it)."
        ),
    }
}

/// The uid of this test process.
pub fn my_uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// A CA, and an agent (node `node-a`) joined to it. Fields drop in order:
/// the agent goes first.
pub struct Node {
    pub agent: AgentProcess,
    pub ca: CaProcess,
    pub python: PathBuf,
}

impl Node {
    /// A default CA and an agent; the agent's directory is opened (o+x) so
    /// that other uids reach its sockets, as they would in /run.
    pub async fn start(python: PathBuf) -> Self {
        let ca = CaProcess::start(CaOptions::default()).await.unwrap();
        let agent = AgentProcess::start(&ca, "node-a", &[]).await.unwrap();
        // A temporary directory is 0700; the sockets themselves are 0666.
        std::fs::set_permissions(agent.scratch_dir(), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        Self { agent, ca, python }
    }

    /// Registers `spiffe://<td><path>` for workloads of `uid` on this node,
    /// with further `signet ca entry create` flags; returns the SPIFFE ID.
    pub async fn entry(&self, path: &str, uid: u32, extra: &[&str]) -> String {
        let id = self.ca.id(path);
        let selector = format!("unix:uid:{uid}");
        let mut args = vec![
            "--spiffe-id",
            &id,
            "--parent-node",
            self.agent.node_name(),
            "--selector",
            &selector,
        ];
        args.extend_from_slice(extra);
        self.ca.entry_cli(&args).await.unwrap();
        id
    }

    /// Waits until the Workload API gives this process (through the `spiffe`
    /// crate) an SVID for `id`, so that a client started next finds it.
    pub async fn wait_for_svid(&self, id: &str) {
        let client = spiffe::WorkloadApiClient::connect_to(self.agent.workload_api_endpoint())
            .await
            .unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            let last = match client.fetch_all_x509_svids().await {
                Ok(svids) if svids.iter().any(|s| s.spiffe_id().to_string() == id) => return,
                Ok(_) => "other SVIDs only".to_owned(),
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

    /// Runs `tests/python/<script> ARGS` under `uid` (through `setpriv` when
    /// that is not this process's uid), and returns its JSON report, or
    /// what went wrong (exit status and both outputs).
    pub async fn run_python(&self, script: &str, args: &[&str], uid: u32) -> Result<Value, String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("python")
            .join(script);
        let mut cmd = if uid == my_uid() {
            let mut cmd = tokio::process::Command::new(&self.python);
            cmd.arg(&path);
            cmd
        } else {
            let mut cmd = tokio::process::Command::new("setpriv");
            let id = uid.to_string();
            cmd.args(["--reuid", &id, "--regid", &id, "--clear-groups"])
                .arg(&self.python)
                .arg(&path);
            cmd
        };
        cmd.args(args)
            // Never write __pycache__ into the source tree.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let command = format!("{script} {}", args.join(" "));
        let output = tokio::time::timeout(PYTHON_TIMEOUT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("`{command}` ran for more than {PYTHON_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("cannot start `{command}`: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            return Err(format!(
                "`{command}` (uid {uid}) exited with {}\n--- stderr ---\n{stderr}--- stdout ---\n{stdout}",
                output.status
            ));
        }
        serde_json::from_str(&stdout)
            .map_err(|e| format!("`{command}` printed no JSON report ({e}):\n{stdout}\n{stderr}"))
    }

    /// [`check_chain`] under this CA's roots.
    pub fn check_chain(&self, chain_pem: &str, id: &str) -> Result<(), String> {
        check_chain(&self.ca.bundle_path(), chain_pem, id)
    }

    /// [`check_bundle`] against this CA's roots.
    pub fn check_bundle(&self, bundle_pem: &str) -> Result<(), String> {
        check_bundle(&self.ca.bundle_path(), bundle_pem)
    }
}

/// Checks a chain a client received (`chain_pem` of a report, leaf first):
/// it names `id` as the leaf's only URI SAN, and `openssl verify` accepts it
/// as a TLS client certificate under the roots in `roots_pem`. Returns what
/// is wrong, if anything.
pub fn check_chain(roots_pem: &Path, chain_pem: &str, id: &str) -> Result<(), String> {
    let chain = certs_from_pem(chain_pem)?;
    let uris = uri_sans(&chain[0])?;
    if uris != [id] {
        return Err(format!("the leaf's URI SANs are {uris:?}, not [{id:?}]"));
    }
    let (ok, text) =
        openssl_verify(Purpose::SslClient, roots_pem, &chain).map_err(|e| e.to_string())?;
    if !ok {
        return Err(format!("openssl verify refused the chain: {text}"));
    }
    Ok(())
}

/// Checks a bundle a client received (`bundle_pem` of a report): exactly
/// the roots in `roots_pem` (the CA's bundle.pem).
pub fn check_bundle(roots_pem: &Path, bundle_pem: &str) -> Result<(), String> {
    let der = |certs: Vec<CertificateDer<'static>>| {
        let mut v: Vec<Vec<u8>> = certs.iter().map(|c| c.to_vec()).collect();
        v.sort();
        v
    };
    let got = der(certs_from_pem(bundle_pem)?);
    let want = der(read_certs(roots_pem).map_err(|e| format!("{e:#}"))?);
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "the bundle holds {} certificate(s) that are not the {} root(s) of {}",
            got.len(),
            want.len(),
            roots_pem.display()
        ))
    }
}

/// Every certificate of a PEM text, or what is wrong with it.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the PEM text".to_owned());
    }
    Ok(certs)
}

/// The URI SANs of a certificate.
pub fn uri_sans(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| e.to_string())?;
    let Some(san) = parsed
        .subject_alternative_name()
        .map_err(|e| e.to_string())?
    else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect())
}

/// `report[key]` as a string (panics, with the report, when it is not one).
pub fn text<'a>(report: &'a Value, key: &str) -> &'a str {
    report[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key:?} in the report:\n{report:#}"))
}
