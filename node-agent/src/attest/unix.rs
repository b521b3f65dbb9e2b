//! The unix workload attestor: selectors from the caller's credentials and
//! its /proc entry. `unix:uid:N`, `unix:gid:N`, `unix:user:NAME`,
//! `unix:group:NAME`, `unix:path:/abs/exe`.
//!
//! PID reuse: the process's start time is read before and after everything
//! else; if it changed (or the process is gone), the PID now names another
//! process and the attestation is refused. The executable's identity
//! (device and inode) is read before and after too, so a process that execs
//! another binary while it is being attested is refused as well.
//!
//! Limit: `unix:path` says what the connecting PID runs *when it calls*, not
//! what it ran when it connected, and the caller may be another process that
//! inherited the socket. A serving loop that calls [`accepted`] on each new
//! connection narrows this: a PID that runs another executable than at
//! accept time is refused; but a process that execs between its connect()
//! and the agent's accept() is still seen as the new binary. Entries that select only by path are therefore
//! never matched ([`crate::state::Entry::is_path_only`]); uid and gid come
//! from the kernel's record of the connect() and are sound.

use std::path::{Path, PathBuf};

use super::{AcceptedPeer, AttestError, PeerCred, WorkloadAttestor};
use crate::state::Selector;

/// What /proc says about a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub exe: Option<PathBuf>,
    /// Device and inode of the executable, when readable.
    pub exe_id: Option<(u64, u64)>,
    pub cgroup: String,
    pub start_time: u64,
}

/// Attests by unix credentials and /proc.
pub struct UnixAttestor {
    proc_root: PathBuf,
    etc_root: PathBuf,
}

impl Default for UnixAttestor {
    fn default() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            etc_root: PathBuf::from("/etc"),
        }
    }
}

impl UnixAttestor {
    /// An attestor reading another /proc and /etc (for tests).
    pub fn with_roots(proc_root: PathBuf, etc_root: PathBuf) -> Self {
        Self {
            proc_root,
            etc_root,
        }
    }

    fn proc_err(pid: i32, e: impl std::fmt::Display) -> AttestError {
        AttestError::Proc {
            pid,
            reason: e.to_string(),
        }
    }

    /// The start time of `pid` (field 22 of /proc/PID/stat, in clock ticks).
    ///
    /// # Errors
    /// The process is gone or /proc is unreadable.
    pub fn start_time(&self, pid: i32) -> Result<u64, AttestError> {
        let stat = std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("stat"))
            .map_err(|e| Self::proc_err(pid, e))?;
        // The command name (field 2) may contain spaces and parentheses: skip
        // to the last ')'.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or_else(|| Self::proc_err(pid, "malformed stat"))?;
        // After ')' come fields 3.. ; start time is field 22, i.e. index 19 here.
        rest.split_whitespace()
            .nth(19)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Self::proc_err(pid, "malformed stat"))
    }

    /// Device and inode of the binary `pid` runs (following /proc/PID/exe).
    pub fn exe_id(&self, pid: i32) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(self.proc_root.join(pid.to_string()).join("exe"))
            .ok()
            .map(|m| (m.dev(), m.ino()))
    }

    /// Reads what /proc says about `pid`.
    ///
    /// # Errors
    /// See [`AttestError`].
    pub fn process_info(&self, pid: i32) -> Result<ProcessInfo, AttestError> {
        let dir = self.proc_root.join(pid.to_string());
        let start_time = self.start_time(pid)?;
        // A process of another user may not be readable (exe needs ptrace
        // rights); that is not fatal, it only yields no path selector.
        let exe_id = self.exe_id(pid);
        let exe = std::fs::read_link(dir.join("exe")).ok();
        let cgroup = std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
        Ok(ProcessInfo {
            exe,
            exe_id,
            cgroup,
            start_time,
        })
    }
}

/// The accept hook of the agent's sockets: records [`accepted`] for each
/// connection, so that attestation compares the caller with what it was at
/// connect time. A connection without credentials records nothing and is
/// refused when it calls.
#[must_use]
pub fn accept_hook() -> signet_uds::AcceptHook {
    signet_uds::AcceptHook::new(|stream| {
        let mut values = signet_uds::Extensions::new();
        if let Ok(peer) = accepted(stream) {
            values.insert(peer);
        }
        values
    })
}

/// Samples the peer of a connection just accepted: its credentials and its
/// executable now. [`accept_hook`] calls it in the accept loop of
/// `signet_uds::serve`, before the connection is handed to the gRPC server;
/// the result reaches each request's extensions (see [`AcceptedPeer`]).
///
/// # Errors
/// The socket carries no peer credentials.
pub fn accepted(stream: &tokio::net::UnixStream) -> Result<AcceptedPeer, AttestError> {
    let cred = stream.peer_cred().map_err(|_| AttestError::NoCredentials)?;
    let pid = cred.pid().ok_or(AttestError::NoCredentials)?;
    Ok(AcceptedPeer {
        cred: PeerCred {
            pid,
            uid: cred.uid(),
            gid: cred.gid(),
            exe_at_accept: UnixAttestor::default().exe_id(pid),
        },
    })
}

fn lookup_name(file: &Path, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let num: u32 = fields.next()?.parse().ok()?;
        (num == id && !name.is_empty()).then(|| name.to_owned())
    })
}

#[tonic::async_trait]
impl WorkloadAttestor for UnixAttestor {
    fn name(&self) -> &'static str {
        "unix"
    }

    async fn attest(&self, peer: PeerCred) -> Result<Vec<Selector>, AttestError> {
        let info = self.process_info(peer.pid)?;
        if peer.exe_at_accept.is_some() && peer.exe_at_accept != info.exe_id {
            tracing::warn!(
                pid = peer.pid,
                "the caller runs another executable than when it connected"
            );
            return Err(AttestError::ProcessChanged(peer.pid));
        }
        let mut selectors = vec![
            Selector::new("unix", format!("uid:{}", peer.uid)),
            Selector::new("unix", format!("gid:{}", peer.gid)),
        ];
        if let Some(name) = lookup_name(&self.etc_root.join("passwd"), peer.uid) {
            selectors.push(Selector::new("unix", format!("user:{name}")));
        }
        if let Some(name) = lookup_name(&self.etc_root.join("group"), peer.gid) {
            selectors.push(Selector::new("unix", format!("group:{name}")));
        }
        if let Some(exe) = &info.exe {
            // A replaced binary shows as "/path (deleted)"; it is not that path any more.
            let shown = exe.to_string_lossy();
            if !shown.ends_with(" (deleted)") {
                selectors.push(Selector::new("unix", format!("path:{shown}")));
            }
        }
        // PID reuse guard: the same PID must still name the same process,
        // running the same binary.
        match self.start_time(peer.pid) {
            Ok(t) if t == info.start_time => {}
            _ => return Err(AttestError::ProcessChanged(peer.pid)),
        }
        if self.exe_id(peer.pid) != info.exe_id {
            return Err(AttestError::ProcessChanged(peer.pid));
        }
        tracing::debug!(pid = peer.pid, cgroup = %info.cgroup.trim(), ?selectors, "attested workload");
        Ok(selectors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn attests_this_very_process() {
        let a = UnixAttestor::default();
        let pid = std::process::id() as i32;
        let uid = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap();
        let sel = a
            .attest(PeerCred {
                pid,
                uid,
                gid: 0,
                exe_at_accept: None,
            })
            .await
            .unwrap();
        assert!(sel.contains(&Selector::new("unix", format!("uid:{uid}"))));
        let exe = std::env::current_exe().unwrap();
        assert!(
            sel.contains(&Selector::new("unix", format!("path:{}", exe.display()))),
            "{sel:?}"
        );
        if uid == 0 {
            assert!(sel.contains(&Selector::new("unix", "user:root")));
        }
    }

    #[tokio::test]
    async fn a_process_that_is_gone_is_refused() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        let a = UnixAttestor::default();
        assert!(
            a.attest(PeerCred {
                pid,
                uid: 0,
                gid: 0,
                exe_at_accept: None,
            })
            .await
            .is_err()
        );
    }

    #[tokio::test]
    async fn pid_reuse_is_detected() {
        // A fake /proc whose stat changes between the two reads.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("4242");
        std::fs::create_dir_all(&p).unwrap();
        let stat = |start: u64| {
            format!("4242 (my (odd) name) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0")
        };
        std::fs::write(p.join("stat"), stat(100)).unwrap();
        let a = UnixAttestor::with_roots(dir.path().to_path_buf(), dir.path().to_path_buf());
        assert_eq!(a.start_time(4242).unwrap(), 100);
        let info = a.process_info(4242).unwrap();
        std::fs::write(p.join("stat"), stat(200)).unwrap();
        assert_ne!(a.start_time(4242).unwrap(), info.start_time);
    }

    #[tokio::test]
    async fn an_exec_after_accept_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let sleep = std::fs::canonicalize("/usr/bin/sleep").unwrap();
        // Connects, then (on a byte from us) execs `sleep` with the
        // connection still open.
        let script = "import os, socket, sys\n\
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
s.connect(sys.argv[1])\n\
s.recv(1)\n\
os.execv(sys.argv[2], [sys.argv[2], '30'])\n";
        let mut child = std::process::Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(script)
            .arg(&socket)
            .arg(&sleep)
            .spawn()
            .unwrap();
        let (mut stream, _) = listener.accept().await.unwrap();
        let peer = accepted(&stream).unwrap().cred;
        assert_eq!(peer.pid, child.id() as i32);
        let a = UnixAttestor::default();
        let before = a.attest(peer).await.unwrap();
        assert!(
            !before
                .iter()
                .any(|s| s.value == format!("path:{}", sleep.display())),
            "{before:?}"
        );
        tokio::io::AsyncWriteExt::write_all(&mut stream, b"x")
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_link(format!("/proc/{}/exe", peer.pid)).ok() != Some(sleep.clone()) {
            assert!(std::time::Instant::now() < deadline, "no exec");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let after = a.attest(peer).await;
        // Without the accept-time record, the same PID passes as `sleep`.
        let unrecorded = a
            .attest(PeerCred {
                exe_at_accept: None,
                ..peer
            })
            .await
            .unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            matches!(after, Err(AttestError::ProcessChanged(_))),
            "{after:?}"
        );
        assert!(unrecorded.contains(&Selector::new("unix", format!("path:{}", sleep.display()))));
    }

    #[test]
    fn names_come_from_passwd_and_group() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:1000:1000::/home/web:/bin/sh\n",
        )
        .unwrap();
        assert_eq!(
            lookup_name(&dir.path().join("passwd"), 1000).as_deref(),
            Some("web")
        );
        assert_eq!(lookup_name(&dir.path().join("passwd"), 7), None);
    }
}
