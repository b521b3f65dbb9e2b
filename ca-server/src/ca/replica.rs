//! This process as one replica of the trust domain's CA: its id (stable
//! per data directory, so a restarted replica keeps its row), its row in
//! the store's `replicas` table, and the heartbeat that keeps the row
//! current. On SQLite there is one replica; the code path is the same.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Ca;
use super::error::OpenError;
use super::time::unix;
use crate::store::ReplicaRow;

/// The file in the data directory that holds the replica id.
pub const REPLICA_ID_FILE: &str = "replica-id";

/// How often a replica refreshes its row. Operators judge a replica whose
/// heartbeat is several periods old as gone.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// How long the row of a cleanly stopped replica stays listed (so that
/// `signet ca status` shows the stop for a while) before it is removed.
pub const STOPPED_ROW_RETENTION: Duration = Duration::from_secs(10 * 60);

/// A replica silent for this long (no heartbeat, no clean stop: it crashed
/// or its machine is gone) has its row removed. A replica that was only
/// cut off from the database writes its row back with its next heartbeat.
pub const SILENT_ROW_RETENTION: Duration = Duration::from_secs(60 * 60);

/// Every this many heartbeats, a replica tries to remove the rows of gone
/// replicas (one replica does it at a time).
const CLEANUP_EVERY_HEARTBEATS: u32 = 60;

/// Longest replica id read back from the file (ours are 16 hex digits).
const MAX_ID_LEN: usize = 64;

/// Reads the replica id from `data_dir`, or makes one and writes it there
/// (0600, atomically) the first time.
///
/// # Errors
/// [`OpenError::ReplicaId`] when the file cannot be read or written, or
/// holds something that is not an id.
pub fn load_or_create_id(data_dir: &Path) -> Result<String, OpenError> {
    let path = data_dir.join(REPLICA_ID_FILE);
    let fail = |reason: String| OpenError::ReplicaId {
        path: path.clone(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            let valid = !id.is_empty()
                && id.len() <= MAX_ID_LEN
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if valid {
                Ok(id.to_owned())
            } else {
                Err(fail(
                    "does not hold a replica id (1 to 64 letters, digits, '-' or '_'); remove it to get a new one".into(),
                ))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = super::entries::random_hex::<8>().map_err(|e| fail(e.to_string()))?;
            signet_identity::fsutil::write_atomic(&path, format!("{id}\n").as_bytes(), 0o600)
                .map_err(|e| fail(e.to_string()))?;
            Ok(id)
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

impl Ca {
    /// This replica's id.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// This replica's row as of now, for `address`.
    fn replica_row(&self, address: &str, started_at: i64) -> ReplicaRow {
        let agents = self
            .connected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len();
        ReplicaRow {
            id: self.replica_id.clone(),
            address: address.to_owned(),
            started_at,
            heartbeat_at: unix(self.now()),
            agents_connected: u32::try_from(agents).unwrap_or(u32::MAX),
            signing_authority: self.signing().signer_id.clone(),
            stopped_at: None,
        }
    }

    /// Records that this replica started, serving its node API at `address`.
    ///
    /// # Errors
    /// Store errors.
    pub fn register_replica(&self, address: &str) -> Result<(), super::CaError> {
        let row = self.replica_row(address, unix(self.now()));
        self.store.register_replica(&row)?;
        tracing::info!(replica = %row.id, address, "replica registered");
        Ok(())
    }

    /// Records a clean stop of this replica.
    ///
    /// # Errors
    /// Store errors.
    pub fn replica_stopped(&self) -> Result<(), super::CaError> {
        Ok(self
            .store
            .replica_stopped(&self.replica_id, unix(self.now()))?)
    }

    /// Removes the rows of replicas stopped more than
    /// [`STOPPED_ROW_RETENTION`] ago or silent for more than
    /// [`SILENT_ROW_RETENTION`], if no other replica is doing it now.
    /// Returns how many rows went (0 when another replica has the turn).
    ///
    /// # Errors
    /// Store errors.
    pub fn remove_gone_replicas(&self) -> Result<u64, super::CaError> {
        let Some(_cleaning) = self
            .store
            .try_once(crate::store::OnceWork::ReplicaCleanup)?
        else {
            return Ok(0);
        };
        let now = unix(self.now());
        let cutoff =
            |keep: Duration| now.saturating_sub(i64::try_from(keep.as_secs()).unwrap_or(i64::MAX));
        let removed = self
            .store
            .remove_gone_replicas(cutoff(STOPPED_ROW_RETENTION), cutoff(SILENT_ROW_RETENTION))?;
        if removed > 0 {
            tracing::info!(
                removed,
                "removed the rows of replicas stopped or silent for long"
            );
        }
        Ok(removed)
    }

    /// Every replica of this trust domain, this one included.
    ///
    /// # Errors
    /// Store errors.
    pub fn replicas(&self) -> Result<Vec<ReplicaRow>, super::CaError> {
        Ok(self.store.replicas()?)
    }
}

/// Refreshes this replica's row every [`HEARTBEAT_INTERVAL`] until
/// `shutdown`, and every [`CLEANUP_EVERY_HEARTBEATS`] removes the rows of
/// gone replicas. Each write runs off the async workers and is bounded by
/// the store's statement timeout; a failed one is logged and the next tick
/// tries again (the database may be down for a while).
pub async fn heartbeat(ca: Arc<Ca>, address: String, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut beats: u32 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        let writer = ca.clone();
        let address = address.clone();
        beats = beats.wrapping_add(1);
        let clean = beats.is_multiple_of(CLEANUP_EVERY_HEARTBEATS);
        let written = tokio::task::spawn_blocking(move || {
            let row = writer.replica_row(&address, 0);
            writer.store.replica_heartbeat(&row)?;
            if clean && let Err(e) = writer.remove_gone_replicas() {
                tracing::warn!(error = %e, "rows of gone replicas not removed");
            }
            Ok::<_, crate::store::StoreError>(())
        })
        .await;
        ca.store_reachable(matches!(written, Ok(Ok(()))));
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "replica heartbeat not written"),
            Err(e) => tracing::error!(error = %e, "replica heartbeat task failed"),
        }
    }
}

impl Ca {
    /// Another replica changed the bundle (or may have, while this one was
    /// not listening): publishes the bundle as the shared rows now define
    /// it, so that this replica's agents receive it. The signing state is
    /// left alone (each replica signs with its own authorities) unless this
    /// replica's active authority was tainted or retired by another.
    ///
    /// # Errors
    /// As publishing.
    pub fn follow_bundle(&self) -> Result<(), super::CaError> {
        let _writer = self.writer();
        self.publish(super::authorities::SELF)?;
        // Another replica may have tainted or retired this one's active
        // authority: replace it now, not at the next tick.
        self.heal_own(self.now())?;
        Ok(())
    }
}

/// Follows the other replicas' changes until `shutdown`: each entry
/// notification re-reads the entry revision (waking this replica's entry
/// streams), each bundle notification republishes the bundle, each
/// federation notification calls `federation_changed` (which reloads the
/// relationships); after the listener (re)connected, all three. Bursts
/// coalesce: one re-read covers every notification counted before it.
/// Nothing to do on SQLite.
pub async fn follow_other_replicas(
    ca: Arc<Ca>,
    federation_changed: Arc<dyn Fn() + Send + Sync>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = match ca.store.listen() {
        Ok(Some(rx)) => rx,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "cannot follow other replicas' changes");
            return;
        }
    };
    let mut seen = *changes.borrow_and_update();
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        let now = *changes.borrow_and_update();
        let resync = now.resyncs != seen.resyncs;
        let entries = resync || now.entries != seen.entries;
        let bundle = resync || now.bundle != seen.bundle;
        let federation = resync || now.federation != seen.federation;
        seen = now;
        let ca = ca.clone();
        let federation_changed = federation_changed.clone();
        let done = tokio::task::spawn_blocking(move || {
            if entries {
                ca.entries_changed();
            }
            if federation {
                federation_changed();
            }
            if bundle { ca.follow_bundle() } else { Ok(()) }
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not follow another replica's bundle change")
            }
            Err(e) => tracing::error!(error = %e, "change follower task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replica_id_is_stable_per_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_id(dir.path()).unwrap();
        assert_eq!(first.len(), 16);
        assert_eq!(load_or_create_id(dir.path()).unwrap(), first);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create_id(other.path()).unwrap(), first);
    }

    #[test]
    fn a_damaged_replica_id_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "a b", "../x", &"x".repeat(65)] {
            std::fs::write(dir.path().join(REPLICA_ID_FILE), bad).unwrap();
            let err = load_or_create_id(dir.path()).unwrap_err();
            assert!(
                err.to_string().contains("does not hold a replica id"),
                "{bad:?}: {err}"
            );
        }
    }
}
