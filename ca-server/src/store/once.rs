//! Work that must happen once per trust domain, not once per replica
//! (audit pruning, rotation decisions), and the bundle sequence's
//! read-modify-write: PostgreSQL advisory locks. On SQLite there is one
//! replica, so every lock is granted at once.
//!
//! The once-only locks are session locks (`pg_try_advisory_lock`) held on
//! one pooled connection for as long as the guard lives; the work itself
//! runs on other connections. If the replica dies, its session ends and
//! the lock goes with it, so another replica takes the work over.

use super::postgres::Lease;
use super::{Backend, BackendImpl, Store, StoreError, Tx};
use crate::args;

/// Every advisory key of this schema starts from "signet" in ASCII (the
/// migration lock itself); each kind of work adds its own offset.
const KEY_BASE: i64 = 0x7369_676e_6574;

/// The bundle sequence's read-modify-write (a transaction lock).
const BUNDLE_KEY: i64 = KEY_BASE + 1;

/// Work that one replica does at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnceWork {
    /// Deleting audit records past their retention.
    AuditPruning,
    /// Retiring the authorities of replicas that are gone.
    OrphanAuthorities,
    /// Fetching the federated bundles (held for as long as this replica
    /// is the poller).
    Federation,
    /// Removing the rows of replicas that stopped or went silent long ago.
    ReplicaCleanup,
}

impl OnceWork {
    fn key(self) -> i64 {
        KEY_BASE
            + match self {
                Self::AuditPruning => 2,
                Self::OrphanAuthorities => 3,
                Self::ReplicaCleanup => 4,
                Self::Federation => 5,
            }
    }
}

/// Held while this replica does the work; dropping it lets another
/// replica take the next turn.
#[must_use = "the work is this replica's only while the guard lives"]
pub struct OnceGuard {
    held: Option<(Lease, i64)>,
}

impl OnceGuard {
    /// Whether the lock is still this replica's: its session still
    /// answers (a session lock lasts as long as the session). Always true
    /// on SQLite.
    pub fn still_held(&self) -> bool {
        match &self.held {
            None => true,
            Some((lease, _)) => lease.query("SELECT 1", &[]).is_ok(),
        }
    }
}

impl Drop for OnceGuard {
    fn drop(&mut self) {
        if let Some((lease, key)) = self.held.take()
            && lease
                .query("SELECT pg_advisory_unlock(?1)", args![key])
                .is_err()
        {
            // The lock may still be held by this session: close it so
            // that the lock goes with it.
            lease.discard();
        }
    }
}

impl Store {
    /// Takes `work` for this replica if no other replica is doing it;
    /// `None` when one is.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database cannot be reached.
    pub fn try_once(&self, work: OnceWork) -> Result<Option<OnceGuard>, StoreError> {
        match &*self.backend {
            BackendImpl::Sqlite(_) => Ok(Some(OnceGuard { held: None })),
            BackendImpl::Postgres(pool) => {
                let lease = pool.get()?;
                let got: bool = lease
                    .query("SELECT pg_try_advisory_lock(?1)", args![work.key()])?
                    .first()
                    .ok_or_else(|| {
                        StoreError::Corrupt("pg_try_advisory_lock answered no row".into())
                    })?
                    .get(0)?;
                Ok(got.then(|| OnceGuard {
                    held: Some((lease, work.key())),
                }))
            }
        }
    }
}

/// Inside a transaction: waits until no other replica's transaction is
/// changing the bundle sequence, and keeps the others waiting until this
/// one ends (two replicas could otherwise both read sequence n and both
/// write n + 1 for different content).
///
/// # Errors
/// Database errors.
pub fn lock_bundle(tx: &Tx<'_>) -> Result<(), StoreError> {
    match tx.backend() {
        Backend::Sqlite => Ok(()),
        Backend::Postgres => tx.batch(&format!("SELECT pg_advisory_xact_lock({BUNDLE_KEY})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::each_backend;

    #[test]
    fn once_only_work_goes_to_one_replica_at_a_time() {
        each_backend::run(|f| {
            let first = f.store.try_once(OnceWork::AuditPruning).unwrap();
            assert!(first.is_some());
            if f.pg().is_none() {
                // SQLite: one replica, always granted.
                assert!(f.store.try_once(OnceWork::AuditPruning).unwrap().is_some());
                return;
            }
            let other = f.reopen();
            assert!(other.try_once(OnceWork::AuditPruning).unwrap().is_none());
            // Another kind of work is free.
            let rotation = other.try_once(OnceWork::OrphanAuthorities).unwrap();
            assert!(rotation.is_some());
            drop(first);
            assert!(other.try_once(OnceWork::AuditPruning).unwrap().is_some());
            drop(rotation);
        });
    }

    #[test]
    fn the_bundle_lock_serializes_transactions_of_two_replicas() {
        each_backend::run(|f| {
            let Some(db) = f.pg() else {
                f.store.transaction(lock_bundle).unwrap();
                return;
            };
            let other = f.reopen();
            let (locked_tx, locked_rx) = std::sync::mpsc::channel();
            let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
            std::thread::scope(|s| {
                let store = &f.store;
                s.spawn(move || {
                    store
                        .transaction(|tx| {
                            lock_bundle(tx)?;
                            locked_tx.send(()).unwrap();
                            release_rx.recv().unwrap();
                            super::super::meta_set(tx, "probe", "first")
                        })
                        .unwrap();
                });
                locked_rx.recv().unwrap();
                let second = s.spawn(|| {
                    other
                        .transaction(|tx| {
                            lock_bundle(tx)?;
                            // Only reached once the first committed.
                            let seen = super::super::meta_get(tx, "probe")?;
                            super::super::meta_set(tx, "probe", "second")?;
                            Ok::<_, StoreError>(seen)
                        })
                        .unwrap()
                });
                // The second waits on the lock (not merely later): seen
                // from PostgreSQL, before the first is let go.
                let mut waiting = false;
                for _ in 0..200 {
                    let n = db
                        .psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
                        .unwrap();
                    if n == "1" {
                        waiting = true;
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                release_tx.send(()).unwrap();
                assert!(waiting, "the second transaction never waited for the lock");
                assert_eq!(second.join().unwrap().as_deref(), Some("first"));
            });
        });
    }
}
