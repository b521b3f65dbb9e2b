//! Replica rows: every CA process that serves this trust domain from this
//! database, with what it signs with, how many agents it serves and when
//! it last said it was alive. On SQLite there is one row (the only
//! replica); on PostgreSQL one per replica. A replica writes only its own
//! row; operators read them all.

use super::{Store, StoreError, Tx};
use crate::args;

/// One replica as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRow {
    /// Stable per data directory.
    pub id: String,
    /// Where its node API listens.
    pub address: String,
    /// Unix seconds.
    pub started_at: i64,
    pub heartbeat_at: i64,
    /// Agents with an open bundle stream to it.
    pub agents_connected: u32,
    /// The id of the authority it signs X.509-SVIDs with.
    pub signing_authority: String,
    /// Set when it stopped cleanly; `None` while running (or after a crash,
    /// when only the heartbeat's age tells).
    pub stopped_at: Option<i64>,
}

const SELECT: &str = "SELECT id, address, started_at, heartbeat_at, agents_connected,
     signing_authority, stopped_at FROM replicas";

impl Store {
    /// Records that the replica `row.id` started (or started again):
    /// replaces its row, clearing any earlier stop.
    ///
    /// # Errors
    /// Database errors.
    pub fn register_replica(&self, row: &ReplicaRow) -> Result<(), StoreError> {
        self.with_conn(|tx| {
            tx.execute(
                "INSERT INTO replicas (id, address, started_at, heartbeat_at, agents_connected,
                     signing_authority, stopped_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)
                 ON CONFLICT (id) DO UPDATE SET address = excluded.address,
                     started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,
                     agents_connected = excluded.agents_connected,
                     signing_authority = excluded.signing_authority, stopped_at = NULL",
                args![
                    &row.id,
                    &row.address,
                    row.started_at,
                    row.heartbeat_at,
                    row.agents_connected,
                    &row.signing_authority,
                ],
            )?;
            Ok(())
        })
    }

    /// A running replica's heartbeat: its time, agents and signing
    /// authority. Recreates the row if someone removed it (its start time
    /// is then the heartbeat's).
    ///
    /// # Errors
    /// Database errors.
    pub fn replica_heartbeat(&self, row: &ReplicaRow) -> Result<(), StoreError> {
        self.with_conn(|tx| {
            tx.execute(
                "INSERT INTO replicas (id, address, started_at, heartbeat_at, agents_connected,
                     signing_authority, stopped_at)
                 VALUES (?1, ?2, ?3, ?3, ?4, ?5, NULL)
                 ON CONFLICT (id) DO UPDATE SET address = excluded.address,
                     heartbeat_at = excluded.heartbeat_at,
                     agents_connected = excluded.agents_connected,
                     signing_authority = excluded.signing_authority, stopped_at = NULL",
                args![
                    &row.id,
                    &row.address,
                    row.heartbeat_at,
                    row.agents_connected,
                    &row.signing_authority,
                ],
            )?;
            Ok(())
        })
    }

    /// Records a clean stop of replica `id` at `at`, with no agents left.
    ///
    /// # Errors
    /// Database errors.
    pub fn replica_stopped(&self, id: &str, at: i64) -> Result<(), StoreError> {
        self.with_conn(|tx| {
            tx.execute(
                "UPDATE replicas SET stopped_at = ?2, heartbeat_at = ?2, agents_connected = 0
                 WHERE id = ?1",
                args![id, at],
            )?;
            Ok(())
        })
    }

    /// Removes the rows of replicas that stopped cleanly before
    /// `stopped_before`, and of replicas whose last heartbeat is older than
    /// `silent_before` (crashed or gone without a stop) whatever their
    /// state. Returns how many rows went. A replica still running writes
    /// its row back with its next heartbeat.
    ///
    /// # Errors
    /// Database errors.
    pub fn remove_gone_replicas(
        &self,
        stopped_before: i64,
        silent_before: i64,
    ) -> Result<u64, StoreError> {
        self.with_conn(|tx| {
            tx.execute(
                "DELETE FROM replicas
                 WHERE (stopped_at IS NOT NULL AND stopped_at < ?1) OR heartbeat_at < ?2",
                args![stopped_before, silent_before],
            )
        })
    }

    /// Every replica ever registered, by id.
    ///
    /// # Errors
    /// Database errors.
    pub fn replicas(&self) -> Result<Vec<ReplicaRow>, StoreError> {
        self.with_conn(list)
    }
}

/// Every replica, by id, read inside `tx`.
///
/// # Errors
/// Database errors.
pub fn list(tx: &Tx<'_>) -> Result<Vec<ReplicaRow>, StoreError> {
    tx.query(&format!("{SELECT} ORDER BY id"), &[])?
        .iter()
        .map(|r| {
            Ok(ReplicaRow {
                id: r.get(0)?,
                address: r.get(1)?,
                started_at: r.get(2)?,
                heartbeat_at: r.get(3)?,
                agents_connected: r.get(4)?,
                signing_authority: r.get(5)?,
                stopped_at: r.get(6)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::each_backend;

    fn row(id: &str, at: i64) -> ReplicaRow {
        ReplicaRow {
            id: id.into(),
            address: format!("127.0.0.1:{at}"),
            started_at: at,
            heartbeat_at: at,
            agents_connected: 0,
            signing_authority: "i1".into(),
            stopped_at: None,
        }
    }

    #[test]
    fn replicas_register_heartbeat_and_stop() {
        each_backend::run(|f| {
            let store = &f.store;
            assert!(store.replicas().unwrap().is_empty());
            store.register_replica(&row("a", 10)).unwrap();
            // Another replica on its own connections (one process on SQLite).
            let other = f.reopen();
            other.register_replica(&row("b", 11)).unwrap();

            store
                .replica_heartbeat(&ReplicaRow {
                    heartbeat_at: 20,
                    agents_connected: 3,
                    signing_authority: "i2".into(),
                    ..row("a", 10)
                })
                .unwrap();
            other.replica_stopped("b", 25).unwrap();

            let all = store.replicas().unwrap();
            assert_eq!(all.len(), 2, "{all:?}");
            assert_eq!(
                all[0],
                ReplicaRow {
                    heartbeat_at: 20,
                    agents_connected: 3,
                    signing_authority: "i2".into(),
                    ..row("a", 10)
                }
            );
            assert_eq!(all[1].stopped_at, Some(25));
            assert_eq!(all[1].heartbeat_at, 25);
            assert_eq!(all[1].started_at, 11);

            // Starting again clears the stop and takes the new start time.
            other.register_replica(&row("b", 30)).unwrap();
            let b = store.replicas().unwrap().remove(1);
            assert_eq!(b, row("b", 30));
        });
    }

    #[test]
    fn rows_of_replicas_stopped_or_silent_long_ago_are_removed() {
        each_backend::run(|f| {
            let store = &f.store;
            let other = f.reopen();
            // Stopped long ago, stopped recently, silent long ago (a crash),
            // alive.
            store.register_replica(&row("stopped-old", 10)).unwrap();
            store.replica_stopped("stopped-old", 100).unwrap();
            other.register_replica(&row("stopped-new", 10)).unwrap();
            other.replica_stopped("stopped-new", 900).unwrap();
            store.register_replica(&row("crashed", 50)).unwrap();
            other
                .replica_heartbeat(&ReplicaRow {
                    heartbeat_at: 990,
                    ..row("alive", 10)
                })
                .unwrap();

            // Stopped before 500 or silent since before 60.
            assert_eq!(store.remove_gone_replicas(500, 60).unwrap(), 2);
            let ids: Vec<String> = store
                .replicas()
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect();
            assert_eq!(ids, ["alive", "stopped-new"]);

            // Nothing more to remove with the same cutoffs.
            assert_eq!(other.remove_gone_replicas(500, 60).unwrap(), 0);
            // A stopped row also goes once its stop (its last heartbeat)
            // is older than the silence cutoff.
            assert_eq!(store.remove_gone_replicas(0, 901).unwrap(), 1);
            let ids: Vec<String> = store
                .replicas()
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect();
            assert_eq!(ids, ["alive"]);
        });
    }

    #[test]
    fn a_heartbeat_recreates_a_removed_row() {
        each_backend::run(|f| {
            f.store
                .replica_heartbeat(&ReplicaRow {
                    heartbeat_at: 40,
                    ..row("c", 1)
                })
                .unwrap();
            let all = f.store.replicas().unwrap();
            assert_eq!(all.len(), 1);
            assert_eq!((all[0].started_at, all[0].heartbeat_at), (40, 40));
        });
    }
}
