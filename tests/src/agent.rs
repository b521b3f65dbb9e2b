//! A `signet-agent` process owned by a test: joined to a [`CaProcess`] with a
//! fresh join token, its own temporary data directory and sockets, stderr
//! captured to a file, and a `Drop` that kills it by PID.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tempfile::TempDir;

use crate::bins;
use crate::ca::CaProcess;
use crate::netns::Net;

/// signet-agent's default socket directory (its `config::DEFAULT_PUBLIC_DIR`).
pub const DEFAULT_PUBLIC_DIR: &str = "/tmp/signet-agent/public";

/// Longest wait for the agent to attest (first start) and open both sockets.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest wait for a SIGTERM'd agent to drain and exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A running `signet-agent run`.
///
/// Dropping it kills the process (SIGKILL to its PID), waits for it, then
/// removes its directory. When the drop happens during a panic, the agent's
/// log is printed to stderr first.
pub struct AgentProcess {
    child: Option<Child>,
    node_name: String,
    spiffe_id: String,
    /// Every flag but the join token: what [`AgentProcess::start_again`] uses.
    args: Vec<OsString>,
    /// Where it runs: with its CA.
    net: Net,
    data_dir: PathBuf,
    workload_api_socket: PathBuf,
    sds_socket: PathBuf,
    log_path: PathBuf,
    // Last: removed only after the process is gone.
    dir: TempDir,
}

impl std::fmt::Debug for AgentProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentProcess")
            .field("pid", &self.pid())
            .field("node_name", &self.node_name)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl AgentProcess {
    /// Creates a join token for `node_name` at `ca` (with `signet ca token
    /// create`), then starts `signet-agent run` against the CA's port
    /// (unless `extra_args` gives `--ca-address` itself; in the CA's
    /// network namespace when it runs in one), trusting
    /// its `bundle.pem`, with a new data directory and both sockets inside a
    /// new temporary directory. `extra_args` are appended (e.g.
    /// `["--svid-dir", DIR, "--svid-dir-spiffe-id", ID]`).
    ///
    /// Returns once both sockets accept connections.
    ///
    /// # Errors
    /// A failing token creation, a missing binary, an agent that exits or
    /// is not ready within 20 s (the message carries its log).
    pub async fn start(
        ca: &CaProcess,
        node_name: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let token = ca.token_cli(node_name, None).await?;
        Self::start_with_token(ca, node_name, &token, extra_args).await
    }

    /// As [`AgentProcess::start`] with a join token the test made itself.
    ///
    /// # Errors
    /// As [`AgentProcess::start`].
    pub async fn start_with_token(
        ca: &CaProcess,
        node_name: &str,
        token: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::spawn(ca, node_name, token, extra_args, true).await
    }

    /// As [`AgentProcess::start`], but without socket flags: the agent uses
    /// its default socket paths (`/tmp/signet-agent/public/{api,sds}.sock`).
    /// Only one such agent can run on the machine at a time.
    ///
    /// # Errors
    /// As [`AgentProcess::start`].
    pub async fn start_with_default_sockets(
        ca: &CaProcess,
        node_name: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let token = ca.token_cli(node_name, None).await?;
        Self::spawn(ca, node_name, &token, extra_args, false).await
    }

    /// Starts an agent that attests with k8s_psat, reading the projected token from
    /// `token_file`; `node_name` is the name the CA will give it (`<cluster>/<node-uid>`).
    ///
    /// # Errors
    /// As [`AgentProcess::start`].
    pub async fn start_k8s_psat(
        ca: &CaProcess,
        node_name: &str,
        token_file: &Path,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let file = token_file.to_string_lossy().into_owned();
        let mut args = vec![
            "--node-attestation",
            "k8s_psat",
            "--k8s-psat-token-file",
            &file,
        ];
        args.extend_from_slice(extra_args);
        Self::spawn_with(ca, node_name, None, &args, true).await
    }

    async fn spawn(
        ca: &CaProcess,
        node_name: &str,
        token: &str,
        extra_args: &[&str],
        own_sockets: bool,
    ) -> anyhow::Result<Self> {
        Self::spawn_with(ca, node_name, Some(token), extra_args, own_sockets).await
    }

    async fn spawn_with(
        ca: &CaProcess,
        node_name: &str,
        token: Option<&str>,
        extra_args: &[&str],
        own_sockets: bool,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("signet-agent-")
            .tempdir()
            .context("creating the agent's temporary directory")?;
        let data_dir = dir.path().join("data");
        // Short names: a unix socket path must fit in 108 bytes.
        let (workload_api_socket, sds_socket) = if own_sockets {
            (dir.path().join("api.sock"), dir.path().join("sds.sock"))
        } else {
            let public = Path::new(DEFAULT_PUBLIC_DIR);
            (public.join("api.sock"), public.join("sds.sock"))
        };
        let mut args: Vec<OsString> = vec![
            "run".into(),
            "--trust-domain".into(),
            ca.trust_domain().as_str().into(),
        ];
        // Several replicas: the test gives the list itself.
        if !extra_args.contains(&"--ca-address") {
            args.extend([
                "--ca-address".into(),
                format!("127.0.0.1:{}", ca.port()).into(),
            ]);
        }
        args.extend([
            "--ca-server-name".into(),
            "localhost".into(),
            "--trust-bundle".into(),
            ca.bundle_path().into(),
            "--data-dir".into(),
            data_dir.clone().into(),
        ]);
        if own_sockets {
            args.extend([
                "--workload-api-socket".into(),
                workload_api_socket.clone().into(),
                "--sds-socket".into(),
                sds_socket.clone().into(),
            ]);
        }
        args.extend(extra_args.iter().map(OsString::from));
        let mut agent = Self {
            child: None,
            node_name: node_name.to_owned(),
            spiffe_id: ca.node_id(node_name),
            args,
            net: ca.net().clone(),
            data_dir,
            workload_api_socket,
            sds_socket,
            log_path: dir.path().join("signet-agent.log"),
            dir,
        };
        agent.launch(token).await?;
        Ok(agent)
    }

    /// The process ID, while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The node name the join token was made for.
    #[must_use]
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The SPIFFE ID the CA gives this agent's node
    /// (`spiffe://<td>/signet/node/<name>`).
    #[must_use]
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    /// `--workload-api-socket`.
    #[must_use]
    pub fn workload_api_socket(&self) -> &Path {
        &self.workload_api_socket
    }

    /// `unix:<workload API socket>`, the form SPIFFE clients take
    /// (`SPIFFE_ENDPOINT_SOCKET`).
    #[must_use]
    pub fn workload_api_endpoint(&self) -> String {
        format!("unix:{}", self.workload_api_socket.display())
    }

    /// `--sds-socket`.
    #[must_use]
    pub fn sds_socket(&self) -> &Path {
        &self.sds_socket
    }

    /// `--data-dir`.
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A directory for the test's own files, removed with the agent.
    #[must_use]
    pub fn scratch_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the agent has logged so far (all runs).
    #[must_use]
    pub fn log(&self) -> String {
        self.log_since(0)
    }

    /// Sends SIGTERM (with `kill -TERM <pid>`) and waits for the process to
    /// exit on its own.
    ///
    /// # Errors
    /// When it is not running, or is still running after 15 s (it is then
    /// killed).
    pub async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let log = self.log_path.clone();
        crate::process::stop(&mut self.child, "signet-agent", STOP_TIMEOUT, || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            format!("--- signet-agent log ---\n{text}")
        })
        .await
    }

    /// Starts the agent again after [`AgentProcess::stop`] or
    /// [`AgentProcess::kill9`], on the same data directory, sockets and
    /// flags, without a join token (the agent reuses its node SVID).
    ///
    /// # Errors
    /// As [`AgentProcess::start`].
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("signet-agent is still running");
        }
        self.launch(None).await
    }

    /// Sends SIGSTOP: the agent holds its connections but does nothing, as
    /// a hung or lagging agent would. Dropping it still kills it.
    ///
    /// # Errors
    /// When it is not running or `kill` fails.
    pub fn pause(&self) -> anyhow::Result<()> {
        let pid = self.pid().context("signet-agent is not running")?;
        crate::process::signal(pid, "STOP")
    }

    /// Sends SIGCONT after [`AgentProcess::pause`].
    ///
    /// # Errors
    /// When it is not running or `kill` fails.
    pub fn resume(&self) -> anyhow::Result<()> {
        let pid = self.pid().context("signet-agent is not running")?;
        crate::process::signal(pid, "CONT")
    }

    /// SIGKILL by PID, then reap. Does nothing when it is not running.
    pub fn kill9(&mut self) {
        crate::process::kill(&mut self.child);
    }

    /// Spawns the process and waits until both sockets accept connections.
    async fn launch(&mut self, token: Option<&str>) -> anyhow::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let offset = log.metadata()?.len();
        let mut cmd = self.net.command(bins::binary("signet-agent")?);
        cmd.args(&self.args)
            .env("NO_COLOR", "1")
            // Never inherit a token from the environment: a restart must
            // prove that the agent does without one.
            .env_remove("SIGNET_JOIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(token) = token {
            // Through the environment, so it does not show in `ps`.
            cmd.env("SIGNET_JOIN_TOKEN", token);
        }
        let child = cmd.spawn().context("starting signet-agent")?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait()? {
                bail!(
                    "signet-agent exited with {status} before it was ready\n--- signet-agent log ---\n{}",
                    self.log_since(offset)
                );
            }
            // A socket left by a killed run exists but refuses connections,
            // so existence alone is not readiness.
            if accepts(&self.workload_api_socket).await && accepts(&self.sds_socket).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill9();
                bail!(
                    "signet-agent was not ready within {READY_TIMEOUT:?} (sockets {} and {})\n--- signet-agent log ---\n{}",
                    self.workload_api_socket.display(),
                    self.sds_socket.display(),
                    self.log_since(offset)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        crate::process::reap(&mut self.child, "signet-agent")
    }

    fn log_since(&self, offset: u64) -> String {
        let bytes = std::fs::read(&self.log_path).unwrap_or_default();
        let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- signet-agent log ({}) ---\n{}--- end of signet-agent log ---",
                self.node_name,
                self.log()
            );
        }
    }
}

/// Whether something accepts connections on the unix socket `path`.
async fn accepts(path: &Path) -> bool {
    if !path.exists() {
        return false;
    }
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::UnixStream::connect(path)
        )
        .await,
        Ok(Ok(_))
    )
}
