//! A real PostgreSQL for tests. [`Database::create`] gives each test its
//! own database (`CREATE DATABASE <unique>`) on the server named by
//! `SIGNET_TEST_PG` (a URL of a role that may create databases; the test
//! command starts one server for the whole run), or, when that is unset,
//! on a private server started for this test and removed when it drops.
//!
//! A server is Debian's `postgresql-15`: `initdb` into a temporary
//! directory as an unprivileged user (initdb refuses root), `postgres`
//! listening on a unix socket directory and a free loopback port, password
//! (SCRAM) authentication over TCP for the test role. Stopped by PID.
//! Only std is used, so that every crate's tests can depend on this one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The role the tests log in as.
pub const ROLE: &str = "signet_test";

/// Where Debian puts the server binaries (off PATH).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SIGNET_PG_BIN") {
        return PathBuf::from(d);
    }
    for v in ["17", "16", "15"] {
        let d = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
        if d.join("initdb").exists() {
            return d;
        }
    }
    panic!(
        "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin; install postgresql-15 \
         (scripts/test.sh does) or set SIGNET_PG_BIN"
    );
}

/// A running PostgreSQL server in a directory of its own.
pub struct Server {
    root: PathBuf,
    port: u16,
    password: String,
    pid: u32,
    /// `None` once stopped.
    child: Option<std::process::Child>,
}

impl Server {
    /// Initializes and starts a server under `root` (created; must not exist).
    ///
    /// # Panics
    /// When the binaries are missing or the server does not come up.
    pub fn start(root: &Path) -> Self {
        Self::start_with_tls(root, None)
    }

    /// As [`Server::start`], serving TLS too with `(cert_pem, key_pem)`.
    ///
    /// # Panics
    /// As [`Server::start`].
    pub fn start_with_tls(root: &Path, tls: Option<(&str, &str)>) -> Self {
        let bin = bin_dir();
        std::fs::create_dir_all(root.join("sock")).unwrap();
        let password = random_hex();
        std::fs::write(root.join("pwfile"), &password).unwrap();
        let user = unprivileged_user();
        if let Some((uid, gid)) = user {
            for p in [root.to_owned(), root.join("sock"), root.join("pwfile")] {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
            }
        }
        let data = root.join("data");
        let out = as_user(user, &bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "--username",
                ROLE,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", root.join("pwfile").display()))
            .args(["--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some((cert, key)) = tls {
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = root.join(name);
                std::fs::write(&path, pem).unwrap();
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .unwrap();
                if let Some((uid, gid)) = user {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
                }
            }
        }
        let mut server = Self {
            root: root.to_owned(),
            port: free_port(),
            password,
            pid: 0,
            child: None,
        };
        server.launch();
        server
    }

    /// Starts the server again after [`Server::stop`], on the same
    /// directory and port (a database that went away and came back).
    pub fn start_again(&mut self) {
        if self.child.is_none() {
            self.launch();
        }
    }

    fn launch(&mut self) {
        let user = unprivileged_user();
        let log_path = self.root.join("postgres.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&log_path, Some(uid), Some(gid)).unwrap();
        }
        let child = as_user(user, &bin_dir().join("postgres"))
            .arg("-D")
            .arg(self.root.join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.root.join("sock").display()
            ))
            // Tests need no durability across a machine crash; benchmarks
            // (SIGNET_TEST_PG_DURABLE=1) do.
            .args(if std::env::var_os("SIGNET_TEST_PG_DURABLE").is_some() {
                &[][..]
            } else {
                &["-c", "fsync=off", "-c", "full_page_writes=off"][..]
            })
            .args(["-c", "max_connections=200"])
            .args(if self.root.join("server.key").exists() {
                vec![
                    "-c".to_owned(),
                    "ssl=on".to_owned(),
                    "-c".to_owned(),
                    format!("ssl_cert_file={}", self.root.join("server.crt").display()),
                    "-c".to_owned(),
                    format!("ssl_key_file={}", self.root.join("server.key").display()),
                ]
            } else {
                Vec::new()
            })
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while psql(&self.url("postgres"), "SELECT 1").is_err() {
            assert!(
                Instant::now() < deadline,
                "postgres did not come up; log: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's PID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A URL for database `db` as the test role, with its password.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{ROLE}:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        )
    }

    /// Stops the server (fast shutdown, by PID) and keeps its directory.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-INT", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// One test's own database.
pub struct Database {
    url: String,
    name: String,
    admin_url: String,
    /// The private server, when `SIGNET_TEST_PG` was unset.
    server: Option<Server>,
}

impl Database {
    /// A new empty database.
    ///
    /// # Panics
    /// When no server can be had.
    pub fn create() -> Self {
        match std::env::var("SIGNET_TEST_PG") {
            Ok(url) if !url.is_empty() => Self::on(url, None),
            _ => Self::on_private_server(),
        }
    }

    /// A new empty database on a server of its own, which the test may stop
    /// and start ([`Database::server_mut`]).
    ///
    /// # Panics
    /// When the server does not start.
    pub fn on_private_server() -> Self {
        Self::on_private_tls_server(None)
    }

    /// As [`Database::on_private_server`], the server also serving TLS
    /// with `(cert_pem, key_pem)`.
    ///
    /// # Panics
    /// When the server does not start.
    pub fn on_private_tls_server(tls: Option<(&str, &str)>) -> Self {
        let root = std::env::temp_dir().join(format!("signet-pg-{}", random_hex()));
        let server = Server::start_with_tls(&root, tls);
        Self::on(server.url("postgres"), Some(server))
    }

    fn on(admin_url: String, server: Option<Server>) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            &random_hex()[..8]
        );
        psql(&admin_url, &format!("CREATE DATABASE {name}")).unwrap();
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("SIGNET_TEST_PG {admin_url:?} names no database"),
        };
        Self {
            url,
            name,
            admin_url,
            server,
        }
    }

    /// Its URL, with the password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs SQL in it with psql (test set-up and inspection).
    ///
    /// # Errors
    /// psql's error output.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        psql(&self.url, sql)
    }

    /// The server, when private to this database.
    pub fn server_mut(&mut self) -> Option<&mut Server> {
        self.server.as_mut()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if self.server.is_none() {
            let _ = psql(
                &self.admin_url,
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            );
        }
    }
}

/// Runs `sql` with psql against `url`; returns its unaligned output.
///
/// # Errors
/// psql's error output.
pub fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new(psql_bin())
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn psql_bin() -> PathBuf {
    let p = bin_dir().join("psql");
    if p.exists() { p } else { PathBuf::from("psql") }
}

fn as_user(user: Option<(u32, u32)>, program: &Path) -> Command {
    match user {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// `(uid, gid)` to run the server as when we are root: the `postgres`
/// system user when there is one, else `nobody`.
fn unprivileged_user() -> Option<(u32, u32)> {
    let me = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid_line = me.lines().find(|l| l.starts_with("Uid:"))?;
    if uid_line.split_whitespace().nth(1)? != "0" {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for name in ["postgres", "nobody"] {
        if let Some(line) = passwd.lines().find(|l| l.starts_with(&format!("{name}:"))) {
            let f: Vec<&str> = line.split(':').collect();
            if let (Some(u), Some(g)) = (f.get(2), f.get(3)) {
                return Some((u.parse().ok()?, g.parse().ok()?));
            }
        }
    }
    panic!("running as root and no unprivileged user (postgres, nobody) to run initdb as");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn random_hex() -> String {
    let mut buf = [0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
