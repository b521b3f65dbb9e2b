//! The CA's transactional store: registration entries, join tokens, node
//! records, signing authorities, federations and the audit log. Two
//! backends behind one interface: the embedded SQLite file in the data
//! directory (the default) and PostgreSQL (for several replicas of one
//! trust domain). Callers see only [`Store`] and [`Tx`]; no driver type
//! leaves this module. Schema changes are numbered migrations, the same
//! numbers on both.
//!
//! Built for several replicas on one PostgreSQL database: join tokens are
//! claimed by one statement, migrations run under an advisory lock, and
//! nothing here keeps state outside the database. `replicas` holds each
//! replica's row (id, address, signing authority, heartbeat; migration 7).
//! [`notify`] sends `NOTIFY signet_changes` inside the transaction that
//! changes entries or the bundle (delivered at commit), and
//! [`Store::listen`] follows it on one dedicated connection per replica
//! (never from the pool: a pooled connection is handed to others). `once`
//! holds the advisory locks: the bundle sequence's read-modify-write under
//! `pg_advisory_xact_lock`, once-only work under `pg_try_advisory_lock`.

mod audit;
pub mod authorities;
pub mod copy;
mod db;
pub mod location;
mod migrations;
pub mod nodes_ban;
pub mod once;
mod postgres;
pub mod replicas;
mod sqlite;

pub use audit::AuditLog;
pub use db::{Backend, FromValue, Row, Tx, Value, statements_sent};
pub use location::{LocationError, PgUrl, StoreLocation, StoreSetting, TlsMode};
pub use once::{OnceGuard, OnceWork, lock_bundle};
pub use postgres::PgOptions;
pub use postgres::listen::{ChangeKind, Changes};
pub use replicas::ReplicaRow;

use std::path::Path;
use std::sync::Arc;

use crate::args;
use db::Inner;
use postgres::PgPool;
use sqlite::Sqlite;

pub use migrations::SCHEMA_VERSION;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL refused a statement.
    #[error("store: {0}")]
    Postgres(String),
    /// The database cannot be reached (or could not be moments ago, and
    /// the store waits before trying again). Nothing was changed.
    #[error("the CA's database is unreachable: {0}")]
    Unavailable(String),
    /// The store's settings cannot be used.
    #[error("store: {0}")]
    Config(String),
    /// A unique key would repeat (callers turn this into a [`StoreError::Conflict`]
    /// that names what exists).
    #[error("duplicate key: {0}")]
    Duplicate(String),
    /// A stored value does not decode.
    #[error("store holds a corrupt value: {0}")]
    Corrupt(String),
    /// The database was written by a newer Signet.
    #[error(
        "store schema version {found} is newer than this build's {supported}: run a newer signet-ca"
    )]
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
    /// The replica that holds its key and signs with it; `None` for a row
    /// from before replicas owned authorities, until one adopts it.
    pub replica_id: Option<String>,
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
            replica_id: None,
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

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Arc<BackendImpl>,
}

enum BackendImpl {
    Sqlite(Sqlite),
    Postgres(PgPool),
}

impl Store {
    /// Opens (creating if needed) and migrates the SQLite database at `path`.
    ///
    /// # Errors
    /// SQLite errors, or a schema newer than this build.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Sqlite::open(path)?;
        migrations::migrate_sqlite(&mut db.lock())?;
        Ok(Self::from(BackendImpl::Sqlite(db)))
    }

    /// Opens an in-memory SQLite store, for tests.
    ///
    /// # Errors
    /// SQLite errors.
    #[cfg(test)]
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let db = Sqlite::open_in_memory()?;
        migrations::migrate_sqlite(&mut db.lock())?;
        Ok(Self::from(BackendImpl::Sqlite(db)))
    }

    /// Connects to and migrates the PostgreSQL database at `url`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when it cannot be reached or refuses
    /// the login; a schema newer than this build.
    pub fn connect_postgres(url: &PgUrl, opts: PgOptions) -> Result<Self, StoreError> {
        let store = Self::from(BackendImpl::Postgres(PgPool::new(url, opts)?));
        store.transaction(migrations::migrate_postgres)?;
        Ok(store)
    }

    /// Opens the store at `location`; a relative SQLite path is taken
    /// relative to the working directory.
    ///
    /// # Errors
    /// As [`Store::open`] and [`Store::connect_postgres`].
    pub fn open_location(location: &StoreLocation) -> Result<Self, StoreError> {
        match location {
            StoreLocation::Sqlite(path) => Self::open(path),
            StoreLocation::Postgres(url) => Self::connect_postgres(url, PgOptions::default()),
        }
    }

    /// The schema version of the PostgreSQL database at `url` without
    /// migrating it (0 when it has none).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when it cannot be reached.
    pub fn postgres_schema_version(url: &PgUrl) -> Result<i64, StoreError> {
        let store = Self::from(BackendImpl::Postgres(PgPool::new(
            url,
            PgOptions::default(),
        )?));
        store.transaction(migrations::pg_version)
    }

    fn from(backend: BackendImpl) -> Self {
        Self {
            backend: Arc::new(backend),
        }
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        match &*self.backend {
            BackendImpl::Sqlite(_) => Backend::Sqlite,
            BackendImpl::Postgres(_) => Backend::Postgres,
        }
    }

    /// Where this store is, password redacted.
    pub fn describe(&self) -> String {
        match &*self.backend {
            BackendImpl::Sqlite(db) => match db.path() {
                Some(p) => format!("sqlite:{}", p.display()),
                None => "sqlite::memory:".into(),
            },
            BackendImpl::Postgres(pool) => pool.url().to_string(),
        }
    }

    /// A second handle for a writer that should not wait behind this one's
    /// readers: SQLite gets its own connection to the same file (the audit
    /// writer's fsyncs then never hold the main connection); PostgreSQL
    /// shares the pool.
    ///
    /// # Errors
    /// SQLite errors; an in-memory SQLite store has no second connection.
    pub fn writer_handle(&self) -> Result<Self, StoreError> {
        match &*self.backend {
            BackendImpl::Sqlite(db) => match db.path() {
                Some(p) => Ok(Self::from(BackendImpl::Sqlite(Sqlite::open(p)?))),
                None => Err(StoreError::Config(
                    "an in-memory store has no second connection".into(),
                )),
            },
            BackendImpl::Postgres(_) => Ok(self.clone()),
        }
    }

    /// Runs `f` in one transaction; commits when it returns `Ok`, changes
    /// nothing when it returns `Err`.
    ///
    /// # Errors
    /// Whatever `f` returns, or database errors.
    pub fn transaction<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        match &*self.backend {
            BackendImpl::Sqlite(db) => {
                let mut conn = db.lock();
                // BEGIN, then COMMIT or (when `tx` is dropped) ROLLBACK.
                db::count_statements(Backend::Sqlite, 2);
                let tx = conn.transaction().map_err(StoreError::from)?;
                let out = f(&Tx(Inner::Sqlite(&tx)))?;
                tx.commit().map_err(StoreError::from)?;
                Ok(out)
            }
            BackendImpl::Postgres(pool) => {
                let conn = pool.get()?;
                conn.set_in_tx(true);
                conn.batch("BEGIN")?;
                match f(&Tx(Inner::Postgres(&conn))) {
                    Ok(out) => {
                        conn.batch("COMMIT")?;
                        conn.set_in_tx(false);
                        Ok(out)
                    }
                    Err(e) => {
                        if conn.batch("ROLLBACK").is_ok() {
                            conn.set_in_tx(false);
                        }
                        Err(e)
                    }
                }
            }
        }
    }

    /// Runs `f` with a connection outside a transaction (for lookups that
    /// need several queries and no atomicity).
    ///
    /// # Errors
    /// Whatever `f` returns; [`StoreError::Unavailable`] when no
    /// connection can be had.
    pub fn with_conn<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        match &*self.backend {
            BackendImpl::Sqlite(db) => f(&Tx(Inner::Sqlite(&db.lock()))),
            BackendImpl::Postgres(pool) => {
                let conn = pool.get()?;
                f(&Tx(Inner::Postgres(&conn)))
            }
        }
    }

    /// Follows the other replicas' changes: counts of their notifications,
    /// on one dedicated connection that reconnects by itself. `None` on
    /// SQLite, where this process is the only replica.
    ///
    /// # Errors
    /// The store's runtime has stopped.
    pub fn listen(&self) -> Result<Option<tokio::sync::watch::Receiver<Changes>>, StoreError> {
        match &*self.backend {
            BackendImpl::Sqlite(_) => Ok(None),
            BackendImpl::Postgres(pool) => pool.listen().map(Some),
        }
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
    /// Database errors.
    #[cfg(test)]
    pub fn delete_entry(&self, id: &str) -> Result<bool, StoreError> {
        self.transaction(|tx| remove_entry(tx, id))
    }

    /// One entry by id.
    ///
    /// # Errors
    /// Database errors.
    pub fn get_entry(&self, id: &str) -> Result<Option<EntryRow>, StoreError> {
        self.with_conn(|c| {
            c.query_opt(&format!("{ENTRY_SELECT} WHERE id = ?1"), args![id])?
                .map(|r| entry_from_row(&r))
                .transpose()
        })
    }

    /// Entries, all or those of one parent, ordered by SPIFFE ID.
    ///
    /// # Errors
    /// Database errors.
    pub fn list_entries(&self, parent_id: Option<&str>) -> Result<Vec<EntryRow>, StoreError> {
        self.with_conn(|c| list_entries(c, parent_id))
    }

    /// The current entry revision (bumped by every entry change).
    ///
    /// # Errors
    /// Database errors.
    pub fn revision(&self) -> Result<u64, StoreError> {
        self.with_conn(|c| {
            c.query_opt("SELECT value FROM revision WHERE id = 1", &[])?
                .ok_or_else(|| StoreError::Corrupt("no revision row".into()))?
                .get(0)
        })
    }

    // ---- join tokens and nodes -----------------------------------------

    /// Stores a join token by its SHA-256 hash (the token itself is never stored).
    ///
    /// # Errors
    /// Database errors.
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
    /// Database errors.
    pub fn authorities(
        &self,
        kind: Option<AuthorityKind>,
    ) -> Result<Vec<AuthorityRow>, StoreError> {
        self.with_conn(|c| authorities::list(c, kind))
    }

    /// Records a new authority and its audit record in one transaction; when
    /// it is active, every other active authority of the same kind becomes
    /// retired in that transaction too.
    ///
    /// # Errors
    /// Database errors (then nothing is recorded).
    pub fn insert_authority(
        &self,
        row: &AuthorityRow,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        self.transaction(|tx| {
            if row.state == AuthorityState::Active {
                // Retires the active one of its kind of the same replica
                // only: every replica has its own.
                tx.execute(
                    "UPDATE authorities SET state = ?2, retired_at = ?4
                     WHERE kind = ?1 AND state = ?3 AND replica_id = ?5",
                    args![
                        row.kind.as_str(),
                        AuthorityState::Retired.as_str(),
                        AuthorityState::Active.as_str(),
                        row.created_at,
                        &row.replica_id,
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
    /// Database errors.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.with_conn(|c| meta_get(c, key))
    }

    /// Sets a value in the meta table.
    ///
    /// # Errors
    /// Database errors.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.with_conn(|c| meta_set(c, key, value))
    }

    // ---- audit ---------------------------------------------------------

    /// Deletes up to `batch` audit records older than `before` (Unix
    /// seconds), oldest first, in one short transaction. Returns how many.
    ///
    /// # Errors
    /// Database errors.
    pub fn prune_audit(&self, before: i64, batch: usize) -> Result<usize, StoreError> {
        self.with_conn(|c| {
            Ok(c.execute(
                "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < ?1 ORDER BY at, id LIMIT ?2)",
                args![before, batch as i64],
            )? as usize)
        })
    }

    /// The last `limit` audit records, oldest first.
    ///
    /// # Errors
    /// Database errors.
    pub fn audit_tail(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        self.with_conn(|c| {
            c.query(
                "SELECT at, caller, action, spiffe_id, serial, not_after, result, detail FROM
                 (SELECT * FROM audit ORDER BY id DESC LIMIT ?1) AS tail ORDER BY id ASC",
                args![i64::from(limit)],
            )?
            .iter()
            .map(|r| {
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
            })
            .collect()
        })
    }
}

/// Entries, all or those of one parent, ordered by SPIFFE ID.
///
/// # Errors
/// Database errors.
pub fn list_entries(tx: &Tx<'_>, parent_id: Option<&str>) -> Result<Vec<EntryRow>, StoreError> {
    let rows = match parent_id {
        Some(p) => tx.query(
            &format!("{ENTRY_SELECT} WHERE parent_id = ?1 ORDER BY spiffe_id, id"),
            args![p],
        )?,
        None => tx.query(&format!("{ENTRY_SELECT} ORDER BY spiffe_id, id"), &[])?,
    };
    rows.iter().map(entry_from_row).collect()
}

/// A value from the meta table, on a connection or inside a transaction.
///
/// # Errors
/// Database errors.
pub fn meta_get(tx: &Tx<'_>, key: &str) -> Result<Option<String>, StoreError> {
    tx.query_opt("SELECT value FROM meta WHERE key = ?1", args![key])?
        .map(|r| r.get(0))
        .transpose()
}

/// Sets a value in the meta table, on a connection or inside a transaction.
///
/// # Errors
/// Database errors.
pub fn meta_set(tx: &Tx<'_>, key: &str, value: &str) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        args![key, value],
    )?;
    Ok(())
}

/// Appends an audit record on a connection or inside a transaction.
///
/// # Errors
/// Database errors.
pub fn insert_audit(tx: &Tx<'_>, rec: &AuditRecord) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO audit (at, caller, action, spiffe_id, serial, not_after, result, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        args![
            rec.at,
            &rec.caller,
            &rec.action,
            &rec.spiffe_id,
            &rec.serial,
            rec.not_after,
            &rec.result,
            &rec.detail
        ],
    )?;
    Ok(())
}

/// Inserts an entry inside a transaction, assigning its revision.
///
/// # Errors
/// [`StoreError::Conflict`] when an identical entry exists.
pub fn insert_entry(tx: &Tx<'_>, mut entry: EntryRow) -> Result<EntryRow, StoreError> {
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
        args![&entry.id, &entry.spiffe_id, &entry.parent_id, selectors, entry.ttl_seconds, dns, entry.created_at, rev as i64, federates_with],
    );
    match res {
        Ok(_) => Ok(entry),
        Err(StoreError::Duplicate(_)) => Err(StoreError::Conflict(
            "an entry with the same SPIFFE ID, parent and selectors exists".into(),
        )),
        Err(e) => Err(e),
    }
}

/// Deletes an entry inside a transaction. Returns whether it existed.
///
/// # Errors
/// Database errors.
pub fn remove_entry(tx: &Tx<'_>, id: &str) -> Result<bool, StoreError> {
    let n = tx.execute("DELETE FROM entries WHERE id = ?1", args![id])?;
    if n > 0 {
        bump_revision(tx)?;
    }
    Ok(n > 0)
}

/// Stores a join token by its SHA-256 hash inside a transaction (the token
/// itself is never stored).
///
/// # Errors
/// Database errors.
pub fn insert_join_token(
    tx: &Tx<'_>,
    token_hash: &str,
    node_name: &str,
    created_at: i64,
    expires_at: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO join_tokens (token_hash, node_name, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
        args![token_hash, node_name, created_at, expires_at],
    )?;
    Ok(())
}

/// Looks a join token up inside a transaction.
///
/// # Errors
/// Database errors.
pub fn token_state(tx: &Tx<'_>, token_hash: &str, now: i64) -> Result<TokenState, StoreError> {
    let row = tx.query_opt(
        "SELECT node_name, expires_at, used_at FROM join_tokens WHERE token_hash = ?1",
        args![token_hash],
    )?;
    let Some(row) = row else {
        return Ok(TokenState::Unknown);
    };
    let (name, expires_at, used_at): (String, i64, Option<i64>) =
        (row.get(0)?, row.get(1)?, row.get(2)?);
    Ok(match used_at {
        Some(_) => TokenState::Used,
        None if expires_at <= now => TokenState::Expired,
        None => TokenState::Valid(name),
    })
}

/// Claims a join token inside a transaction: one statement marks it used
/// when it is unused and unexpired and returns its node name, so that of
/// two connections racing for the same token exactly one wins (on
/// PostgreSQL the loser's UPDATE waits for the winner's commit and then
/// finds the token used). Anything but [`TokenState::Valid`] changed nothing.
///
/// # Errors
/// Database errors.
pub fn claim_token(tx: &Tx<'_>, token_hash: &str, now: i64) -> Result<TokenState, StoreError> {
    let won = tx.query_opt(
        "UPDATE join_tokens SET used_at = ?2
         WHERE token_hash = ?1 AND used_at IS NULL AND expires_at > ?2
         RETURNING node_name",
        args![token_hash, now],
    )?;
    match won {
        Some(row) => Ok(TokenState::Valid(row.get(0)?)),
        None => match token_state(tx, token_hash, now)? {
            // Used between our statements by a transaction that has since
            // committed; never hand out a token twice.
            TokenState::Valid(_) => Ok(TokenState::Used),
            other => Ok(other),
        },
    }
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
/// Database errors.
pub fn upsert_node(
    tx: &Tx<'_>,
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
           attested_at = CASE WHEN ?6 = 1 THEN excluded.attested_at ELSE nodes.attested_at END",
        args![
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
/// Database errors.
pub fn node_exists(tx: &Tx<'_>, spiffe_id: &str) -> Result<bool, StoreError> {
    Ok(tx
        .query_opt("SELECT 1 FROM nodes WHERE spiffe_id = ?1", args![spiffe_id])?
        .is_some())
}

fn bump_revision(tx: &Tx<'_>) -> Result<u64, StoreError> {
    let revision: u64 = tx
        .query_opt(
            "UPDATE revision SET value = value + 1 WHERE id = 1 RETURNING value",
            &[],
        )?
        .ok_or_else(|| StoreError::Corrupt("no revision row".into()))?
        .get(0)?;
    notify(tx, ChangeKind::Entries, revision)?;
    Ok(revision)
}

/// Tells the other replicas that `kind` changed (now at `value`). Sent
/// inside the caller's transaction, PostgreSQL delivers it at commit and
/// drops it on rollback. Nothing to do on SQLite: one replica.
///
/// # Errors
/// Database errors.
pub fn notify(tx: &Tx<'_>, kind: ChangeKind, value: u64) -> Result<(), StoreError> {
    match tx.backend() {
        Backend::Sqlite => Ok(()),
        // Both parts are ours (a fixed word and an integer): nothing to quote.
        Backend::Postgres => tx.batch(&format!(
            "NOTIFY {}, '{}:{value}'",
            postgres::listen::CHANNEL,
            kind.as_str()
        )),
    }
}

const ENTRY_SELECT: &str = "SELECT id, spiffe_id, parent_id, selectors, ttl_seconds, dns_names, created_at, revision, federates_with FROM entries";

fn entry_from_row(r: &Row) -> Result<EntryRow, StoreError> {
    let id: String = r.get(0)?;
    let selectors: String = r.get(3)?;
    let dns: String = r.get(5)?;
    let federates_with: String = r.get(8)?;
    Ok(EntryRow {
        selectors: serde_json::from_str(&selectors)
            .map_err(|e| StoreError::Corrupt(format!("entry {id} selectors: {e}")))?,
        dns_names: serde_json::from_str(&dns)
            .map_err(|e| StoreError::Corrupt(format!("entry {id} dns names: {e}")))?,
        federates_with: serde_json::from_str(&federates_with)
            .map_err(|e| StoreError::Corrupt(format!("entry {id} federates_with: {e}")))?,
        spiffe_id: r.get(1)?,
        parent_id: r.get(2)?,
        ttl_seconds: r.get(4)?,
        created_at: r.get(6)?,
        revision: r.get(7)?,
        id,
    })
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
    /// Database errors.
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
        self.with_conn(|c| {
            c.execute(
                "UPDATE nodes SET bundle_sequence = ?2, svid_count = ?3, last_seen = ?4, chains_through = ?5 WHERE spiffe_id = ?1",
                args![spiffe_id, bundle_sequence as i64, svid_count, now, chains],
            )
        })?;
        Ok(())
    }

    /// Every attested node.
    ///
    /// # Errors
    /// Database errors.
    pub fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        self.with_conn(|c| {
            c.query(
                "SELECT spiffe_id, name, attested_at, last_serial, svid_expires_at, bundle_sequence, svid_count, last_seen, chains_through
                 FROM nodes ORDER BY spiffe_id",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(NodeRow {
                    spiffe_id: r.get(0)?,
                    name: r.get(1)?,
                    attested_at: r.get(2)?,
                    last_serial: r.get(3)?,
                    svid_expires_at: r.get(4)?,
                    bundle_sequence: r.get(5)?,
                    svid_count: r.get(6)?,
                    last_seen: r.get(7)?,
                    // Written by us as JSON; an unreadable value counts as
                    // nothing reported.
                    chains_through: serde_json::from_str(&r.get::<String>(8)?)
                        .unwrap_or_default(),
                })
            })
            .collect()
        })
    }
}

/// Test support: every store test runs once per backend.
#[cfg(test)]
pub(crate) mod each_backend {
    use super::{Store, StoreLocation};

    /// A fresh store on one backend; keeps what backs it alive.
    pub(crate) struct Fresh {
        pub store: Store,
        pub location: StoreLocation,
        _dir: Option<tempfile::TempDir>,
        _db: Option<signet_test_postgres::Database>,
    }

    impl Fresh {
        /// An empty SQLite file in a temporary directory.
        pub(crate) fn sqlite() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let location = StoreLocation::Sqlite(dir.path().join("signet.db"));
            Self {
                store: Store::open_location(&location).unwrap(),
                location,
                _dir: Some(dir),
                _db: None,
            }
        }

        /// An empty database on a real PostgreSQL server.
        pub(crate) fn postgres() -> Self {
            let db = signet_test_postgres::Database::create();
            let location: StoreLocation = db.url().parse().unwrap();
            Self {
                store: Store::open_location(&location).unwrap(),
                location,
                _dir: None,
                _db: Some(db),
            }
        }

        /// A second, independent handle on the same database (its own
        /// connections).
        pub(crate) fn reopen(&self) -> Store {
            Store::open_location(&self.location).unwrap()
        }

        /// The PostgreSQL test database, when this is one.
        pub(crate) fn pg(&self) -> Option<&signet_test_postgres::Database> {
            self._db.as_ref()
        }
    }

    /// Runs `test` on SQLite, then on PostgreSQL.
    pub(crate) fn run(test: impl Fn(&Fresh)) {
        test(&Fresh::sqlite());
        test(&Fresh::postgres());
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
    fn statements_sent_are_counted_per_backend() {
        each_backend::run(|f| statements_counted(&f.store));
    }

    fn statements_counted(store: &Store) {
        let backend = store.backend();
        let before = statements_sent(backend);
        store
            .transaction(|tx| tx.query("SELECT 1", &[]).map(drop))
            .unwrap();
        // BEGIN, the query (and on PostgreSQL its prepare), COMMIT. Other
        // tests of this process may add to the count, never take from it.
        let sent = statements_sent(backend) - before;
        assert!(sent >= 3, "{backend:?}: {sent} statements counted");
    }

    #[test]
    fn entries_round_trip_and_bump_the_revision() {
        each_backend::run(|f| entries_round_trip(&f.store));
    }

    fn entries_round_trip(store: &Store) {
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
        each_backend::run(|f| duplicate_entries(&f.store));
    }

    fn duplicate_entries(store: &Store) {
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
        each_backend::run(|f| tokens_single_use(&f.store));
    }

    fn tokens_single_use(store: &Store) {
        store.create_join_token("h1", "node-a", 0, 100).unwrap();
        store.create_join_token("h2", "node-b", 0, 10).unwrap();
        store
            .transaction(|tx| {
                assert_eq!(
                    token_state(tx, "h1", 50)?,
                    TokenState::Valid("node-a".into())
                );
                assert_eq!(
                    claim_token(tx, "h1", 50)?,
                    TokenState::Valid("node-a".into())
                );
                assert_eq!(token_state(tx, "h1", 51)?, TokenState::Used);
                assert_eq!(claim_token(tx, "h1", 51)?, TokenState::Used);
                assert_eq!(claim_token(tx, "h2", 50)?, TokenState::Expired);
                assert_eq!(claim_token(tx, "nope", 50)?, TokenState::Unknown);
                Ok::<_, StoreError>(())
            })
            .unwrap();
    }

    /// Two handles (two connections) race for the same token, many times:
    /// exactly one wins each time.
    #[test]
    fn a_token_raced_from_two_handles_is_claimed_exactly_once() {
        each_backend::run(|f| {
            let a = f.store.clone();
            let b = f.reopen();
            for round in 0..200 {
                let hash = format!("race-{round}");
                a.create_join_token(&hash, "node", 0, 1000).unwrap();
                let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
                let racers: Vec<_> = [a.clone(), b.clone()]
                    .into_iter()
                    .map(|s| {
                        let hash = hash.clone();
                        let barrier = barrier.clone();
                        std::thread::spawn(move || {
                            barrier.wait();
                            s.transaction(|tx| claim_token(tx, &hash, 10)).unwrap()
                        })
                    })
                    .collect();
                let results: Vec<TokenState> =
                    racers.into_iter().map(|t| t.join().unwrap()).collect();
                let wins = results
                    .iter()
                    .filter(|r| **r == TokenState::Valid("node".into()))
                    .count();
                assert_eq!(wins, 1, "round {round}: {results:?}");
                assert!(
                    results.contains(&TokenState::Used),
                    "round {round}: {results:?}"
                );
            }
        });
    }

    #[test]
    fn a_failed_transaction_changes_nothing() {
        each_backend::run(|f| failed_transaction(&f.store));
    }

    fn failed_transaction(store: &Store) {
        store.create_join_token("h1", "node-a", 0, 100).unwrap();
        let res: Result<(), StoreError> = store.transaction(|tx| {
            claim_token(tx, "h1", 50)?;
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
        each_backend::run(|f| pruning(&f.store));
    }

    fn pruning(store: &Store) {
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
            .with_conn(|c| {
                c.query_opt("PRAGMA user_version", &[])?
                    .ok_or_else(|| StoreError::Corrupt("no version".into()))?
                    .get(0)
            })
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn reconnecting_to_postgres_keeps_data_and_schema() {
        let f = each_backend::Fresh::postgres();
        f.store.create_entry(entry("e1", "p")).unwrap();
        let again = f.reopen();
        assert_eq!(again.list_entries(None).unwrap().len(), 1);
        let pg = f.pg().unwrap();
        assert_eq!(
            pg.psql("SELECT version FROM signet_schema").unwrap(),
            SCHEMA_VERSION.to_string()
        );
    }

    /// The database goes away: calls fail with Unavailable (none hangs),
    /// a write made then is not there afterwards, and the store reconnects
    /// by itself once the database is back.
    #[test]
    fn postgres_going_away_fails_fast_and_the_store_reconnects() {
        let mut db = signet_test_postgres::Database::on_private_server();
        let StoreLocation::Postgres(url) = db.url().parse().unwrap() else {
            panic!("not postgres");
        };
        let opts = PgOptions {
            max_connections: 2,
            min_backoff: std::time::Duration::from_millis(20),
            max_backoff: std::time::Duration::from_millis(200),
            ..PgOptions::default()
        };
        let store = Store::connect_postgres(&url, opts).unwrap();
        store.create_entry(entry("e1", "p")).unwrap();

        db.server_mut().unwrap().stop();
        for _ in 0..5 {
            let err = store.list_entries(None).unwrap_err();
            assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
            let err = store.create_entry(entry("e2", "p")).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("the CA's database is unreachable"),
                "{err}"
            );
            assert!(!err.to_string().contains(db.url()), "{err}");
        }

        db.server_mut().unwrap().start_again();
        let mut attempts = 0;
        let entries = loop {
            match store.list_entries(None) {
                Ok(e) => break e,
                Err(StoreError::Unavailable(_)) if attempts < 200 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                Err(e) => panic!("{e:?}"),
            }
        };
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["e1"]);
        store.create_entry(entry("e2", "p")).unwrap();
    }

    /// `sslmode` against a server with TLS: require and verify-full
    /// encrypt; verify-full refuses a server its `sslrootcert` did not sign.
    #[test]
    fn tls_modes_encrypt_and_verify_full_checks_the_server() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server_cert =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap()
                .signed_by(&server_key, &Issuer::from_params(&ca_params, &ca_key))
                .unwrap();
        let other_key = KeyPair::generate().unwrap();
        let other_ca = ca_params.self_signed(&other_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("other.pem"), other_ca.pem()).unwrap();

        let db = signet_test_postgres::Database::on_private_tls_server(Some((
            &server_cert.pem(),
            &server_key.serialize_pem(),
        )));
        let encrypted = |query: &str| -> Result<bool, StoreError> {
            let location: StoreLocation = format!("{}?{query}", db.url()).parse().unwrap();
            let store = Store::open_location(&location)?;
            store.with_conn(|c| {
                c.query_opt(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )?
                .ok_or_else(|| StoreError::Corrupt("no pg_stat_ssl row".into()))?
                .get(0)
            })
        };
        assert!(!encrypted("sslmode=disable").unwrap());
        assert!(encrypted("sslmode=require").unwrap());
        let ca = dir.path().join("ca.pem");
        assert!(encrypted(&format!("sslmode=verify-full&sslrootcert={}", ca.display())).unwrap());
        let other = dir.path().join("other.pem");
        let err = encrypted(&format!(
            "sslmode=verify-full&sslrootcert={}",
            other.display()
        ))
        .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(err.to_string().contains("certificate"), "{err}");
    }

    #[test]
    fn a_schema_newer_than_this_build_is_refused_on_both_backends() {
        let f = each_backend::Fresh::sqlite();
        f.store
            .with_conn(|c| c.batch("PRAGMA user_version = 99"))
            .unwrap();
        let err = Store::open_location(&f.location).err().unwrap();
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");

        let f = each_backend::Fresh::postgres();
        f.pg()
            .unwrap()
            .psql("UPDATE signet_schema SET version = 99")
            .unwrap();
        let err = Store::open_location(&f.location).err().unwrap();
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
        // Refused without touching it.
        assert_eq!(
            f.pg()
                .unwrap()
                .psql("SELECT version FROM signet_schema")
                .unwrap(),
            "99"
        );
    }

    #[test]
    fn authorities_round_trip_newest_first_on_both_backends() {
        each_backend::run(|f| {
            let row = |id: &str, kind, state, at| {
                AuthorityRow::new(
                    id.into(),
                    kind,
                    state,
                    vec![1, 2, 3],
                    format!("{id}.key"),
                    (0, 100),
                    at,
                    None,
                )
            };
            let owned = |id: &str, replica: &str| AuthorityRow {
                replica_id: Some(replica.into()),
                ..row(id, AuthorityKind::Root, AuthorityState::Active, 10)
            };
            let other = owned("r0", "y");
            let a = owned("r1", "x");
            let b = owned("r2", "x");
            f.store
                .insert_authority(&other, &AuditRecord::default())
                .unwrap();
            let mut i = row(
                "i1",
                AuthorityKind::Intermediate,
                AuthorityState::Prepared,
                5,
            );
            i.parent_id = Some("r1".into());
            i.published_sequence = Some(3);
            for r in [&a, &b, &i] {
                f.store
                    .insert_authority(r, &AuditRecord::default())
                    .unwrap();
            }
            let all = f.store.authorities(None).unwrap();
            let ids: Vec<&str> = all.iter().map(|r| r.id.as_str()).collect();
            assert_eq!(ids, ["r2", "r1", "r0", "i1"]);
            // Inserting r2 active retired r1, of the same replica, and
            // left the other replica's active root alone.
            assert_eq!(all[1].state, AuthorityState::Retired);
            assert_eq!(all[1].retired_at, Some(10));
            assert_eq!(all[2], other);
            assert_eq!(all[3], i);
            assert_eq!(
                f.store
                    .authorities(Some(AuthorityKind::Intermediate))
                    .unwrap(),
                vec![i]
            );
        });
    }

    #[test]
    fn copying_a_trust_domain_keeps_every_row_and_refuses_a_full_target() {
        let from = each_backend::Fresh::sqlite();
        from.store.set_meta("trust_domain", "td").unwrap();
        from.store.create_entry(entry("e1", "p")).unwrap();
        from.store.create_entry(entry("e2", "p")).unwrap();
        from.store.create_join_token("h1", "n", 0, 100).unwrap();
        let root = AuthorityRow::new(
            "r1".into(),
            AuthorityKind::Root,
            AuthorityState::Active,
            vec![9; 40],
            "r1.key".into(),
            (0, 100),
            1,
            None,
        );
        from.store
            .insert_authority(&root, &AuditRecord::default())
            .unwrap();
        from.store
            .transaction(|tx| {
                upsert_node(tx, "spiffe://td/n", "n", 1, "aa", 2, NodeEvent::Attested)?;
                nodes_ban::ban(tx, "bad", 3)?;
                for at in 0..2500 {
                    insert_audit(
                        tx,
                        &AuditRecord {
                            at,
                            ..AuditRecord::default()
                        },
                    )?;
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let to = each_backend::Fresh::postgres();
        let report = copy::copy(&from.store, &to.store).unwrap();
        assert!(report.tables.contains(&("entries", 2)), "{report:?}");
        assert!(report.tables.contains(&("audit", 2501)), "{report:?}");
        assert_eq!(
            to.store.meta("trust_domain").unwrap().as_deref(),
            Some("td")
        );
        assert_eq!(
            to.store.list_entries(None).unwrap(),
            from.store.list_entries(None).unwrap()
        );
        assert_eq!(to.store.revision().unwrap(), from.store.revision().unwrap());
        assert_eq!(to.store.authorities(None).unwrap(), vec![root]);
        assert_eq!(to.store.nodes().unwrap(), from.store.nodes().unwrap());
        assert_eq!(to.store.banned_nodes().unwrap(), vec!["bad".to_owned()]);
        assert_eq!(
            to.store.audit_tail(10_000).unwrap(),
            from.store.audit_tail(10_000).unwrap()
        );
        to.store
            .transaction(|tx| {
                assert_eq!(claim_token(tx, "h1", 5)?, TokenState::Valid("n".into()));
                Err::<(), _>(StoreError::Conflict("look only".into()))
            })
            .unwrap_err();
        // Into a target that holds data: refused, nothing written.
        let before = to.store.audit_tail(10_000).unwrap().len();
        let err = copy::copy(&from.store, &to.store).unwrap_err();
        assert!(err.to_string().contains("already holds data"), "{err}");
        assert_eq!(to.store.audit_tail(10_000).unwrap().len(), before);
    }
}
