//! Numbered schema migrations, the same numbers on both backends, each
//! applied in its own transaction. SQLite records how far a database has
//! come in `PRAGMA user_version`, PostgreSQL in the `signet_schema` table
//! (under an advisory lock, so replicas starting together migrate once).

use rusqlite::Connection;

use super::StoreError;
use super::db::Tx;

const SQLITE: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE revision (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
     INSERT INTO revision (id, value) VALUES (1, 0);
     CREATE TABLE entries (
         id TEXT PRIMARY KEY,
         spiffe_id TEXT NOT NULL,
         parent_id TEXT NOT NULL,
         selectors TEXT NOT NULL,
         ttl_seconds INTEGER NOT NULL,
         dns_names TEXT NOT NULL,
         created_at INTEGER NOT NULL,
         revision INTEGER NOT NULL);
     CREATE INDEX entries_by_parent ON entries (parent_id);
     CREATE UNIQUE INDEX entries_unique ON entries (spiffe_id, parent_id, selectors);
     CREATE TABLE join_tokens (
         token_hash TEXT PRIMARY KEY,
         node_name TEXT NOT NULL,
         created_at INTEGER NOT NULL,
         expires_at INTEGER NOT NULL,
         used_at INTEGER);
     CREATE TABLE nodes (
         spiffe_id TEXT PRIMARY KEY,
         name TEXT NOT NULL,
         attested_at INTEGER NOT NULL,
         last_serial TEXT NOT NULL,
         svid_expires_at INTEGER NOT NULL,
         updated_at INTEGER NOT NULL);
     CREATE TABLE authorities (
         id TEXT PRIMARY KEY,
         kind TEXT NOT NULL,
         state TEXT NOT NULL,
         cert_der BLOB NOT NULL,
         key_file TEXT NOT NULL,
         not_before INTEGER NOT NULL,
         not_after INTEGER NOT NULL,
         created_at INTEGER NOT NULL);
     CREATE TABLE audit (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         at INTEGER NOT NULL,
         caller TEXT NOT NULL,
         action TEXT NOT NULL,
         spiffe_id TEXT NOT NULL,
         serial TEXT NOT NULL,
         not_after INTEGER NOT NULL,
         result TEXT NOT NULL,
         detail TEXT NOT NULL);",
    // 2: what each agent reports it serves.
    "ALTER TABLE nodes ADD COLUMN bundle_sequence INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE nodes ADD COLUMN svid_count INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE nodes ADD COLUMN last_seen INTEGER NOT NULL DEFAULT 0;",
    // 3: retention deletes the oldest audit records by time.
    "CREATE INDEX audit_by_at ON audit (at);",
    // 4: the node SVID the current one was renewed from (still honoured),
    // and node names refused attestation.
    "ALTER TABLE nodes ADD COLUMN prev_serial TEXT NOT NULL DEFAULT '';
     CREATE TABLE banned_nodes (name TEXT PRIMARY KEY, banned_at INTEGER NOT NULL);",
    // 5: the rotation journal. Each authority row records when it was
    // published (and in which bundle sequence), activated, retired, tainted
    // and revoked, and which authority signed it. Rows that exist already
    // were in the bundle and (active, retired) signing: they count as
    // published in the current sequence. Agents report which authorities
    // their SVIDs chain through.
    "ALTER TABLE authorities ADD COLUMN published_sequence INTEGER;
     ALTER TABLE authorities ADD COLUMN published_at INTEGER;
     ALTER TABLE authorities ADD COLUMN activated_at INTEGER;
     ALTER TABLE authorities ADD COLUMN retired_at INTEGER;
     ALTER TABLE authorities ADD COLUMN tainted_at INTEGER;
     ALTER TABLE authorities ADD COLUMN revoked_at INTEGER;
     ALTER TABLE authorities ADD COLUMN parent_id TEXT;
     UPDATE authorities SET
         published_sequence = COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'bundle_sequence'), 1),
         published_at = created_at;
     UPDATE authorities SET activated_at = created_at WHERE state IN ('active', 'retired');
     UPDATE authorities SET parent_id = (SELECT value FROM meta WHERE key = 'parent_of:' || authorities.id)
         WHERE kind = 'intermediate';
     ALTER TABLE nodes ADD COLUMN chains_through TEXT NOT NULL DEFAULT '[]';",
    // 6: federation relationships with their last good bundle, and the
    // trust domains each entry federates with.
    "CREATE TABLE federations (
         trust_domain TEXT PRIMARY KEY,
         bundle_endpoint_url TEXT NOT NULL,
         profile TEXT NOT NULL,
         endpoint_spiffe_id TEXT NOT NULL,
         initial_bundle TEXT NOT NULL,
         web_roots_pem BLOB,
         from_config INTEGER NOT NULL,
         bundle TEXT,
         bundle_sequence INTEGER NOT NULL DEFAULT 0,
         last_attempt_at INTEGER NOT NULL DEFAULT 0,
         last_success_at INTEGER NOT NULL DEFAULT 0,
         last_error TEXT NOT NULL DEFAULT '',
         consecutive_failures INTEGER NOT NULL DEFAULT 0,
         created_at INTEGER NOT NULL);
     ALTER TABLE entries ADD COLUMN federates_with TEXT NOT NULL DEFAULT '[]';",
    // 7: the CA replicas sharing this database, each with its heartbeat
    // (one row on SQLite: the only replica).
    "CREATE TABLE replicas (
         id TEXT PRIMARY KEY,
         address TEXT NOT NULL,
         started_at INTEGER NOT NULL,
         heartbeat_at INTEGER NOT NULL,
         agents_connected INTEGER NOT NULL DEFAULT 0,
         signing_authority TEXT NOT NULL DEFAULT '',
         stopped_at INTEGER);",
    // 8: the replica that owns each authority (holds its key and signs
    // with it). Existing rows have none until a replica that holds their
    // key file adopts them.
    "ALTER TABLE authorities ADD COLUMN replica_id TEXT;",
];

/// The same migrations in PostgreSQL's dialect: `BIGINT` for every integer
/// (the store reads 64-bit integers), `BYTEA` for blobs, `BIGSERIAL` for the
/// audit log's order, and `seq` on authorities for SQLite's `rowid` order.
const POSTGRES: &[&str] = &[
    // 1
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE revision (id BIGINT PRIMARY KEY CHECK (id = 1), value BIGINT NOT NULL);
     INSERT INTO revision (id, value) VALUES (1, 0);
     CREATE TABLE entries (
         id TEXT PRIMARY KEY,
         spiffe_id TEXT NOT NULL,
         parent_id TEXT NOT NULL,
         selectors TEXT NOT NULL,
         ttl_seconds BIGINT NOT NULL,
         dns_names TEXT NOT NULL,
         created_at BIGINT NOT NULL,
         revision BIGINT NOT NULL);
     CREATE INDEX entries_by_parent ON entries (parent_id);
     CREATE UNIQUE INDEX entries_unique ON entries (spiffe_id, parent_id, selectors);
     CREATE TABLE join_tokens (
         token_hash TEXT PRIMARY KEY,
         node_name TEXT NOT NULL,
         created_at BIGINT NOT NULL,
         expires_at BIGINT NOT NULL,
         used_at BIGINT);
     CREATE TABLE nodes (
         spiffe_id TEXT PRIMARY KEY,
         name TEXT NOT NULL,
         attested_at BIGINT NOT NULL,
         last_serial TEXT NOT NULL,
         svid_expires_at BIGINT NOT NULL,
         updated_at BIGINT NOT NULL);
     CREATE TABLE authorities (
         seq BIGSERIAL UNIQUE,
         id TEXT PRIMARY KEY,
         kind TEXT NOT NULL,
         state TEXT NOT NULL,
         cert_der BYTEA NOT NULL,
         key_file TEXT NOT NULL,
         not_before BIGINT NOT NULL,
         not_after BIGINT NOT NULL,
         created_at BIGINT NOT NULL);
     CREATE TABLE audit (
         id BIGSERIAL PRIMARY KEY,
         at BIGINT NOT NULL,
         caller TEXT NOT NULL,
         action TEXT NOT NULL,
         spiffe_id TEXT NOT NULL,
         serial TEXT NOT NULL,
         not_after BIGINT NOT NULL,
         result TEXT NOT NULL,
         detail TEXT NOT NULL);",
    // 2
    "ALTER TABLE nodes ADD COLUMN bundle_sequence BIGINT NOT NULL DEFAULT 0;
     ALTER TABLE nodes ADD COLUMN svid_count BIGINT NOT NULL DEFAULT 0;
     ALTER TABLE nodes ADD COLUMN last_seen BIGINT NOT NULL DEFAULT 0;",
    // 3
    "CREATE INDEX audit_by_at ON audit (at);",
    // 4
    "ALTER TABLE nodes ADD COLUMN prev_serial TEXT NOT NULL DEFAULT '';
     CREATE TABLE banned_nodes (name TEXT PRIMARY KEY, banned_at BIGINT NOT NULL);",
    // 5
    "ALTER TABLE authorities ADD COLUMN published_sequence BIGINT;
     ALTER TABLE authorities ADD COLUMN published_at BIGINT;
     ALTER TABLE authorities ADD COLUMN activated_at BIGINT;
     ALTER TABLE authorities ADD COLUMN retired_at BIGINT;
     ALTER TABLE authorities ADD COLUMN tainted_at BIGINT;
     ALTER TABLE authorities ADD COLUMN revoked_at BIGINT;
     ALTER TABLE authorities ADD COLUMN parent_id TEXT;
     UPDATE authorities SET
         published_sequence = COALESCE((SELECT CAST(value AS BIGINT) FROM meta WHERE key = 'bundle_sequence'), 1),
         published_at = created_at;
     UPDATE authorities SET activated_at = created_at WHERE state IN ('active', 'retired');
     UPDATE authorities SET parent_id = (SELECT value FROM meta WHERE key = 'parent_of:' || authorities.id)
         WHERE kind = 'intermediate';
     ALTER TABLE nodes ADD COLUMN chains_through TEXT NOT NULL DEFAULT '[]';",
    // 6
    "CREATE TABLE federations (
         trust_domain TEXT PRIMARY KEY,
         bundle_endpoint_url TEXT NOT NULL,
         profile TEXT NOT NULL,
         endpoint_spiffe_id TEXT NOT NULL,
         initial_bundle TEXT NOT NULL,
         web_roots_pem BYTEA,
         from_config BIGINT NOT NULL,
         bundle TEXT,
         bundle_sequence BIGINT NOT NULL DEFAULT 0,
         last_attempt_at BIGINT NOT NULL DEFAULT 0,
         last_success_at BIGINT NOT NULL DEFAULT 0,
         last_error TEXT NOT NULL DEFAULT '',
         consecutive_failures BIGINT NOT NULL DEFAULT 0,
         created_at BIGINT NOT NULL);
     ALTER TABLE entries ADD COLUMN federates_with TEXT NOT NULL DEFAULT '[]';",
    // 7
    "CREATE TABLE replicas (
         id TEXT PRIMARY KEY,
         address TEXT NOT NULL,
         started_at BIGINT NOT NULL,
         heartbeat_at BIGINT NOT NULL,
         agents_connected BIGINT NOT NULL DEFAULT 0,
         signing_authority TEXT NOT NULL DEFAULT '',
         stopped_at BIGINT);",
    // 8
    "ALTER TABLE authorities ADD COLUMN replica_id TEXT;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = SQLITE.len() as i64;

const _: () = assert!(SQLITE.len() == POSTGRES.len());

/// The advisory lock key under which PostgreSQL migrations run ("signet" in ASCII).
const MIGRATION_LOCK: i64 = 0x7369_676e_6574;

pub(super) fn migrate_sqlite(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in SQLITE.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// The schema version of a PostgreSQL database (0 when it has none), read
/// inside `tx`.
pub(super) fn pg_version(tx: &Tx<'_>) -> Result<i64, StoreError> {
    tx.batch("CREATE TABLE IF NOT EXISTS signet_schema (version BIGINT NOT NULL)")?;
    Ok(
        match tx.query_opt("SELECT version FROM signet_schema", &[])? {
            Some(row) => row.get(0)?,
            None => 0,
        },
    )
}

/// Migrates a PostgreSQL database inside `tx` (one transaction: PostgreSQL's
/// schema changes are transactional, so a failure leaves nothing half done).
pub(super) fn migrate_postgres(tx: &Tx<'_>) -> Result<(), StoreError> {
    tx.batch(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))?;
    let current = pg_version(tx)?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    for sql in POSTGRES.iter().skip(current as usize) {
        tx.batch(sql)?;
    }
    if current == 0 {
        tx.execute(
            "INSERT INTO signet_schema (version) VALUES (?1)",
            crate::args![SCHEMA_VERSION],
        )?;
    } else if current < SCHEMA_VERSION {
        tx.execute(
            "UPDATE signet_schema SET version = ?1",
            crate::args![SCHEMA_VERSION],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AuthorityKind, AuthorityState, authorities};

    #[test]
    fn migration_5_journals_existing_authorities_as_published_in_the_current_sequence() {
        let mut conn = Connection::open_in_memory().unwrap();
        // A database as schema 4 left it.
        for (i, sql) in SQLITE.iter().take(4).enumerate() {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", (i + 1) as i64)
                .unwrap();
        }
        conn.execute_batch(
            "INSERT INTO meta (key, value) VALUES ('bundle_sequence', '7'), ('parent_of:i1', 'r1');
             INSERT INTO authorities (id, kind, state, cert_der, key_file, not_before, not_after, created_at) VALUES
               ('r1', 'root', 'active', x'00', 'k', 0, 100, 10),
               ('r2', 'root', 'prepared', x'00', 'k', 0, 100, 20),
               ('i1', 'intermediate', 'active', x'00', 'k', 0, 50, 11),
               ('j0', 'jwt', 'retired', x'00', 'k', 0, 50, 5);
             INSERT INTO nodes (spiffe_id, name, attested_at, last_serial, svid_expires_at, updated_at)
               VALUES ('spiffe://td/signet/node/a', 'a', 1, 's', 2, 1);",
        )
        .unwrap();
        migrate_sqlite(&mut conn).unwrap();
        let rows = authorities::list(&Tx::sqlite(&conn), None).unwrap();
        let row = |id: &str| rows.iter().find(|r| r.id == id).unwrap();
        for r in &rows {
            assert_eq!(r.published_sequence, Some(7), "{r:?}");
            assert_eq!(r.published_at, Some(r.created_at));
        }
        assert_eq!(row("r1").activated_at, Some(10));
        assert_eq!(row("j0").activated_at, Some(5));
        assert_eq!(row("r2").activated_at, None);
        assert_eq!(row("r2").state, AuthorityState::Prepared);
        assert_eq!(row("i1").parent_id.as_deref(), Some("r1"));
        assert_eq!(row("i1").kind, AuthorityKind::Intermediate);
        assert_eq!(row("r1").parent_id, None);
        let chains: String = conn
            .query_row("SELECT chains_through FROM nodes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(chains, "[]");
    }
}
