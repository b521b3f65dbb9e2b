//! A `signet-ca` process owned by a test: its own temporary data directory,
//! a free loopback port, stderr captured to a file, and a `Drop` that kills
//! it by PID.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use hyper_util::rt::TokioIo;
use signet_identity::{TrustBundle, TrustDomain};
use signet_proto::ca::v1::admin_client::AdminClient;
use signet_proto::ca::v1::node_client::NodeClient;
use tempfile::TempDir;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::bins::{self, CliOutput};
use crate::netns::Net;
use crate::pki::SvidFiles;

/// The trust domain of a [`CaOptions::default`] CA.
pub const DEFAULT_TRUST_DOMAIN: &str = "example.org";

/// The name the CA's server certificate carries by default, and so the name
/// clients must ask for.
const SERVER_NAME: &str = "localhost";

/// Longest wait for a start-up, including the first key generation.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest wait for a SIGTERM'd CA to drain and exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Start attempts when the chosen port is taken meanwhile by someone else.
const PORT_ATTEMPTS: usize = 3;

/// How to start a CA.
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// `--trust-domain`.
    pub trust_domain: String,
    /// Further flags for `signet-ca run`, e.g. `["--max-batch", "4"]`. The
    /// harness sets `--trust-domain`, `--listen`, `--data-dir` and
    /// `--admin-socket` itself.
    pub args: Vec<String>,
    /// Where it runs: the host, or a network namespace (its node API then
    /// listens on the namespace's own loopback, reached with
    /// [`Net::connect`]).
    pub net: Net,
    /// Environment variables for the process (e.g. the debug-build test
    /// hook `SIGNET_TEST_CRASH_AT`).
    pub env: Vec<(String, String)>,
}

impl Default for CaOptions {
    fn default() -> Self {
        Self::new(DEFAULT_TRUST_DOMAIN)
    }
}

impl CaOptions {
    /// Options for a CA of `trust_domain` with no further flags.
    #[must_use]
    pub fn new(trust_domain: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            args: Vec::new(),
            net: Net::Host,
            env: Vec::new(),
        }
    }

    /// Runs it in `net`.
    #[must_use]
    pub fn in_net(mut self, net: Net) -> Self {
        self.net = net;
        self
    }

    /// Sets the environment variable `name` for the process.
    #[must_use]
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.push((name.to_owned(), value.into()));
        self
    }

    /// Adds `--name value`.
    #[must_use]
    pub fn flag(mut self, name: &str, value: impl Into<String>) -> Self {
        self.args.push(format!("--{name}"));
        self.args.push(value.into());
        self
    }
}

/// One row of the CA's audit log (`DATA_DIR/signet.db`, table `audit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// SQLite rowid: rows only grow, so it orders them.
    pub rowid: i64,
    pub at: i64,
    pub caller: String,
    pub action: String,
    pub spiffe_id: String,
    pub serial: String,
    pub not_after: i64,
    /// `issued`, `rejected`, `ok`...
    pub result: String,
    pub detail: String,
}

/// A running `signet-ca`.
///
/// Dropping it kills the process (SIGKILL to its PID), waits for it, then
/// removes its data directory. When the drop happens during a panic, the
/// CA's log is printed to stderr first, so a failed test shows what the
/// server said.
pub struct CaProcess {
    child: Option<Child>,
    opts: CaOptions,
    trust_domain: TrustDomain,
    port: u16,
    data_dir: PathBuf,
    admin_socket: PathBuf,
    log_path: PathBuf,
    // Last: removed only after the process is gone.
    dir: TempDir,
}

impl std::fmt::Debug for CaProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaProcess")
            .field("pid", &self.pid())
            .field("trust_domain", &self.opts.trust_domain)
            .field("port", &self.port)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl CaProcess {
    /// Starts `signet-ca run` in a new temporary directory on a free
    /// loopback port, and returns once the admin socket and the TLS port
    /// both answer gRPC health checks with SERVING.
    ///
    /// # Errors
    /// Missing binary, a CA that exits or is not ready within 20 s (the
    /// message carries its log).
    pub async fn start(opts: CaOptions) -> anyhow::Result<Self> {
        let trust_domain = TrustDomain::new(&opts.trust_domain)
            .with_context(|| format!("invalid trust domain {:?}", opts.trust_domain))?;
        let mut ca = Self::unstarted(trust_domain, 0, opts)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            ca.port = free_port()?;
            let offset = ca.log_len();
            match ca.launch().await {
                Ok(()) => return Ok(ca),
                // Another test may have bound the port between our probe and
                // the CA's bind; pick another.
                Err(e)
                    if attempt < PORT_ATTEMPTS
                        && ca.log_since(offset).contains("binding the node API") =>
                {
                    eprintln!("signet-ca could not bind port {}, retrying: {e:#}", ca.port);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Another replica of this CA on the same PostgreSQL store: a new
    /// process with a data directory of its own (its own keys, root,
    /// intermediate and replica id; no key file is shared), started with
    /// `opts`, which must name the same trust domain and the same `--store`,
    /// serving on `port` (on loopback; 0 picks a free one).
    ///
    /// # Errors
    /// A different trust domain, no store flag, or as [`CaProcess::start`].
    pub async fn start_replica(&self, port: u16, opts: CaOptions) -> anyhow::Result<Self> {
        if opts.trust_domain != self.opts.trust_domain {
            bail!("a replica serves the same trust domain");
        }
        if !opts.args.iter().any(|a| a == "--store") {
            bail!("replicas share a store: pass --store");
        }
        if port == 0 {
            return Self::start(opts).await;
        }
        let mut ca = Self::unstarted(self.trust_domain.clone(), port, opts)?;
        ca.launch().await?;
        Ok(ca)
    }

    /// A CA not started yet, in a new temporary directory (its data
    /// directory `data/`, its log beside it), to serve on `port`.
    fn unstarted(trust_domain: TrustDomain, port: u16, opts: CaOptions) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("signet-ca-")
            .tempdir()
            .context("creating the CA's temporary directory")?;
        let data_dir = dir.path().join("data");
        Ok(Self {
            child: None,
            trust_domain,
            port,
            admin_socket: data_dir.join("admin.sock"),
            data_dir,
            log_path: dir.path().join("signet-ca.log"),
            dir,
            opts,
        })
    }

    /// A second replica of this CA, to test agent failover until replicas
    /// share a database: a new process on `port` (on loopback; 0 picks a
    /// free one) started with `opts` (same trust domain), whose data directory is a
    /// consistent copy of this one's taken while it runs: the database
    /// through `VACUUM INTO` (a transaction-consistent snapshot), the key
    /// files and the rest as files. The two diverge from then on (each its
    /// own audit log and tokens); it is the failover mechanics that they
    /// test, not shared state. The copy keeps the replica id, so it signs
    /// with the same authorities (real replicas have their own: see
    /// [`CaProcess::start_replica`]).
    ///
    /// # Errors
    /// A copy that fails, or as [`CaProcess::start`].
    pub async fn start_copy(&self, port: u16, opts: CaOptions) -> anyhow::Result<Self> {
        if opts.trust_domain != self.opts.trust_domain {
            bail!("a replica serves the same trust domain");
        }
        let port = if port == 0 { free_port()? } else { port };
        let mut ca = Self::unstarted(self.trust_domain.clone(), port, opts)?;
        copy_data_dir(&self.data_dir, &ca.data_dir)?;
        // A CA on PostgreSQL has no database file: the copy shares the
        // database and is a real second replica.
        if self.data_dir.join("signet.db").exists() {
            let db = ca.data_dir.join("signet.db");
            self.open_db()?
                .execute("VACUUM INTO ?1", [db.to_string_lossy()])
                .context("copying the database (VACUUM INTO)")?;
        }
        ca.launch().await?;
        Ok(ca)
    }

    /// The process ID, while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The node API's port on 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where it runs; agents of this CA run there too.
    #[must_use]
    pub fn net(&self) -> &Net {
        &self.opts.net
    }

    /// The trust domain.
    #[must_use]
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// `spiffe://<trust domain><path>`; `path` starts with `/`.
    #[must_use]
    pub fn id(&self, path: &str) -> String {
        format!("spiffe://{}{path}", self.trust_domain)
    }

    /// The SPIFFE ID the CA gives the node `name`.
    #[must_use]
    pub fn node_id(&self, name: &str) -> String {
        self.id(&format!("/signet/node/{name}"))
    }

    /// `--data-dir`.
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `--admin-socket`.
    #[must_use]
    pub fn admin_socket(&self) -> &Path {
        &self.admin_socket
    }

    /// A directory for the test's own files, removed with the CA.
    #[must_use]
    pub fn scratch_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `DATA_DIR/bundle.pem`, the roots the CA writes for operators.
    #[must_use]
    pub fn bundle_path(&self) -> PathBuf {
        self.data_dir.join("bundle.pem")
    }

    /// The contents of `DATA_DIR/bundle.pem`.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn bundle_pem(&self) -> anyhow::Result<String> {
        let path = self.bundle_path();
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// `DATA_DIR/bundle.pem` as a [`TrustBundle`] of the CA's trust domain.
    ///
    /// # Errors
    /// When the file cannot be read or parsed.
    pub fn bundle(&self) -> anyhow::Result<TrustBundle> {
        let pem = self.bundle_pem()?;
        TrustBundle::from_pem(self.trust_domain.clone(), pem.as_bytes())
            .context("parsing bundle.pem")
    }

    /// Everything the CA has logged so far (all runs).
    #[must_use]
    pub fn log(&self) -> String {
        self.log_since(0)
    }

    /// A channel to the Admin service (and the health service) on the unix socket.
    ///
    /// # Errors
    /// When nothing accepts on the socket.
    pub async fn admin_channel(&self) -> anyhow::Result<Channel> {
        let socket = self.admin_socket.clone();
        // The URI only satisfies the HTTP/2 layer; the connector ignores it.
        let channel = Endpoint::try_from("http://[::]:50051")?
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .with_context(|| format!("connecting to {}", self.admin_socket.display()))?;
        Ok(channel)
    }

    /// A client of the Admin service.
    ///
    /// # Errors
    /// As [`CaProcess::admin_channel`].
    pub async fn admin(&self) -> anyhow::Result<AdminClient<Channel>> {
        Ok(AdminClient::new(self.admin_channel().await?))
    }

    /// A TLS channel to the node API (and the health service) that trusts
    /// `bundle.pem` and presents `identity` = `(chain PEM, PKCS#8 key PEM)`
    /// as client certificate when given.
    ///
    /// # Errors
    /// When the bundle cannot be read or the TLS connection fails.
    pub async fn node_channel(&self, identity: Option<(&str, &str)>) -> anyhow::Result<Channel> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.bundle_pem()?))
            .domain_name(SERVER_NAME);
        if let Some((chain, key)) = identity {
            tls = tls.identity(Identity::from_pem(chain, key));
        }
        let endpoint = Channel::from_shared(format!("https://127.0.0.1:{}", self.port))?
            .connect_timeout(Duration::from_secs(5))
            .tls_config(tls)?;
        let connected = match &self.opts.net {
            Net::Host => endpoint.connect().await,
            net => {
                // TCP from inside the namespace; tonic adds TLS on top.
                let net = net.clone();
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
                endpoint
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let net = net.clone();
                        async move { Ok::<_, std::io::Error>(TokioIo::new(net.connect(addr).await?)) }
                    }))
                    .await
            }
        };
        let channel = connected.with_context(|| {
            format!(
                "connecting to the node API on port {} ({})",
                self.port,
                self.opts.net.label()
            )
        })?;
        Ok(channel)
    }

    /// A client of the node API; see [`CaProcess::node_channel`].
    ///
    /// # Errors
    /// As [`CaProcess::node_channel`].
    pub async fn node_client(
        &self,
        identity: Option<(&str, &str)>,
    ) -> anyhow::Result<NodeClient<Channel>> {
        Ok(NodeClient::new(self.node_channel(identity).await?))
    }

    /// Runs `signet ca --admin-socket <this CA's socket> ARGS`.
    ///
    /// # Errors
    /// As [`crate::signet`]; a non-zero exit is not an error here.
    pub async fn signet_ca<I, S>(&self, args: I) -> anyhow::Result<CliOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut full: Vec<std::ffi::OsString> = vec![
            "ca".into(),
            "--admin-socket".into(),
            self.admin_socket.clone().into(),
        ];
        full.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self.signet(full).await
    }

    /// Runs `signet ARGS` with `SIGNET_ADMIN_SOCKET` set to this CA's socket.
    ///
    /// # Errors
    /// As [`crate::signet`]; a non-zero exit is not an error here.
    pub async fn signet<I, S>(&self, args: I) -> anyhow::Result<CliOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        bins::run(
            &bins::binary("signet")?,
            args,
            &[("SIGNET_ADMIN_SOCKET", self.admin_socket.as_os_str())],
        )
        .await
    }

    /// `signet ca token create --node NAME [--ttl TTL]`: the token (the
    /// first line of the output).
    ///
    /// # Errors
    /// A failing CLI, or an empty first line.
    pub async fn token_cli(&self, node: &str, ttl: Option<&str>) -> anyhow::Result<String> {
        let mut args = vec!["token", "create", "--node", node];
        if let Some(ttl) = ttl {
            args.extend(["--ttl", ttl]);
        }
        let out = self.signet_ca(args).await?.ok()?;
        let token = out.first_line().trim().to_owned();
        if token.is_empty() {
            bail!("no token on the first line of\n{out}");
        }
        Ok(token)
    }

    /// `signet ca entry create ARGS`: the new entry's ID, read from the
    /// `Entry ID: <id>` first line.
    ///
    /// # Errors
    /// A failing CLI, or a first line of another shape.
    pub async fn entry_cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["entry", "create"];
        full.extend_from_slice(args);
        let out = self.signet_ca(full).await?.ok()?;
        out.first_line()
            .strip_prefix("Entry ID:")
            .map(|id| id.trim().to_owned())
            .filter(|id| !id.is_empty())
            .ok_or_else(|| anyhow!("no `Entry ID: <id>` on the first line of\n{out}"))
    }

    /// `signet ca mint --spiffe-id ID --out <scratch>/<dir> EXTRA`, and the
    /// files it wrote.
    ///
    /// # Errors
    /// A failing CLI, or unreadable output files.
    pub async fn mint_cli(
        &self,
        spiffe_id: &str,
        dir: &str,
        extra: &[&str],
    ) -> anyhow::Result<SvidFiles> {
        let out_dir = self.scratch_dir().join(dir);
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("mint"),
            OsStr::new("--spiffe-id"),
            OsStr::new(spiffe_id),
            OsStr::new("--out"),
            out_dir.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        self.signet_ca(args).await?.ok()?;
        SvidFiles::load(&out_dir)
    }

    /// The highest audit rowid so far: pass it to [`CaProcess::audit_since`]
    /// to see what a request added.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn audit_mark(&self) -> anyhow::Result<i64> {
        let conn = self.open_db()?;
        conn.query_row("SELECT COALESCE(MAX(rowid), 0) FROM audit", [], |r| {
            r.get(0)
        })
        .context("reading the audit log")
    }

    /// The audit rows written after `mark`, oldest first.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn audit_since(&self, mark: i64) -> anyhow::Result<Vec<AuditRow>> {
        let conn = self.open_db()?;
        let mut stmt = conn.prepare(
            "SELECT rowid, at, caller, action, spiffe_id, serial, not_after, result, detail
             FROM audit WHERE rowid > ?1 ORDER BY rowid",
        )?;
        let rows = stmt
            .query_map([mark], |r| {
                Ok(AuditRow {
                    rowid: r.get(0)?,
                    at: r.get(1)?,
                    caller: r.get(2)?,
                    action: r.get(3)?,
                    spiffe_id: r.get(4)?,
                    serial: r.get(5)?,
                    not_after: r.get(6)?,
                    result: r.get(7)?,
                    detail: r.get(8)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()
            .context("reading the audit log")?;
        Ok(rows)
    }

    /// Sends SIGTERM (with `kill -TERM <pid>`) and waits for the process to
    /// exit on its own.
    ///
    /// # Errors
    /// When it is not running, or is still running after 15 s (it is then
    /// killed).
    pub async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let log = self.log_path.clone();
        crate::process::stop(&mut self.child, "signet-ca", STOP_TIMEOUT, || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            format!("--- signet-ca log ---\n{text}")
        })
        .await
    }

    /// Starts the CA again after [`CaProcess::stop`], on the same data
    /// directory, port and flags.
    ///
    /// # Errors
    /// As [`CaProcess::start`].
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("signet-ca is still running");
        }
        self.launch().await
    }

    /// The options the next [`CaProcess::start_again`] will use, to change
    /// flags across a restart (the data directory and port stay).
    pub fn options_mut(&mut self) -> &mut CaOptions {
        &mut self.opts
    }

    /// [`CaProcess::stop`] (which must see a clean exit), then
    /// [`CaProcess::start_again`].
    ///
    /// # Errors
    /// As those two, or an unclean exit.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let status = self.stop().await?;
        if !status.success() {
            bail!(
                "signet-ca exited with {status} after SIGTERM\n--- signet-ca log ---\n{}",
                self.log()
            );
        }
        self.start_again().await
    }

    /// SIGKILL by PID (no drain), then reap: a crash, for tests. Does
    /// nothing when it is not running; [`CaProcess::start_again`] follows.
    pub fn kill_hard(&mut self) {
        self.kill();
    }

    /// Spawns the process and waits until it serves.
    async fn launch(&mut self) -> anyhow::Result<()> {
        self.trust_domain = TrustDomain::new(&self.opts.trust_domain)
            .with_context(|| format!("invalid trust domain {:?}", self.opts.trust_domain))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let offset = log.metadata()?.len();
        let mut cmd = self.opts.net.command(bins::binary("signet-ca")?);
        cmd.arg("run")
            .arg("--trust-domain")
            .arg(&self.opts.trust_domain)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--admin-socket")
            .arg(&self.admin_socket)
            .args(&self.opts.args)
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().context("starting signet-ca")?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_probe_error = None;
        loop {
            if let Some(status) = self.try_wait()? {
                bail!(
                    "signet-ca exited with {status} before it was ready\n--- signet-ca log ---\n{}",
                    self.log_since(offset)
                );
            }
            // Probe only once the socket exists: the log may be filtered
            // (SIGNET_LOG), so it cannot be the signal.
            if self.admin_socket.exists() {
                match tokio::time::timeout(Duration::from_secs(5), self.probe()).await {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(e)) => last_probe_error = Some(format!("{e:#}")),
                    Err(_) => last_probe_error = Some("health probe timed out".to_owned()),
                }
            }
            if Instant::now() > deadline {
                self.kill();
                bail!(
                    "signet-ca was not ready within {READY_TIMEOUT:?} (last probe: {})\n--- signet-ca log ---\n{}",
                    last_probe_error.as_deref().unwrap_or("none"),
                    self.log_since(offset)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Both listeners answer a health check with SERVING.
    async fn probe(&self) -> anyhow::Result<()> {
        let admin = health_check(self.admin_channel().await?, "signet.ca.v1.Admin").await?;
        let node = health_check(self.node_channel(None).await?, "signet.ca.v1.Node").await?;
        if admin == ServingStatus::Serving && node == ServingStatus::Serving {
            Ok(())
        } else {
            bail!("admin {admin:?}, node {node:?}")
        }
    }

    fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        crate::process::reap(&mut self.child, "signet-ca")
    }

    /// SIGKILL by PID, then reap.
    fn kill(&mut self) {
        crate::process::kill(&mut self.child);
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log_path).map_or(0, |m| m.len())
    }

    fn log_since(&self, offset: u64) -> String {
        let bytes = std::fs::read(&self.log_path).unwrap_or_default();
        let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    fn open_db(&self) -> anyhow::Result<rusqlite::Connection> {
        let path = self.data_dir.join("signet.db");
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening {} read-only", path.display()))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(conn)
    }
}

impl Drop for CaProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- signet-ca log ({}, port {}) ---\n{}--- end of signet-ca log ---",
                self.opts.trust_domain,
                self.port,
                self.log()
            );
        }
    }
}

/// The serving status `service` reports through the standard gRPC health
/// service on `channel` (`""` for the server as a whole).
///
/// # Errors
/// When the call fails (an unknown service is `NotFound`).
pub async fn health_check(channel: Channel, service: &str) -> anyhow::Result<ServingStatus> {
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .with_context(|| format!("health check of {service:?}"))?;
    Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
}

/// A loopback port nobody listened on a moment ago.
/// Copies the files of a CA's data directory, keeping their modes, but not
/// its database (copied consistently apart) nor sockets.
fn copy_data_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    std::fs::set_permissions(to, std::fs::metadata(from)?.permissions())?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let kind = entry.file_type()?;
        let target = to.join(&name);
        if kind.is_dir() {
            copy_data_dir(&entry.path(), &target)?;
        } else if kind.is_file() && !name.to_string_lossy().starts_with("signet.db") {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("binding a probe listener")?;
    Ok(listener.local_addr()?.port())
}
