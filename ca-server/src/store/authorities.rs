//! Authority rows: the signing authorities and their rotation journal.
//! Free functions over a connection so that a transition, the bundle
//! sequence it causes and its audit records commit in one transaction.

use super::{AuthorityKind, AuthorityRow, AuthorityState, Backend, Row, StoreError, Tx};
use crate::args;

const SELECT: &str =
    "SELECT id, kind, state, cert_der, key_file, not_before, not_after, created_at,
     published_sequence, published_at, activated_at, retired_at, tainted_at, revoked_at, parent_id,
     replica_id
     FROM authorities";

/// Authorities of a kind (all when `None`), newest first.
///
/// # Errors
/// Database errors; [`StoreError::Corrupt`] for an unknown kind or state.
pub fn list(tx: &Tx<'_>, kind: Option<AuthorityKind>) -> Result<Vec<AuthorityRow>, StoreError> {
    // Ties in created_at go newest-inserted first: SQLite's rowid, the
    // `seq` column on PostgreSQL.
    let order = match tx.backend() {
        Backend::Sqlite => "rowid",
        Backend::Postgres => "seq",
    };
    tx.query(
        &format!(
            "{SELECT} WHERE (CAST(?1 AS TEXT) IS NULL OR kind = ?1) ORDER BY created_at DESC, {order} DESC"
        ),
        args![kind.map(AuthorityKind::as_str)],
    )?
    .iter()
    .map(from_row)
    .collect()
}

fn from_row(r: &Row) -> Result<AuthorityRow, StoreError> {
    Ok(AuthorityRow {
        id: r.get(0)?,
        kind: AuthorityKind::parse(&r.get::<String>(1)?)?,
        state: AuthorityState::parse(&r.get::<String>(2)?)?,
        cert_der: r.get(3)?,
        key_file: r.get(4)?,
        not_before: r.get(5)?,
        not_after: r.get(6)?,
        created_at: r.get(7)?,
        published_sequence: r.get(8)?,
        published_at: r.get(9)?,
        activated_at: r.get(10)?,
        retired_at: r.get(11)?,
        tainted_at: r.get(12)?,
        revoked_at: r.get(13)?,
        parent_id: r.get(14)?,
        replica_id: r.get(15)?,
    })
}

/// Inserts a row.
///
/// # Errors
/// Database errors.
pub fn insert(tx: &Tx<'_>, row: &AuthorityRow) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO authorities (id, kind, state, cert_der, key_file, not_before, not_after, created_at,
             published_sequence, published_at, activated_at, retired_at, tainted_at, revoked_at, parent_id,
             replica_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        args![
            &row.id,
            row.kind.as_str(),
            row.state.as_str(),
            &row.cert_der,
            &row.key_file,
            row.not_before,
            row.not_after,
            row.created_at,
            row.published_sequence.map(|v| v as i64),
            row.published_at,
            row.activated_at,
            row.retired_at,
            row.tainted_at,
            row.revoked_at,
            &row.parent_id,
            &row.replica_id,
        ],
    )?;
    Ok(())
}

/// Writes a row's state and journal (the key material never changes).
///
/// # Errors
/// Database errors; [`StoreError::Corrupt`] when the row does not exist.
pub fn update(tx: &Tx<'_>, row: &AuthorityRow) -> Result<(), StoreError> {
    let n = tx.execute(
        "UPDATE authorities SET state = ?2, published_sequence = ?3, published_at = ?4,
             activated_at = ?5, retired_at = ?6, tainted_at = ?7, revoked_at = ?8, parent_id = ?9
         WHERE id = ?1",
        args![
            &row.id,
            row.state.as_str(),
            row.published_sequence.map(|v| v as i64),
            row.published_at,
            row.activated_at,
            row.retired_at,
            row.tainted_at,
            row.revoked_at,
            &row.parent_id,
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

/// Makes `replica` the owner of the authorities `ids` that have no owner
/// yet; returns how many it adopted. Rows another replica owns are left
/// alone, so two replicas racing for the same row cannot both win.
///
/// # Errors
/// Database errors.
pub fn adopt(tx: &Tx<'_>, replica: &str, ids: &[String]) -> Result<u64, StoreError> {
    let mut adopted = 0;
    for id in ids {
        adopted += tx.execute(
            "UPDATE authorities SET replica_id = ?2 WHERE id = ?1 AND replica_id IS NULL",
            args![id, replica],
        )?;
    }
    Ok(adopted)
}
