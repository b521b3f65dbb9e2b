//! Authority rows: the signing authorities and their rotation journal.
//! Free functions over a connection so that a transition, the bundle
//! sequence it causes and its audit records commit in one transaction.

use rusqlite::{Connection, params};

use super::{AuthorityKind, AuthorityRow, AuthorityState, StoreError};

const SELECT: &str =
    "SELECT id, kind, state, cert_der, key_file, not_before, not_after, created_at,
     published_sequence, published_at, activated_at, retired_at, tainted_at, revoked_at, parent_id
     FROM authorities";

/// Authorities of a kind (all when `None`), newest first.
///
/// # Errors
/// SQLite errors; [`StoreError::Corrupt`] for an unknown kind or state.
pub fn list(
    conn: &Connection,
    kind: Option<AuthorityKind>,
) -> Result<Vec<AuthorityRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "{SELECT} WHERE (?1 IS NULL OR kind = ?1) ORDER BY created_at DESC, rowid DESC"
    ))?;
    let rows = stmt
        .query_map(params![kind.map(AuthorityKind::as_str)], |r| {
            Ok((
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                AuthorityRow {
                    id: r.get(0)?,
                    kind: AuthorityKind::Root,
                    state: AuthorityState::Active,
                    cert_der: r.get(3)?,
                    key_file: r.get(4)?,
                    not_before: r.get(5)?,
                    not_after: r.get(6)?,
                    created_at: r.get(7)?,
                    published_sequence: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
                    published_at: r.get(9)?,
                    activated_at: r.get(10)?,
                    retired_at: r.get(11)?,
                    tainted_at: r.get(12)?,
                    revoked_at: r.get(13)?,
                    parent_id: r.get(14)?,
                },
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(kind, state, row)| {
            Ok(AuthorityRow {
                kind: AuthorityKind::parse(&kind)?,
                state: AuthorityState::parse(&state)?,
                ..row
            })
        })
        .collect()
}

/// Inserts a row.
///
/// # Errors
/// SQLite errors.
pub fn insert(conn: &Connection, row: &AuthorityRow) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO authorities (id, kind, state, cert_der, key_file, not_before, not_after, created_at,
             published_sequence, published_at, activated_at, retired_at, tainted_at, revoked_at, parent_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        params![
            row.id,
            row.kind.as_str(),
            row.state.as_str(),
            row.cert_der,
            row.key_file,
            row.not_before,
            row.not_after,
            row.created_at,
            row.published_sequence.map(|v| v as i64),
            row.published_at,
            row.activated_at,
            row.retired_at,
            row.tainted_at,
            row.revoked_at,
            row.parent_id,
        ],
    )?;
    Ok(())
}

/// Writes a row's state and journal (the key material never changes).
///
/// # Errors
/// SQLite errors; [`StoreError::Corrupt`] when the row does not exist.
pub fn update(conn: &Connection, row: &AuthorityRow) -> Result<(), StoreError> {
    let n = conn.execute(
        "UPDATE authorities SET state = ?2, published_sequence = ?3, published_at = ?4,
             activated_at = ?5, retired_at = ?6, tainted_at = ?7, revoked_at = ?8, parent_id = ?9
         WHERE id = ?1",
        params![
            row.id,
            row.state.as_str(),
            row.published_sequence.map(|v| v as i64),
            row.published_at,
            row.activated_at,
            row.retired_at,
            row.tainted_at,
            row.revoked_at,
            row.parent_id,
        ],
    )?;
    if n == 0 {
        return Err(StoreError::Corrupt(format!(
            "authority {} vanished",
            row.id
        )));
    }
    Ok(())
}
