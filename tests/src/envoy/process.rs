//! A running Envoy process and what its admin API says it loaded.

use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;
use tempfile::TempDir;

use super::binary::{envoy_binary, setpriv_binary};
use super::bootstrap::{EnvoyOptions, Role};
use super::http::{HttpResponse, http_get_in};
use super::{
    ADMIN_TIMEOUT, ENVOY_LOG_ENV, LISTENER_STATS, LIVE_TIMEOUT, STOP_TIMEOUT, UPSTREAM_CLUSTER,
};

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
        let mut cmd = self.opts.net.command(setpriv);
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
        let response = http_get_in(&self.opts.net, self.admin_port, "/ready").await?;
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

    /// The admin API's port on 127.0.0.1 (of its network namespace).
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
    /// As [`http_get_in`].
    pub async fn get(&self, path: &str) -> anyhow::Result<HttpResponse> {
        http_get_in(&self.opts.net, self.port()?, path).await
    }

    /// The body of `GET path` on the admin API.
    ///
    /// # Errors
    /// No answer, or a status other than 200.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<String> {
        let response = http_get_in(&self.opts.net, self.admin_port, path).await?;
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

    /// The certificate chains (DER, leaf first) of the `tls_certificate`
    /// secrets Envoy holds now (`/config_dump`, dynamic active secrets):
    /// what it presents in new handshakes, with the intermediates (`/certs`
    /// shows only leaves).
    ///
    /// # Errors
    /// No answer, JSON of another shape, or a chain that is not PEM.
    pub async fn secret_chains(&self) -> anyhow::Result<Vec<Vec<Vec<u8>>>> {
        let text = self
            .admin_get("/config_dump?resource=dynamic_active_secrets")
            .await?;
        let dump: Value = serde_json::from_str(&text)
            .with_context(|| format!("/config_dump is not JSON: {text}"))?;
        let mut out = Vec::new();
        for config in dump["configs"].as_array().into_iter().flatten() {
            let Some(chain) = config["secret"]["tls_certificate"]["certificate_chain"].as_object()
            else {
                continue;
            };
            let pem_text = data_source_text(&Value::Object(chain.clone()))?;
            let ders: Vec<Vec<u8>> = pem::parse_many(pem_text.as_bytes())
                .context("certificate_chain is not PEM")?
                .into_iter()
                .map(pem::Pem::into_contents)
                .collect();
            out.push(ders);
        }
        Ok(out)
    }

    /// The CA certificates (DER) Envoy validates peers with now: every
    /// `CERTIFICATE` in the `trusted_ca` of a validation-context secret
    /// (`ROOTCA`) and in the `trust_bundle` of each trust domain of a SPIFFE
    /// validator secret (`ALL`), from `/config_dump`.
    ///
    /// # Errors
    /// No answer, JSON of another shape, or bundle bytes that are not PEM.
    pub async fn validation_roots(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        let text = self
            .admin_get("/config_dump?resource=dynamic_active_secrets")
            .await?;
        let dump: Value = serde_json::from_str(&text)
            .with_context(|| format!("/config_dump is not JSON: {text}"))?;
        let mut sources = Vec::new();
        for config in dump["configs"].as_array().into_iter().flatten() {
            collect_data_sources(&config["secret"], false, &mut sources);
        }
        let mut out = Vec::new();
        for source in sources {
            let pem_text = data_source_text(&source)?;
            for block in pem::parse_many(pem_text.as_bytes()).context("a bundle that is not PEM")? {
                if block.tag() == "CERTIFICATE" {
                    out.push(block.into_contents());
                }
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

/// Every data source (`{inline_bytes | inline_string}`) under a
/// `trusted_ca` or `trust_bundle` key anywhere in `v`.
fn collect_data_sources(v: &Value, under_bundle_key: bool, out: &mut Vec<Value>) {
    match v {
        Value::Object(map) => {
            if under_bundle_key
                && (map.contains_key("inline_bytes") || map.contains_key("inline_string"))
            {
                out.push(v.clone());
                return;
            }
            for (key, child) in map {
                let bundle_key = key == "trusted_ca" || key == "trust_bundle";
                collect_data_sources(child, bundle_key, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_data_sources(item, false, out);
            }
        }
        _ => {}
    }
}

/// The text of an inline Envoy data source (`inline_bytes` is base64 in
/// the JSON dump).
fn data_source_text(source: &Value) -> anyhow::Result<String> {
    use base64::Engine as _;
    if let Some(b64) = source.get("inline_bytes").and_then(Value::as_str) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .context("inline_bytes is not base64")?;
        String::from_utf8(bytes).context("inline_bytes is not text")
    } else if let Some(s) = source.get("inline_string").and_then(Value::as_str) {
        Ok(s.to_owned())
    } else {
        bail!("a data source that is not inline: {source}")
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
