//! The CA's embedded transactional store (SQLite, in the data directory):
//! registration entries, join tokens, node records, signing authorities and
//! the audit log. Schema changes are numbered migrations.

mod audit;
pub mod authorities;
mod migrations;
pub mod nodes_ban;

pub use audit::AuditLog;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, Transaction, params};

pub use migrations::SCHEMA_VERSION;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value does not decode.
    #[error("store holds a corrupt value: {0}")]
    Corrupt(String),
    /// The database was written by a newer Signet.
    #[error("store schema version {found} is newer than this build's {supported}")]
    TooNew {
        /// In the file.
        found: i64,
        /// Known here.
        supported: i64,
    },
    /// A unique constraint would be broken.
    #[error("{0}")]
    Conflict(String),
    /// The audit writer thread is gone; nothing more can be recorded.
    #[error("the audit writer has stopped")]
    AuditWriterStopped,
    /// A group of audit records could not be committed (none of it was).
    #[error("audit log write failed: {0}")]
    AuditWrite(String),
}

/// What a signing authority is for. Stored as text; `Upstream` is never
/// stored (it is the configured parent CA, listed for operators).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthorityKind {
    /// A self-signed root of the bundle.
    Root,
    /// The CA that signs X.509-SVIDs.
    Intermediate,
    /// A JWT-SVID signing key (the row holds its public key, not a certificate).
    Jwt,
    /// The configured upstream CA that signs our intermediates.
    Upstream,
}

impl AuthorityKind {
    /// The stored and wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Root => "root",
            Self::Intermediate => "intermediate",
            Self::Jwt => "jwt",
            Self::Upstream => "upstream",
        }
    }

    /// Parses the stored form.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for an unknown kind.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "root" => Self::Root,
            "intermediate" => Self::Intermediate,
            "jwt" => Self::Jwt,
            "upstream" => Self::Upstream,
            other => return Err(StoreError::Corrupt(format!("authority kind {other:?}"))),
        })
    }
}

/// Where an authority is in its life: Prepared -> Active -> Retired ->
/// Pruned, with Tainted -> Revoked as the early exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthorityState {
    /// Signs (at most one per kind).
    Active,
    /// Made, and published once `published_sequence` is set (roots and JWT
    /// keys are then in the bundle), but signs nothing yet.
    Prepared,
    /// Replaced by a newer active one of its kind; still published until
    /// the last thing it signed can have expired.
    Retired,
    /// Marked by an operator: agents replace everything it signed. Still
    /// published; signs nothing.
    Tainted,
    /// Out of every bundle (an intermediate: listed in its root's CRL).
    Revoked,
    /// Out of the bundle because nothing it signed can still be valid;
    /// the row is kept for the record.
    Pruned,
}

impl AuthorityState {
    /// The stored and wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Prepared => "prepared",
            Self::Retired => "retired",
            Self::Tainted => "tainted",
            Self::Revoked => "revoked",
            Self::Pruned => "pruned",
        }
    }

    /// Parses the stored form.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for an unknown state.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "active" => Self::Active,
            "prepared" => Self::Prepared,
            "retired" => Self::Retired,
            "tainted" => Self::Tainted,
            "revoked" => Self::Revoked,
            "pruned" => Self::Pruned,
            other => return Err(StoreError::Corrupt(format!("authority state {other:?}"))),
        })
    }

    /// Whether an authority in this state is in the bundle (roots, JWT
    /// keys) once published.
    pub fn is_published_state(self) -> bool {
        matches!(
            self,
            Self::Prepared | Self::Active | Self::Retired | Self::Tainted
        )
    }
}

/// A registration entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRow {
    pub id: String,
    pub spiffe_id: String,
    pub parent_id: String,
    pub selectors: Vec<(String, String)>,
    pub ttl_seconds: i64,
    pub dns_names: Vec<String>,
    pub created_at: i64,
    pub revision: u64,
    /// Trust domains whose bundles the entry's workloads receive.
    pub federates_with: Vec<String>,
}

/// A signing authority as stored. The key lives in a file in the data dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityRow {
    pub id: String,
    pub kind: AuthorityKind,
    pub state: AuthorityState,
    pub cert_der: Vec<u8>,
    pub key_file: String,
    pub not_before: i64,
    pub not_after: i64,
    pub created_at: i64,
    /// The rotation journal: the bundle sequence that first carried it
    /// (for an intermediate, the one current when it was published), and
    /// when each transition happened (Unix seconds).
    pub published_sequence: Option<u64>,
    pub published_at: Option<i64>,
    pub activated_at: Option<i64>,
    pub retired_at: Option<i64>,
    pub tainted_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// The authority that signed it (an intermediate's root).
    pub parent_id: Option<String>,
}

impl AuthorityRow {
    /// A new row with an empty journal.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        kind: AuthorityKind,
        state: AuthorityState,
        cert_der: Vec<u8>,
        key_file: String,
        (not_before, not_after): (i64, i64),
        created_at: i64,
        parent_id: Option<String>,
    ) -> Self {
        Self {
            id,
            kind,
            state,
            cert_der,
            key_file,
            not_before,
            not_after,
            created_at,
            published_sequence: None,
            published_at: None,
            activated_at: None,
            retired_at: None,
            tainted_at: None,
            revoked_at: None,
            parent_id,
        }
    }
}

/// One line of the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditRecord {
    pub at: i64,
    pub caller: String,
    pub action: String,
    pub spiffe_id: String,
    pub serial: String,
    pub not_after: i64,
    pub result: String,
    pub detail: String,
}

/// What a join token exchange finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenState {
    /// Usable: not used, not expired. Holds the node name.
    Valid(String),
    /// Unknown token.
    Unknown,
    /// Already used.
    Used,
    /// Past its expiry.
    Expired,
}

/// The store. Cheap to clone; one connection behind a mutex (SQLite
/// serializes writers anyway, and every operation here is short).
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `path`.
    ///
    /// # Errors
    /// SQLite errors, or a schema newer than this build.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations::migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Opens an in-memory store, for tests.
    ///
    /// # Errors
    /// SQLite errors.
    #[cfg(test)]
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let mut conn = Connection::open_in_memory()?;
        migrations::migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (every change
        // is in a transaction), so a poisoned lock is still usable.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` in one transaction; commits when it returns `Ok`.
    ///
    /// # Errors
    /// Whatever `f` returns, or SQLite errors.
    pub fn transaction<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(StoreError::from)?;
        let out = f(&tx)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(out)
    }

    // ---- entries -------------------------------------------------------

    /// Inserts an entry, assigning its revision.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when an identical entry exists.
    #[cfg(test)]
    pub fn create_entry(&self, entry: EntryRow) -> Result<EntryRow, StoreError> {
        self.transaction(|tx| insert_entry(tx, entry))
    }

    /// Deletes an entry. Returns whether it existed.
    ///
    /// # Errors
    /// SQLite errors.
    #[cfg(test)]
    pub fn delete_entry(&self, id: &str) -> Result<bool, StoreError> {
        self.transaction(|tx| remove_entry(tx, id))
    }

    /// One entry by id.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn get_entry(&self, id: &str) -> Result<Option<EntryRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!("{ENTRY_SELECT} WHERE id = ?1"))?;
        let row = stmt.query_row(params![id], entry_from_row).optional()?;
        row.transpose()
    }

    /// Entries, all or those of one parent, ordered by SPIFFE ID.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn list_entries(&self, parent_id: Option<&str>) -> Result<Vec<EntryRow>, StoreError> {
        let conn = self.lock();
        let rows: Vec<Result<EntryRow, StoreError>> = match parent_id {
            Some(p) => {
                let mut stmt = conn.prepare_cached(&format!(
                    "{ENTRY_SELECT} WHERE parent_id = ?1 ORDER BY spiffe_id, id"
                ))?;
                stmt.query_map(params![p], entry_from_row)?
                    .collect::<Result<_, _>>()?
            }
            None => {
                let mut stmt =
                    conn.prepare_cached(&format!("{ENTRY_SELECT} ORDER BY spiffe_id, id"))?;
                stmt.query_map([], entry_from_row)?
                    .collect::<Result<_, _>>()?
            }
        };
        rows.into_iter().collect()
    }

    /// The current entry revision (bumped by every entry change).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn revision(&self) -> Result<u64, StoreError> {
        let conn = self.lock();
        let v: i64 = conn.query_row("SELECT value FROM revision WHERE id = 1", [], |r| r.get(0))?;
        Ok(v as u64)
    }

    // ---- join tokens and nodes -----------------------------------------

    /// Stores a join token by its SHA-256 hash (the token itself is never stored).
    ///
    /// # Errors
    /// SQLite errors.
    #[cfg(test)]
    pub fn create_join_token(
        &self,
        token_hash: &str,
        node_name: &str,
        created_at: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.transaction(|tx| insert_join_token(tx, token_hash, node_name, created_at, expires_at))
    }

    // ---- authorities ---------------------------------------------------

    /// Authorities of a kind, newest first.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn authorities(
        &self,
        kind: Option<AuthorityKind>,
    ) -> Result<Vec<AuthorityRow>, StoreError> {
        authorities::list(&self.lock(), kind)
    }

    /// Records a new authority and its audit record in one transaction; when
    /// it is active, every other active authority of the same kind becomes
    /// retired in that transaction too.
    ///
    /// # Errors
    /// SQLite errors (then nothing is recorded).
    pub fn insert_authority(
        &self,
        row: &AuthorityRow,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        self.transaction(|tx| {
            if row.state == AuthorityState::Active {
                tx.execute(
                    "UPDATE authorities SET state = ?2, retired_at = ?4 WHERE kind = ?1 AND state = ?3",
                    params![
                        row.kind.as_str(),
                        AuthorityState::Retired.as_str(),
                        AuthorityState::Active.as_str(),
                        row.created_at,
                    ],
                )?;
            }
            authorities::insert(tx, row)?;
            insert_audit(tx, audit)
        })
    }

    /// A value from the meta table.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        meta_get(&self.lock(), key)
    }

    /// Sets a value in the meta table.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        meta_set(&self.lock(), key, value)
    }

    // ---- audit ---------------------------------------------------------

    /// Deletes up to `batch` audit records older than `before` (Unix
    /// seconds), oldest first, in one short transaction. Returns how many.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn prune_audit(&self, before: i64, batch: usize) -> Result<usize, StoreError> {
        let conn = self.lock();
        Ok(conn.execute(
            "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < ?1 ORDER BY at, id LIMIT ?2)",
            params![before, batch as i64],
        )?)
    }

    /// The last `limit` audit records, oldest first.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn audit_tail(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT at, caller, action, spiffe_id, serial, not_after, result, detail FROM
             (SELECT * FROM audit ORDER BY id DESC LIMIT ?1) ORDER BY id ASC",
        )?;
        let rows = stmt
            .query_map(params![limit], |r| {
                Ok(AuditRecord {
                    at: r.get(0)?,
                    caller: r.get(1)?,
                    action: r.get(2)?,
                    spiffe_id: r.get(3)?,
                    serial: r.get(4)?,
                    not_after: r.get(5)?,
                    result: r.get(6)?,
                    detail: r.get(7)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

/// A value from the meta table, on a connection or inside a transaction.
///
/// # Errors
/// SQLite errors.
pub fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
            r.get(0)
        })
        .optional()?)
}

/// Sets a value in the meta table, on a connection or inside a transaction.
///
/// # Errors
/// SQLite errors.
pub fn meta_set(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// Appends an audit record on a connection or inside a transaction.
///
/// # Errors
/// SQLite errors.
pub fn insert_audit(conn: &Connection, rec: &AuditRecord) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO audit (at, caller, action, spiffe_id, serial, not_after, result, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        rec.at,
        rec.caller,
        rec.action,
        rec.spiffe_id,
        rec.serial,
        rec.not_after,
        rec.result,
        rec.detail
    ])?;
    Ok(())
}

/// Inserts an entry inside a transaction, assigning its revision.
///
/// # Errors
/// [`StoreError::Conflict`] when an identical entry exists.
pub fn insert_entry(tx: &Transaction<'_>, mut entry: EntryRow) -> Result<EntryRow, StoreError> {
    let rev = bump_revision(tx)?;
    entry.revision = rev;
    let selectors =
        serde_json::to_string(&entry.selectors).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let dns =
        serde_json::to_string(&entry.dns_names).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let federates_with = serde_json::to_string(&entry.federates_with)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let res = tx.execute(
        "INSERT INTO entries (id, spiffe_id, parent_id, selectors, ttl_seconds, dns_names, created_at, revision, federates_with)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![entry.id, entry.spiffe_id, entry.parent_id, selectors, entry.ttl_seconds, dns, entry.created_at, rev as i64, federates_with],
    );
    match res {
        Ok(_) => Ok(entry),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(StoreError::Conflict(
                "an entry with the same SPIFFE ID, parent and selectors exists".into(),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes an entry inside a transaction. Returns whether it existed.
///
/// # Errors
/// SQLite errors.
pub fn remove_entry(tx: &Transaction<'_>, id: &str) -> Result<bool, StoreError> {
    let n = tx.execute("DELETE FROM entries WHERE id = ?1", params![id])?;
    if n > 0 {
        bump_revision(tx)?;
    }
    Ok(n > 0)
}

/// Stores a join token by its SHA-256 hash inside a transaction (the token
/// itself is never stored).
///
/// # Errors
/// SQLite errors.
pub fn insert_join_token(
    tx: &Transaction<'_>,
    token_hash: &str,
    node_name: &str,
    created_at: i64,
    expires_at: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO join_tokens (token_hash, node_name, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
        params![token_hash, node_name, created_at, expires_at],
    )?;
    Ok(())
}

/// Looks a join token up inside a transaction.
///
/// # Errors
/// SQLite errors.
pub fn token_state(
    tx: &Transaction<'_>,
    token_hash: &str,
    now: i64,
) -> Result<TokenState, StoreError> {
    let row: Option<(String, i64, Option<i64>)> = tx
        .query_row(
            "SELECT node_name, expires_at, used_at FROM join_tokens WHERE token_hash = ?1",
            params![token_hash],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    Ok(match row {
        None => TokenState::Unknown,
        Some((_, _, Some(_))) => TokenState::Used,
        Some((_, expires_at, None)) if expires_at <= now => TokenState::Expired,
        Some((name, _, None)) => TokenState::Valid(name),
    })
}

/// Marks a join token used inside a transaction.
///
/// # Errors
/// SQLite errors.
pub fn consume_token(tx: &Transaction<'_>, token_hash: &str, now: i64) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE join_tokens SET used_at = ?2 WHERE token_hash = ?1 AND used_at IS NULL",
        params![token_hash, now],
    )?;
    Ok(())
}

/// Whether an [`upsert_node`] records an attestation or a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeEvent {
    /// A join token was exchanged: `attested_at` becomes now.
    Attested,
    /// The node renewed its SVID: `attested_at` keeps its value.
    Renewed,
}

/// Records (or refreshes) an attested node inside a transaction.
///
/// # Errors
/// SQLite errors.
pub fn upsert_node(
    tx: &Transaction<'_>,
    spiffe_id: &str,
    name: &str,
    now: i64,
    serial: &str,
    expires_at: i64,
    event: NodeEvent,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO nodes (spiffe_id, name, attested_at, last_serial, svid_expires_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?3)
         ON CONFLICT(spiffe_id) DO UPDATE SET last_serial = excluded.last_serial,
           svid_expires_at = excluded.svid_expires_at, updated_at = excluded.updated_at,
           attested_at = CASE WHEN ?6 THEN excluded.attested_at ELSE nodes.attested_at END",
        params![
            spiffe_id,
            name,
            now,
            serial,
            expires_at,
            event == NodeEvent::Attested
        ],
    )?;
    Ok(())
}

/// Whether a node has been attested.
///
/// # Errors
/// SQLite errors.
pub fn node_exists(conn: &Connection, spiffe_id: &str) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM nodes WHERE spiffe_id = ?1",
            params![spiffe_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

fn bump_revision(tx: &Transaction<'_>) -> Result<u64, StoreError> {
    tx.execute("UPDATE revision SET value = value + 1 WHERE id = 1", [])?;
    let v: i64 = tx.query_row("SELECT value FROM revision WHERE id = 1", [], |r| r.get(0))?;
    Ok(v as u64)
}

const ENTRY_SELECT: &str = "SELECT id, spiffe_id, parent_id, selectors, ttl_seconds, dns_names, created_at, revision, federates_with FROM entries";

fn entry_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<EntryRow, StoreError>> {
    let selectors: String = r.get(3)?;
    let dns: String = r.get(5)?;
    let rev: i64 = r.get(7)?;
    let id: String = r.get(0)?;
    let spiffe_id: String = r.get(1)?;
    let parent_id: String = r.get(2)?;
    let ttl_seconds: i64 = r.get(4)?;
    let created_at: i64 = r.get(6)?;
    let federates_with: String = r.get(8)?;
    Ok((|| {
        Ok(EntryRow {
            selectors: serde_json::from_str(&selectors)
                .map_err(|e| StoreError::Corrupt(format!("entry {id} selectors: {e}")))?,
            dns_names: serde_json::from_str(&dns)
                .map_err(|e| StoreError::Corrupt(format!("entry {id} dns names: {e}")))?,
            federates_with: serde_json::from_str(&federates_with)
                .map_err(|e| StoreError::Corrupt(format!("entry {id} federates_with: {e}")))?,
            id,
            spiffe_id,
            parent_id,
            ttl_seconds,
            created_at,
            revision: rev as u64,
        })
    })())
}

impl Store {
    /// Runs `f` with the connection (for lookups that need several queries).
    pub fn with_conn<T>(&self, f: impl FnOnce(&Connection) -> T) -> T {
        f(&self.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, parent: &str) -> EntryRow {
        EntryRow {
            id: id.into(),
            spiffe_id: format!("spiffe://td/w/{id}"),
            parent_id: parent.into(),
            selectors: vec![("unix".into(), "uid:1000".into())],
            ttl_seconds: 0,
            dns_names: vec!["a.example".into()],
            created_at: 1,
            revision: 0,
            federates_with: vec!["remote.org".into()],
        }
    }

    #[test]
    fn entries_round_trip_and_bump_the_revision() {
        let store = Store::open_in_memory().unwrap();
        let r0 = store.revision().unwrap();
        let e = store
            .create_entry(entry("e1", "spiffe://td/signet/node/a"))
            .unwrap();
        assert!(e.revision > r0);
        assert_eq!(store.get_entry("e1").unwrap().unwrap(), e);
        store
            .create_entry(entry("e2", "spiffe://td/signet/node/b"))
            .unwrap();
        assert_eq!(
            store
                .list_entries(Some("spiffe://td/signet/node/a"))
                .unwrap()
                .len(),
            1
        );
        assert_eq!(store.list_entries(None).unwrap().len(), 2);
        let before = store.revision().unwrap();
        assert!(store.delete_entry("e1").unwrap());
        assert!(!store.delete_entry("e1").unwrap());
        assert_eq!(store.revision().unwrap(), before + 1);
    }

    #[test]
    fn duplicate_entries_conflict() {
        let store = Store::open_in_memory().unwrap();
        store.create_entry(entry("e1", "p")).unwrap();
        let mut dup = entry("e1", "p");
        dup.id = "other".into();
        assert!(matches!(
            store.create_entry(dup),
            Err(StoreError::Conflict(_))
        ));
    }

    #[test]
    fn tokens_are_single_use_and_expire() {
        let store = Store::open_in_memory().unwrap();
        store.create_join_token("h1", "node-a", 0, 100).unwrap();
        store.create_join_token("h2", "node-b", 0, 10).unwrap();
        store
            .transaction(|tx| {
                assert_eq!(
                    token_state(tx, "h1", 50)?,
                    TokenState::Valid("node-a".into())
                );
                consume_token(tx, "h1", 50)?;
                assert_eq!(token_state(tx, "h1", 51)?, TokenState::Used);
                assert_eq!(token_state(tx, "h2", 50)?, TokenState::Expired);
                assert_eq!(token_state(tx, "nope", 50)?, TokenState::Unknown);
                Ok::<_, StoreError>(())
            })
            .unwrap();
    }

    #[test]
    fn a_failed_transaction_changes_nothing() {
        let store = Store::open_in_memory().unwrap();
        store.create_join_token("h1", "node-a", 0, 100).unwrap();
        let res: Result<(), StoreError> = store.transaction(|tx| {
            consume_token(tx, "h1", 50)?;
            Err(StoreError::Conflict("signing failed".into()))
        });
        assert!(res.is_err());
        store
            .transaction(|tx| {
                assert_eq!(
                    token_state(tx, "h1", 51)?,
                    TokenState::Valid("node-a".into())
                );
                Ok::<_, StoreError>(())
            })
            .unwrap();
    }

    #[test]
    fn pruning_deletes_only_old_records_in_bounded_batches() {
        let store = Store::open_in_memory().unwrap();
        store
            .transaction(|tx| {
                for at in 0..25 {
                    insert_audit(
                        tx,
                        &AuditRecord {
                            at,
                            action: "a".into(),
                            ..AuditRecord::default()
                        },
                    )?;
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
        assert_eq!(store.prune_audit(20, 8).unwrap(), 8);
        assert_eq!(store.prune_audit(20, 8).unwrap(), 8);
        assert_eq!(store.prune_audit(20, 8).unwrap(), 4);
        assert_eq!(store.prune_audit(20, 8).unwrap(), 0);
        let left: Vec<i64> = store
            .audit_tail(100)
            .unwrap()
            .iter()
            .map(|r| r.at)
            .collect();
        assert_eq!(left, (20..25).collect::<Vec<_>>());
    }

    #[test]
    fn authority_kinds_and_states_round_trip_and_unknown_ones_are_corrupt() {
        for k in [
            AuthorityKind::Root,
            AuthorityKind::Intermediate,
            AuthorityKind::Jwt,
            AuthorityKind::Upstream,
        ] {
            assert_eq!(AuthorityKind::parse(k.as_str()).unwrap(), k);
        }
        for s in [
            AuthorityState::Active,
            AuthorityState::Prepared,
            AuthorityState::Retired,
            AuthorityState::Tainted,
            AuthorityState::Revoked,
            AuthorityState::Pruned,
        ] {
            assert_eq!(AuthorityState::parse(s.as_str()).unwrap(), s);
        }
        assert!(matches!(
            AuthorityState::parse("trusted"),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            AuthorityKind::parse("ROOT"),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn reopening_keeps_data_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signet.db");
        {
            let store = Store::open(&path).unwrap();
            store.create_entry(entry("e1", "p")).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.list_entries(None).unwrap().len(), 1);
        let v: i64 = store
            .with_conn(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }
}

/// An attested node as stored, with what it last reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub spiffe_id: String,
    pub name: String,
    pub attested_at: i64,
    pub last_serial: String,
    pub svid_expires_at: i64,
    pub bundle_sequence: u64,
    pub svid_count: u32,
    pub last_seen: i64,
    /// Authority ids the agent last reported its SVIDs chain through.
    pub chains_through: Vec<String>,
}

impl Store {
    /// Records what an agent reports it serves.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn report_status(
        &self,
        spiffe_id: &str,
        bundle_sequence: u64,
        svid_count: u32,
        chains_through: &[String],
        now: i64,
    ) -> Result<(), StoreError> {
        let chains = serde_json::to_string(chains_through)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.lock().execute(
            "UPDATE nodes SET bundle_sequence = ?2, svid_count = ?3, last_seen = ?4, chains_through = ?5 WHERE spiffe_id = ?1",
            params![spiffe_id, bundle_sequence as i64, svid_count, now, chains],
        )?;
        Ok(())
    }

    /// Every attested node.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT spiffe_id, name, attested_at, last_serial, svid_expires_at, bundle_sequence, svid_count, last_seen, chains_through
             FROM nodes ORDER BY spiffe_id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(NodeRow {
                    spiffe_id: r.get(0)?,
                    name: r.get(1)?,
                    attested_at: r.get(2)?,
                    last_serial: r.get(3)?,
                    svid_expires_at: r.get(4)?,
                    bundle_sequence: r.get::<_, i64>(5)? as u64,
                    svid_count: r.get(6)?,
                    last_seen: r.get(7)?,
                    // Written by us as JSON; an unreadable value counts as
                    // nothing reported.
                    chains_through: serde_json::from_str(&r.get::<_, String>(8)?)
                        .unwrap_or_default(),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}
