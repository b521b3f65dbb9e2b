//! Network namespaces as separate hosts on one machine: two namespaces
//! joined by a veth pair, each with its own address, `lo` up in both, and
//! [`Net`], which says where a process runs and lets the test reach ports
//! inside a namespace.
//!
//! Needs root (`ip netns`, `setns`). Namespace names are unique per test
//! run (`sgt-<pid>-<n>-a|b`); they are removed when the last handle is
//! dropped, also when a test panics. Processes started in a namespace keep
//! an [`Arc`] to it, so it outlives them. Namespaces left behind by a run
//! that was killed outright (no drop) are swept by the next run: their
//! names carry the PID of a process that no longer exists.
//!
//! Unix sockets are files, so an agent's sockets reach Envoys in another
//! namespace unchanged; TCP does not cross namespaces except over the veth.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};

/// The prefix of every namespace this harness makes.
const PREFIX: &str = "sgt-";

/// Side A's address on the veth (198.18.0.0/15 is set aside for network
/// tests, RFC 2544). Both ends live inside their namespaces, so every pair
/// can use the same addresses without meeting another.
pub const ADDR_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Side B's address on the veth.
pub const ADDR_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const PREFIX_LEN: u8 = 24;

/// Longest wait for a TCP connect into a namespace.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// One named network namespace (`/run/netns/<name>`), deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    addr: IpAddr,
}

impl NetNs {
    /// The name `ip netns` knows it by.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its address on the veth that joins it to its peer.
    #[must_use]
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    fn create(name: String, addr: IpAddr) -> anyhow::Result<Self> {
        ip(&["netns", "add", &name])?;
        // From here on, Drop removes it.
        let ns = Self { name, addr };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A new TCP connection to `addr` made from inside this namespace.
    ///
    /// A thread of our own enters the namespace (`setns`), connects and
    /// ends: the socket stays in the namespace it was made in, and no
    /// thread of the runtime ever changes namespace.
    async fn connect(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let path = Path::new("/run/netns").join(&self.name);
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("connect-in-{}", self.name))
            .spawn(move || {
                let result = (|| {
                    let ns = File::open(&path)?;
                    rustix::thread::move_into_link_name_space(
                        ns.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )?;
                    let stream = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
                    stream.set_nonblocking(true)?;
                    Ok::<_, std::io::Error>(stream)
                })();
                let _ = tx.send(result);
            })?;
        let stream = rx.await.map_err(|_| {
            std::io::Error::other("the connecting thread ended without an answer")
        })??;
        tokio::net::TcpStream::from_std(stream)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace also destroys its end of the veth, and so
        // the pair.
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            eprintln!("could not remove network namespace {}: {e:#}", self.name);
        }
    }
}

/// Two namespaces joined by a veth pair: `a` at [`ADDR_A`], `b` at
/// [`ADDR_B`], on one /24, `lo` up in both.
#[derive(Debug)]
pub struct NetnsPair {
    pub a: Arc<NetNs>,
    pub b: Arc<NetNs>,
}

impl NetnsPair {
    /// Makes the pair.
    ///
    /// # Errors
    /// Not root, `ip` missing, or any `ip` command failing; whatever was
    /// made before the failure is removed.
    pub fn create() -> anyhow::Result<Self> {
        if !is_root()? {
            bail!("network namespaces need root (ip netns add, setns), and this test is not root");
        }
        sweep_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("{PREFIX}{}-{n}", std::process::id());
        let a = NetNs::create(format!("{base}-a"), IpAddr::V4(ADDR_A))?;
        let b = NetNs::create(format!("{base}-b"), IpAddr::V4(ADDR_B))?;
        // Made directly inside the namespaces, so the names cannot clash
        // with anything on the host.
        ip(&[
            "link", "add", "name", "veth-a", "netns", &a.name, "type", "veth", "peer", "name",
            "veth-b", "netns", &b.name,
        ])?;
        for (ns, dev) in [(&a, "veth-a"), (&b, "veth-b")] {
            let cidr = format!("{}/{PREFIX_LEN}", ns.addr);
            ip(&["-n", &ns.name, "addr", "add", &cidr, "dev", dev])?;
            ip(&["-n", &ns.name, "link", "set", dev, "up"])?;
        }
        Ok(Self {
            a: Arc::new(a),
            b: Arc::new(b),
        })
    }
}

/// Where a process runs: on the host, or inside a namespace.
#[derive(Debug, Clone, Default)]
pub enum Net {
    #[default]
    Host,
    Ns(Arc<NetNs>),
}

impl Net {
    /// A command that runs `program` here: `ip netns exec NS program` in a
    /// namespace. `ip` execs the program, so the child's PID is the
    /// program's own and stopping it by PID works as on the host.
    #[must_use]
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match self {
            Self::Host => Command::new(program),
            Self::Ns(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &ns.name]).arg(program);
                cmd
            }
        }
    }

    /// A TCP connection to `addr`, made from here.
    ///
    /// # Errors
    /// As the connect.
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        match self {
            Self::Host => tokio::net::TcpStream::connect(addr).await,
            Self::Ns(ns) => ns.connect(addr).await,
        }
    }

    /// The namespace's name, `host` otherwise (for messages).
    #[must_use]
    pub fn label(&self) -> &str {
        match self {
            Self::Host => "host",
            Self::Ns(ns) => &ns.name,
        }
    }
}

/// Runs `ip ARGS`.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        return Err(anyhow!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn is_root() -> anyhow::Result<bool> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata("/proc/self")
        .context("stat /proc/self")?
        .uid()
        == 0)
}

/// Deletes namespaces of this harness whose run is gone: `sgt-<pid>-...`
/// where no process `<pid>` exists. Best effort.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "delete", &name]);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// The pair works as two hosts: a listener in `b` on its address is
    /// reached from `a` over the veth, and `a`'s loopback is its own. Dropping the pair removes both namespaces.
    #[tokio::test]
    async fn pair_is_two_hosts_and_goes_away() {
        let pair = NetnsPair::create().unwrap();
        let names = [pair.a.name().to_owned(), pair.b.name().to_owned()];
        let b = Net::Ns(pair.b.clone());
        let a = Net::Ns(pair.a.clone());
        // A listener in b, made by a program running there.
        let mut server = b
            .command("python3")
            .args([
                "-c",
                "import socket,sys\n\
                 s=socket.socket();s.bind(('198.18.0.2',4711));s.listen();print('up',flush=True)\n\
                 c,_=s.accept();c.sendall(b'hi');c.close()",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(server.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "up");
        let target = SocketAddr::new(IpAddr::V4(ADDR_B), 4711);
        let loopback = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 4711);
        assert!(
            a.connect(loopback).await.is_err(),
            "namespace a's loopback reached b's listener"
        );
        let mut stream = a.connect(target).await.unwrap();
        let mut buf = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut buf)
            .await
            .unwrap();
        assert_eq!(buf, b"hi");
        assert!(server.wait().unwrap().success());
        drop((a, b, pair));
        for name in names {
            assert!(
                !Path::new("/run/netns").join(&name).exists(),
                "namespace {name} is still there"
            );
        }
    }
}
