//! Copies a whole trust domain from one store to another (`signet-ca
//! migrate`): every table, row for row, into an empty target, in one
//! target transaction, so the copy is all there or not at all. Roots and
//! keys are not re-made: authority rows keep their certificates and key
//! file names (the keys stay in the data directory).

use super::{Backend, Store, StoreError, Tx, Value};
use crate::args;

/// The tables and the columns copied, in an order that satisfies every
/// reference. The audit log's ids are assigned again by the target (in the
/// source's order); `revision` is a single row set separately.
const TABLES: &[(&str, &[&str])] = &[
    ("meta", &["key", "value"]),
    (
        "authorities",
        &[
            "id",
            "kind",
            "state",
            "cert_der",
            "key_file",
            "not_before",
            "not_after",
            "created_at",
            "published_sequence",
            "published_at",
            "activated_at",
            "retired_at",
            "tainted_at",
            "revoked_at",
            "parent_id",
            "replica_id",
        ],
    ),
    (
        "entries",
        &[
            "id",
            "spiffe_id",
            "parent_id",
            "selectors",
            "ttl_seconds",
            "dns_names",
            "created_at",
            "revision",
            "federates_with",
        ],
    ),
    (
        "join_tokens",
        &[
            "token_hash",
            "node_name",
            "created_at",
            "expires_at",
            "used_at",
        ],
    ),
    (
        "nodes",
        &[
            "spiffe_id",
            "name",
            "attested_at",
            "last_serial",
            "svid_expires_at",
            "updated_at",
            "bundle_sequence",
            "svid_count",
            "last_seen",
            "prev_serial",
            "chains_through",
        ],
    ),
    ("banned_nodes", &["name", "banned_at"]),
    (
        "federations",
        &[
            "trust_domain",
            "bundle_endpoint_url",
            "profile",
            "endpoint_spiffe_id",
            "initial_bundle",
            "web_roots_pem",
            "from_config",
            "bundle",
            "bundle_sequence",
            "last_attempt_at",
            "last_success_at",
            "last_error",
            "consecutive_failures",
            "created_at",
        ],
    ),
];

const AUDIT_COLUMNS: &[&str] = &[
    "at",
    "caller",
    "action",
    "spiffe_id",
    "serial",
    "not_after",
    "result",
    "detail",
];

/// Audit records read per query.
const AUDIT_BATCH: i64 = 1000;

/// How many rows each table received.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// `(table, rows)` in copy order.
    pub tables: Vec<(&'static str, u64)>,
}

/// Copies everything in `from` into `to`, which must hold nothing yet.
///
/// # Errors
/// [`StoreError::Conflict`] when `to` holds data (then nothing is written);
/// database errors (then the target transaction is rolled back).
pub fn copy(from: &Store, to: &Store) -> Result<CopyReport, StoreError> {
    to.transaction(|dst| {
        for (table, _) in TABLES.iter().chain([&("audit", AUDIT_COLUMNS)]) {
            let n: i64 = dst
                .query_opt(&format!("SELECT COUNT(*) FROM {table}"), &[])?
                .ok_or_else(|| StoreError::Corrupt(format!("no count of {table}")))?
                .get(0)?;
            if n > 0 {
                return Err(StoreError::Conflict(format!(
                    "the target database already holds data ({n} rows in {table}); \
                     migrate only into an empty database"
                )));
            }
        }
        let mut report = CopyReport::default();
        from.with_conn(|src| {
            for (table, columns) in TABLES {
                let order = match (*table, src.backend()) {
                    ("authorities", Backend::Sqlite) => "rowid",
                    ("authorities", Backend::Postgres) => "seq",
                    _ => columns[0],
                };
                let rows = src.query(
                    &format!(
                        "SELECT {} FROM {table} ORDER BY {order}",
                        columns.join(", ")
                    ),
                    &[],
                )?;
                for row in &rows {
                    insert(dst, table, columns, &row.0)?;
                }
                report.tables.push((table, rows.len() as u64));
            }
            let revision: i64 = src
                .query_opt("SELECT value FROM revision WHERE id = 1", &[])?
                .ok_or_else(|| StoreError::Corrupt("no revision row".into()))?
                .get(0)?;
            dst.execute(
                "UPDATE revision SET value = ?1 WHERE id = 1",
                args![revision],
            )?;
            let mut after = i64::MIN;
            let mut audit = 0;
            loop {
                let rows = src.query(
                    &format!(
                        "SELECT id, {} FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2",
                        AUDIT_COLUMNS.join(", ")
                    ),
                    args![after, AUDIT_BATCH],
                )?;
                let Some(last) = rows.last() else { break };
                after = last.get(0)?;
                for row in &rows {
                    insert(dst, "audit", AUDIT_COLUMNS, &row.0[1..])?;
                }
                audit += rows.len() as u64;
            }
            report.tables.push(("audit", audit));
            Ok::<_, StoreError>(())
        })?;
        Ok(report)
    })
}

fn insert(dst: &Tx<'_>, table: &str, columns: &[&str], values: &[Value]) -> Result<(), StoreError> {
    let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    dst.execute(
        &format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            columns.join(", "),
            placeholders.join(", ")
        ),
        values,
    )?;
    Ok(())
}
