//! The agent's audit log of refused workloads: one JSON object per line,
//! appended to a file only the agent can read (0600), size-capped with one
//! rotated file (`<path>.1`), so it never holds more than twice the cap.
//!
//! Records are written by one thread of their own through a bounded
//! queue: serving never waits for the disk. A record that cannot be
//! queued or written is logged and counted
//! (`signet_agent_audit_write_failures`), and the caller is served or
//! refused as it would have been anyway.
//!
//! Records carry the time, the event, the caller's pid, uid and gid, the
//! attestor, a reason from a closed set and the error's message; error
//! messages name pods, containers, paths and URLs, never a token.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::SystemTime;

use super::{AttestError, PeerCred, WorkloadAttestor};
use crate::state::Selector;

/// Records waiting for the writer; more are dropped (and counted).
const QUEUE: usize = 1024;
/// Longest error message kept in a record.
const MAX_DETAIL: usize = 1024;
/// Smallest accepted size cap: one record always fits.
pub const MIN_MAX_BYTES: u64 = 4096;

/// Where the log goes and how large it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    pub path: PathBuf,
    /// Size of the live file before it is rotated to `<path>.1`.
    pub max_bytes: u64,
}

/// The event of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A caller was refused by workload attestation.
    WorkloadRefused,
}

impl Event {
    fn as_str(self) -> &'static str {
        match self {
            Self::WorkloadRefused => "workload_refused",
        }
    }
}

/// The reason of a refusal, a closed set: the attestation error's kind.
#[must_use]
pub fn reason(error: &AttestError) -> &'static str {
    match error {
        AttestError::NoCredentials => "no_credentials",
        AttestError::ProcessChanged(_) => "process_changed",
        AttestError::Proc { .. } => "proc_unreadable",
        AttestError::K8s(e) => e.kind(),
    }
}

enum Msg {
    Line(String),
    Flush(mpsc::Sender<()>),
}

/// The running audit log; cheap to share.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::SyncSender<Msg>,
}

impl AuditLog {
    /// Starts the writer thread. The file is opened (and its directory
    /// made, 0700) at the first record, so that a data directory that does
    /// not exist yet is made by whoever comes first with the same mode.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn start(settings: AuditSettings) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || Writer::new(settings).run(&rx))?;
        Ok(Self { tx })
    }

    /// Queues a refusal of `peer` by `attestor`.
    pub fn refused(&self, attestor: &str, peer: PeerCred, error: &AttestError) {
        let mut detail = error.to_string();
        if detail.len() > MAX_DETAIL {
            let mut cut = MAX_DETAIL;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        let record = serde_json::json!({
            "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            "event": Event::WorkloadRefused.as_str(),
            "attestor": attestor,
            "pid": peer.pid,
            "uid": peer.uid,
            "gid": peer.gid,
            "reason": reason(error),
            "retryable": error.is_unavailable(),
            "detail": detail,
        });
        self.queue(record.to_string());
    }

    fn queue(&self, line: String) {
        if let Err(e) = self.tx.try_send(Msg::Line(line)) {
            let why = match e {
                mpsc::TrySendError::Full(_) => "queue full",
                mpsc::TrySendError::Disconnected(_) => "writer stopped",
            };
            tracing::warn!(reason = why, "audit record dropped");
            crate::metrics::audit_write_failed();
        }
    }

    /// Waits until every record queued before this call is written (or
    /// failed). For tests and shutdown.
    pub fn flush(&self) {
        let (done, wait) = mpsc::channel();
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }
}

/// The writer thread's state: the open file and its size.
struct Writer {
    settings: AuditSettings,
    file: Option<(File, u64)>,
}

impl Writer {
    fn new(settings: AuditSettings) -> Self {
        Self {
            settings,
            file: None,
        }
    }

    fn run(mut self, rx: &mpsc::Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            match msg {
                Msg::Line(line) => {
                    if let Err(e) = self.write(&line) {
                        tracing::warn!(path = %self.settings.path.display(), error = %e, "cannot write an audit record");
                        crate::metrics::audit_write_failed();
                        // Open again next time: the file may have been
                        // removed or its disk replaced.
                        self.file = None;
                    }
                }
                Msg::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    fn write(&mut self, line: &str) -> std::io::Result<()> {
        let path = &self.settings.path;
        let len = line.len() as u64 + 1;
        let (mut file, mut size) = match self.file.take() {
            Some(open) => open,
            None => open(path)?,
        };
        if size > 0 && size + len > self.settings.max_bytes {
            drop(file);
            std::fs::rename(path, rotated_path(path))?;
            (file, size) = open(path)?;
        }
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        file.write_all(&buf)?;
        self.file = Some((file, size + len));
        Ok(())
    }
}

/// `<path>.1`.
#[must_use]
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// Opens `path` for appending, 0600 (also when it existed with another
/// mode), making its directory 0700 if needed.
fn open(path: &Path) -> std::io::Result<(File, u64)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.permissions().mode() & 0o777 != 0o600 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok((file, meta.len()))
}

/// An attestor whose refusals are written to the audit log.
pub struct Audited {
    inner: Arc<dyn WorkloadAttestor>,
    log: AuditLog,
}

impl Audited {
    #[must_use]
    pub fn new(inner: Arc<dyn WorkloadAttestor>, log: AuditLog) -> Self {
        Self { inner, log }
    }
}

#[tonic::async_trait]
impl WorkloadAttestor for Audited {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn attest(&self, peer: PeerCred) -> Result<Vec<Selector>, AttestError> {
        let result = self.inner.attest(peer).await;
        if let Err(e) = &result {
            self.log.refused(self.inner.name(), peer, e);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerCred {
        PeerCred {
            pid: 4242,
            uid: 1000,
            gid: 1000,
            exe_at_accept: None,
        }
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_refusal_is_one_json_line_with_the_caller_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/audit.jsonl");
        let log = AuditLog::start(AuditSettings {
            path: path.clone(),
            max_bytes: 1 << 20,
        })
        .unwrap();
        log.refused("unix", peer(), &AttestError::ProcessChanged(4242));
        log.flush();
        let got = lines(&path);
        assert_eq!(got.len(), 1);
        let r = &got[0];
        assert_eq!(r["event"], "workload_refused");
        assert_eq!(r["attestor"], "unix");
        assert_eq!(r["pid"], 4242);
        assert_eq!(r["uid"], 1000);
        assert_eq!(r["gid"], 1000);
        assert_eq!(r["reason"], "process_changed");
        assert_eq!(r["retryable"], false);
        assert!(r["detail"].as_str().unwrap().contains("4242"));
        let time = r["time"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
    }

    #[test]
    fn an_existing_file_is_appended_to_and_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "{\"event\":\"earlier\"}\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let log = AuditLog::start(AuditSettings {
            path: path.clone(),
            max_bytes: 1 << 20,
        })
        .unwrap();
        log.refused("unix", peer(), &AttestError::NoCredentials);
        log.flush();
        let got = lines(&path);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0]["event"], "earlier");
        assert_eq!(got[1]["reason"], "no_credentials");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn the_log_is_capped_with_one_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let max = MIN_MAX_BYTES;
        let log = AuditLog::start(AuditSettings {
            path: path.clone(),
            max_bytes: max,
        })
        .unwrap();
        for pid in 0..200 {
            log.refused(
                "unix",
                PeerCred { pid, ..peer() },
                &AttestError::ProcessChanged(pid),
            );
        }
        log.flush();
        let live = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(rotated_path(&path)).unwrap().len();
        assert!(live <= max && old <= max, "{live} {old}");
        // No third file, and the newest record is in the live file.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        let last = lines(&path).pop().unwrap();
        assert_eq!(last["pid"], 199);
        // Every record in the two files is whole, and they follow on.
        let mut pids: Vec<i64> = lines(&rotated_path(&path))
            .into_iter()
            .chain(lines(&path))
            .map(|r| r["pid"].as_i64().unwrap())
            .collect();
        let n = pids.len();
        assert!(n > 10);
        pids.dedup();
        assert_eq!(pids, ((200 - n as i64)..200).collect::<Vec<_>>());
    }

    #[test]
    fn a_failed_write_is_counted_and_the_next_one_tries_again() {
        let dir = tempfile::tempdir().unwrap();
        // The log's directory is a file: every open fails.
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, "").unwrap();
        let path = blocker.join("audit.jsonl");
        let log = AuditLog::start(AuditSettings {
            path,
            max_bytes: 1 << 20,
        })
        .unwrap();
        let before = crate::metrics::audit_write_failures();
        log.refused("unix", peer(), &AttestError::NoCredentials);
        log.flush();
        assert_eq!(crate::metrics::audit_write_failures(), before + 1);
        // The obstacle goes away: the next record is written.
        std::fs::remove_file(&blocker).unwrap();
        log.refused("unix", peer(), &AttestError::NoCredentials);
        log.flush();
        assert_eq!(lines(&blocker.join("audit.jsonl")).len(), 1);
    }

    struct Refuses;

    #[tonic::async_trait]
    impl WorkloadAttestor for Refuses {
        fn name(&self) -> &'static str {
            "refuses"
        }
        async fn attest(&self, peer: PeerCred) -> Result<Vec<Selector>, AttestError> {
            Err(AttestError::Proc {
                pid: peer.pid,
                reason: "gone".into(),
            })
        }
    }

    struct Accepts;

    #[tonic::async_trait]
    impl WorkloadAttestor for Accepts {
        fn name(&self) -> &'static str {
            "accepts"
        }
        async fn attest(&self, _: PeerCred) -> Result<Vec<Selector>, AttestError> {
            Ok(vec![Selector::new("unix", "uid:1000")])
        }
    }

    #[tokio::test]
    async fn an_audited_attestor_records_refusals_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::start(AuditSettings {
            path: path.clone(),
            max_bytes: 1 << 20,
        })
        .unwrap();
        let ok = Audited::new(Arc::new(Accepts), log.clone());
        let no = Audited::new(Arc::new(Refuses), log.clone());
        assert_eq!(no.name(), "refuses");
        assert!(ok.attest(peer()).await.is_ok());
        let err = no.attest(peer()).await.unwrap_err();
        assert!(matches!(err, AttestError::Proc { .. }));
        log.flush();
        let got = lines(&path);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["attestor"], "refuses");
        assert_eq!(got[0]["reason"], "proc_unreadable");
        assert_eq!(got[0]["retryable"], true);
    }
}
