//! The CA's one auditor, with two explicit modes:
//!
//! - **durable**, for anything handed out or changed (SVIDs, JWT-SVIDs, node
//!   attestation and renewal, entries, join tokens, authorities): the caller
//!   gets its credential or its change only after the record is on disk.
//!   Records go either into the caller's own transaction (so that the change
//!   and its record commit together) or through the group-commit writer
//!   (`store::AuditLog`, one fsync per group).
//! - **best effort**, for refusals: a failed write is logged, never turned
//!   into an error, and refusals are rate limited so that callers who are
//!   refused (possibly unauthenticated) cannot grow the log without bound.
//!   Per (caller, action, reason) key the first few refusals of a window are
//!   written; the rest are counted and written as one "suppressed K similar
//!   refusals" record when the window closes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::error::CaError;
use super::time::unix;
use crate::store::{AuditLog, AuditRecord, Tx, insert_audit};

/// How refusal records are limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalLimits {
    /// Length of a counting window.
    pub window: Duration,
    /// Refusals written per key and window; later ones are counted.
    pub per_key: u32,
    /// Refusals written per window over all keys.
    pub total: u32,
    /// Keys tracked per window; refusals of further keys are counted together.
    pub max_keys: usize,
}

impl Default for RefusalLimits {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            per_key: 10,
            total: 600,
            max_keys: 1000,
        }
    }
}

/// The result written for a summary of suppressed refusals.
pub const SUPPRESSED: &str = "suppressed";

/// Writes the audit log; see the module documentation for the two modes.
pub struct Auditor {
    log: AuditLog,
    refusals: Mutex<RefusalLimiter>,
}

impl Auditor {
    /// An auditor writing through `log`.
    pub fn new(log: AuditLog, limits: RefusalLimits) -> Self {
        Self {
            log,
            refusals: Mutex::new(RefusalLimiter::new(limits)),
        }
    }

    /// Durable: returns once `records` are committed (group commit).
    ///
    /// # Errors
    /// [`CaError::Unavailable`] when they could not be written; the caller
    /// must then hand nothing out.
    pub fn durable(&self, records: Vec<AuditRecord>) -> Result<(), CaError> {
        self.log.append(records).map_err(|e| {
            tracing::error!(error = %e, "could not write the audit log; refusing to hand anything out");
            CaError::from(e)
        })
    }

    /// Durable, inside the caller's transaction: the record commits with
    /// the change it describes, or neither does.
    ///
    /// # Errors
    /// [`CaError::Unavailable`] when the record cannot be written.
    pub fn durable_in(&self, tx: &Tx<'_>, record: &AuditRecord) -> Result<(), CaError> {
        insert_audit(tx, record).map_err(|e| {
            tracing::error!(error = %e, "could not write the audit log; refusing to hand anything out");
            CaError::Unavailable(format!(
                "the audit log cannot be written, so nothing was issued or changed: {e}"
            ))
        })
    }

    /// Best effort, rate limited: records a refusal whose reason is
    /// `reason` (a closed set, e.g. the error kind).
    pub fn best_effort(&self, record: AuditRecord, reason: &'static str, now: SystemTime) {
        let key = Key {
            caller: caller_key(&record.caller),
            action: record.action.clone(),
            reason,
        };
        let (admit, mut out) = self.limiter().admit(key, now);
        if admit {
            out.push(record);
        }
        self.write_best_effort(out);
    }

    /// For a refusal recorded together with other records (a batch's
    /// refused items, which commit with its issued ones): whether it is
    /// written, and summaries of a closed window to write along with it.
    pub fn admit_refusal(
        &self,
        caller: &str,
        action: &str,
        reason: &'static str,
        now: SystemTime,
    ) -> (bool, Vec<AuditRecord>) {
        self.limiter().admit(
            Key {
                caller: caller_key(caller),
                action: action.to_owned(),
                reason,
            },
            now,
        )
    }

    /// Writes the summaries of a window that has closed. Called periodically
    /// so that suppressed counts appear even when refusals stop.
    pub fn flush(&self, now: SystemTime) {
        let out = self.limiter().close_if_due(now);
        self.write_best_effort(out);
    }

    /// Writes the summaries of the current window even though it has not
    /// closed yet: called when the CA stops.
    pub fn flush_all(&self, now: SystemTime) {
        let out = self.limiter().close(now);
        self.write_best_effort(out);
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, RefusalLimiter> {
        self.refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_best_effort(&self, records: Vec<AuditRecord>) {
        if records.is_empty() {
            return;
        }
        if let Err(e) = self.log.append(records) {
            tracing::error!(error = %e, "could not write refusals to the audit log");
        }
    }
}

/// The part of a caller that names it across connections: the source port
/// of a TCP peer and the pid of an admin client change with every
/// connection, so they are dropped.
fn caller_key(caller: &str) -> String {
    let (prefix, addr) = match caller.rsplit_once('@') {
        Some((p, a)) => (Some(p), a),
        None => (None, caller),
    };
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return match prefix {
            Some(p) => format!("{p}@{}", sa.ip()),
            None => sa.ip().to_string(),
        };
    }
    match caller.split_once(",pid=") {
        Some((head, tail)) => match tail.split_once(')') {
            Some((_, rest)) => format!("{head}){rest}"),
            None => head.to_owned(),
        },
        None => caller.to_owned(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    caller: String,
    action: String,
    reason: &'static str,
}

#[derive(Debug, Default)]
struct Count {
    written: u32,
    suppressed: u64,
}

/// Counts refusals per key over fixed windows. Pure: the caller writes what
/// it returns.
#[derive(Debug)]
struct RefusalLimiter {
    limits: RefusalLimits,
    start: Option<SystemTime>,
    keys: HashMap<Key, Count>,
    written: u32,
    untracked: u64,
}

impl RefusalLimiter {
    fn new(limits: RefusalLimits) -> Self {
        Self {
            limits,
            start: None,
            keys: HashMap::new(),
            written: 0,
            untracked: 0,
        }
    }

    /// Whether this refusal is written, and the summaries of a window that
    /// closed before it.
    fn admit(&mut self, key: Key, now: SystemTime) -> (bool, Vec<AuditRecord>) {
        let closed = self.close_if_due(now);
        if self.start.is_none() {
            self.start = Some(now);
        }
        let under_total = self.written < self.limits.total;
        let room = self.keys.len() < self.limits.max_keys;
        let admit = match self.keys.get_mut(&key) {
            Some(count) => {
                let admit = under_total && count.written < self.limits.per_key;
                if admit {
                    count.written += 1;
                } else {
                    count.suppressed += 1;
                }
                admit
            }
            None if room => {
                let admit = under_total && self.limits.per_key > 0;
                let count = if admit {
                    Count {
                        written: 1,
                        suppressed: 0,
                    }
                } else {
                    Count {
                        written: 0,
                        suppressed: 1,
                    }
                };
                self.keys.insert(key, count);
                admit
            }
            None => {
                self.untracked += 1;
                false
            }
        };
        if admit {
            self.written += 1;
        }
        (admit, closed)
    }

    /// When the current window is over: one summary per key that had
    /// refusals suppressed (plus one for untracked keys), and a new window.
    fn close_if_due(&mut self, now: SystemTime) -> Vec<AuditRecord> {
        match self.start {
            Some(start) if now >= start + self.limits.window => self.close(now),
            _ => Vec::new(),
        }
    }

    /// Closes the current window now, due or not (at shutdown), so that no
    /// suppressed count is lost.
    fn close(&mut self, now: SystemTime) -> Vec<AuditRecord> {
        let Some(start) = self.start else {
            return Vec::new();
        };
        let window = humantime::format_duration(self.limits.window);
        let mut out: Vec<AuditRecord> = self
            .keys
            .drain()
            .filter(|(_, c)| c.suppressed > 0)
            .map(|(k, c)| AuditRecord {
                at: unix(now),
                caller: k.caller,
                action: k.action,
                result: SUPPRESSED.into(),
                detail: format!(
                    "suppressed {} similar refusals ({}) in the {window} from {}",
                    c.suppressed,
                    k.reason,
                    unix(start)
                ),
                ..AuditRecord::default()
            })
            .collect();
        out.sort_by(|a, b| (&a.caller, &a.action).cmp(&(&b.caller, &b.action)));
        if self.untracked > 0 {
            out.push(AuditRecord {
                at: unix(now),
                caller: "*".into(),
                action: "*".into(),
                result: SUPPRESSED.into(),
                detail: format!(
                    "suppressed {} refusals from more than {} distinct callers in the {window} from {}",
                    self.untracked,
                    self.limits.max_keys,
                    unix(start)
                ),
                ..AuditRecord::default()
            });
        }
        self.start = None;
        self.written = 0;
        self.untracked = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(caller: &str, action: &str) -> Key {
        Key {
            caller: caller_key(caller),
            action: action.into(),
            reason: "permission_denied",
        }
    }

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
    }

    fn limits() -> RefusalLimits {
        RefusalLimits {
            window: Duration::from_secs(60),
            per_key: 3,
            total: 5,
            max_keys: 2,
        }
    }

    #[test]
    fn callers_are_keyed_without_ports_and_pids() {
        for (caller, key) in [
            ("127.0.0.1:5555", "127.0.0.1"),
            ("[::1]:80", "::1"),
            (
                "spiffe://td/signet/node/a@10.0.0.1:4000",
                "spiffe://td/signet/node/a@10.0.0.1",
            ),
            ("admin(uid=0,pid=42)", "admin(uid=0)"),
            ("admin", "admin"),
            ("unknown", "unknown"),
        ] {
            assert_eq!(caller_key(caller), key, "{caller}");
        }
    }

    #[test]
    fn the_first_refusals_of_a_key_are_written_and_the_rest_summarized() {
        let mut l = RefusalLimiter::new(limits());
        let admitted: Vec<bool> = (0..10)
            .map(|i| {
                let caller = format!("127.0.0.1:{}", 1000 + i);
                let (admit, closed) = l.admit(key(&caller, "attest_node"), at(i));
                assert!(closed.is_empty());
                admit
            })
            .collect();
        assert_eq!(admitted.iter().filter(|a| **a).count(), 3);
        assert!(admitted[..3].iter().all(|a| *a));
        // Nothing is due before the window ends.
        assert!(l.close_if_due(at(59)).is_empty());
        let summaries = l.close_if_due(at(60));
        assert_eq!(summaries.len(), 1, "{summaries:?}");
        assert_eq!(summaries[0].caller, "127.0.0.1");
        assert_eq!(summaries[0].action, "attest_node");
        assert_eq!(summaries[0].result, SUPPRESSED);
        assert!(
            summaries[0]
                .detail
                .starts_with("suppressed 7 similar refusals (permission_denied)"),
            "{}",
            summaries[0].detail
        );
        // A new window starts afresh; a closed window is not summarized twice.
        assert!(l.close_if_due(at(200)).is_empty());
        assert!(l.admit(key("127.0.0.1:1", "attest_node"), at(201)).0);
    }

    #[test]
    fn a_window_without_suppression_writes_no_summary() {
        let mut l = RefusalLimiter::new(limits());
        assert!(l.admit(key("a", "x"), at(0)).0);
        assert!(l.admit(key("a", "x"), at(1)).0);
        let (admit, closed) = l.admit(key("a", "x"), at(61));
        assert!(admit);
        assert!(closed.is_empty());
    }

    #[test]
    fn the_total_and_the_number_of_keys_are_bounded() {
        let mut l = RefusalLimiter::new(limits());
        // Two keys, three each would be six; the total allows five.
        let mut written = 0;
        for i in 0..3 {
            written += u32::from(l.admit(key("a", "x"), at(i)).0);
            written += u32::from(l.admit(key("b", "x"), at(i)).0);
        }
        assert_eq!(written, 5);
        // A third key is beyond max_keys: counted, never written.
        for i in 0..4 {
            assert!(!l.admit(key(&format!("c{i}"), "x"), at(10)).0);
        }
        let summaries = l.close_if_due(at(100));
        let untracked = summaries.iter().find(|r| r.caller == "*").unwrap();
        assert!(
            untracked.detail.starts_with("suppressed 4 refusals"),
            "{}",
            untracked.detail
        );
        assert_eq!(
            summaries.len(),
            2,
            "b's sixth and the untracked: {summaries:?}"
        );
    }
}
