//! Node credentials and bans: which node SVID serials are current, and
//! which node names may not attest.

use super::{Store, StoreError, Tx};
use crate::args;

/// The serials of a node's SVIDs the CA still honours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSerials {
    /// The SVID issued last.
    pub current: String,
    /// The SVID the current one was renewed from, empty when none.
    pub previous: String,
}

/// A node's serials, `None` when it is not attested.
///
/// # Errors
/// Database errors.
pub fn node_serials(tx: &Tx<'_>, spiffe_id: &str) -> Result<Option<NodeSerials>, StoreError> {
    tx.query_opt(
        "SELECT last_serial, prev_serial FROM nodes WHERE spiffe_id = ?1",
        args![spiffe_id],
    )?
    .map(|r| {
        Ok(NodeSerials {
            current: r.get(0)?,
            previous: r.get(1)?,
        })
    })
    .transpose()
}

/// Sets the serial honoured beside the current one (empty for none).
///
/// # Errors
/// Database errors.
pub fn set_previous_serial(tx: &Tx<'_>, spiffe_id: &str, previous: &str) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE nodes SET prev_serial = ?2 WHERE spiffe_id = ?1",
        args![spiffe_id, previous],
    )?;
    Ok(())
}

/// Whether the node name is banned.
///
/// # Errors
/// Database errors.
pub fn is_banned(tx: &Tx<'_>, name: &str) -> Result<bool, StoreError> {
    Ok(tx
        .query_opt("SELECT 1 FROM banned_nodes WHERE name = ?1", args![name])?
        .is_some())
}

/// Removes a node's attestation; `false` when there was none.
///
/// # Errors
/// Database errors.
pub fn delete_node(tx: &Tx<'_>, spiffe_id: &str) -> Result<bool, StoreError> {
    Ok(tx.execute("DELETE FROM nodes WHERE spiffe_id = ?1", args![spiffe_id])? > 0)
}

/// Bans a node name; `false` when it was banned already.
///
/// # Errors
/// Database errors.
pub fn ban(tx: &Tx<'_>, name: &str, now: i64) -> Result<bool, StoreError> {
    Ok(tx.execute(
        "INSERT INTO banned_nodes (name, banned_at) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
        args![name, now],
    )? > 0)
}

/// Lifts a ban; `false` when the name was not banned.
///
/// # Errors
/// Database errors.
pub fn unban(tx: &Tx<'_>, name: &str) -> Result<bool, StoreError> {
    Ok(tx.execute("DELETE FROM banned_nodes WHERE name = ?1", args![name])? > 0)
}

impl Store {
    /// The banned node names, sorted.
    ///
    /// # Errors
    /// Database errors.
    pub fn banned_nodes(&self) -> Result<Vec<String>, StoreError> {
        self.with_conn(|c| {
            c.query("SELECT name FROM banned_nodes ORDER BY name", &[])?
                .iter()
                .map(|r| r.get(0))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{NodeEvent, upsert_node};
    use super::*;

    #[test]
    fn serials_bans_and_eviction() {
        crate::store::each_backend::run(|f| serials_bans(&f.store));
    }

    fn serials_bans(store: &Store) {
        let id = "spiffe://td/signet/node/a";
        store
            .transaction(|tx| {
                upsert_node(tx, id, "a", 10, "aa", 100, NodeEvent::Attested)?;
                set_previous_serial(tx, id, "")
            })
            .unwrap();
        let serials = store.with_conn(|c| node_serials(c, id)).unwrap().unwrap();
        assert_eq!(serials.current, "aa");
        assert_eq!(serials.previous, "");

        store
            .transaction(|tx| {
                upsert_node(tx, id, "a", 20, "bb", 200, NodeEvent::Renewed)?;
                set_previous_serial(tx, id, "aa")
            })
            .unwrap();
        let serials = store.with_conn(|c| node_serials(c, id)).unwrap().unwrap();
        assert_eq!(
            serials,
            NodeSerials {
                current: "bb".into(),
                previous: "aa".into(),
            }
        );

        assert!(store.transaction(|tx| ban(tx, "a", 30)).unwrap());
        assert!(!store.transaction(|tx| ban(tx, "a", 31)).unwrap());
        assert!(store.with_conn(|c| is_banned(c, "a")).unwrap());
        assert_eq!(store.banned_nodes().unwrap(), vec!["a".to_owned()]);
        assert!(store.transaction(|tx| delete_node(tx, id)).unwrap());
        assert!(!store.transaction(|tx| delete_node(tx, id)).unwrap());
        assert_eq!(store.with_conn(|c| node_serials(c, id)).unwrap(), None);
        assert!(store.transaction(|tx| unban(tx, "a")).unwrap());
        assert!(!store.transaction(|tx| unban(tx, "a")).unwrap());
        assert!(!store.with_conn(|c| is_banned(c, "a")).unwrap());
    }
}
