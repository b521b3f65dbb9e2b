//! A node's credential after attestation: which node SVID is current,
//! renewal only from that one, eviction and bans.
//!
//! The CA records the serial of the node SVID it issued last ("current")
//! and of the one that SVID was renewed from ("previous"). Only these two
//! are honoured, on requests and for renewal; every older SVID of the node,
//! and every SVID from before an eviction or a new attestation, is refused.
//!
//! Renewing from the current SVID makes it the previous one. Renewing from
//! the previous SVID is allowed because an agent keeps its connection (and
//! so its client certificate) across a renewal, and because the answer to a
//! renewal can be lost or the agent can die before storing it; it then
//! still holds only the previous SVID and would otherwise need a new join
//! token. Such a renewal retires the SVID issued in between. So the node
//! has one renewal lineage at any time: two holders of one node identity
//! cannot both go on renewing, each renewal from the older SVID ends the
//! other branch, and an SVID two renewals old is dead.
//!
//! Every change of a node's honoured serials is announced on
//! [`Ca::node_events`]; the node API closes streams and connections that
//! present a serial no longer honoured.

use signet_identity::SpiffeId;
use tokio::sync::broadcast;

use super::time::unix;
use super::{Ca, CaError};
use crate::store::nodes_ban::{self, NodeSerials};
use crate::store::{AuditRecord, Tx};

/// How many node events a slow listener may fall behind before it must
/// re-check every node it holds.
pub const NODE_EVENTS_CAPACITY: usize = 1024;

/// What an eviction found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eviction {
    /// Whether the node was attested (and is no longer).
    pub was_attested: bool,
    /// Whether the name was banned by this call (false when it was banned
    /// already, or not asked to be).
    pub newly_banned: bool,
}

impl Ca {
    /// Node identities whose honoured serials changed (evicted, banned,
    /// attested again, renewed).
    pub fn node_events(&self) -> broadcast::Receiver<SpiffeId> {
        self.node_events.subscribe()
    }

    pub(super) fn announce_node_change(&self, node: &SpiffeId) {
        // No listener is fine: then nothing holds a connection to close.
        let _ = self.node_events.send(node.clone());
    }

    /// The serials of `node`'s SVIDs honoured on requests: empty when the
    /// node is not attested.
    ///
    /// # Errors
    /// Store errors.
    pub fn honoured_serials(&self, node: &SpiffeId) -> Result<Vec<String>, CaError> {
        let serials = self
            .store
            .with_conn(|c| nodes_ban::node_serials(c, node.as_str()))?;
        Ok(serials.map_or_else(Vec::new, |s| {
            [s.current, s.previous]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect()
        }))
    }

    /// Checks that `node` is attested and that `serial` is the serial of its
    /// current node SVID or of the one that SVID replaced.
    ///
    /// # Errors
    /// PermissionDenied otherwise.
    pub fn authorize_node_svid(
        &self,
        node: &SpiffeId,
        serial: Option<&str>,
    ) -> Result<(), CaError> {
        if self.node_name(node).is_none() {
            return Err(CaError::PermissionDenied(format!(
                "{node} is not a node identity"
            )));
        }
        let honoured = self.honoured_serials(node)?;
        if honoured.is_empty() {
            return Err(CaError::PermissionDenied(format!(
                "node {node} is not attested (evicted, banned or never attested)"
            )));
        }
        match serial {
            Some(s) if honoured.iter().any(|h| h == s) => Ok(()),
            _ => Err(CaError::PermissionDenied(format!(
                "this node SVID of {node} has been superseded; use the current one or attest again"
            ))),
        }
    }

    /// Decides a renewal presented with the SVID `presented`, inside the
    /// renewal's transaction. Returns the serial to keep as previous.
    ///
    /// # Errors
    /// PermissionDenied for an unknown node or a superseded SVID.
    pub(super) fn check_renewal(
        &self,
        tx: &Tx<'_>,
        node: &SpiffeId,
        presented: Option<&str>,
    ) -> Result<String, CaError> {
        let Some(NodeSerials { current, previous }) = nodes_ban::node_serials(tx, node.as_str())?
        else {
            return Err(CaError::PermissionDenied(format!(
                "node {node} is not attested"
            )));
        };
        match presented {
            Some(p) if p == current => Ok(current),
            Some(p) if !previous.is_empty() && p == previous => {
                tracing::info!(%node, serial = p, retired = %current, "renewal from the previous node SVID; the SVID issued in between is retired");
                Ok(previous)
            }
            _ => Err(CaError::PermissionDenied(format!(
                "this node SVID of {node} has been superseded; only the current one may renew"
            ))),
        }
    }

    /// The node ID `name` (a node name or a node SPIFFE ID) stands for.
    ///
    /// # Errors
    /// InvalidArgument when it is neither.
    pub fn node_arg_id(&self, name: &str) -> Result<SpiffeId, CaError> {
        self.node_arg(name).map(|(_, id)| id)
    }

    /// `name` (a node name or a node SPIFFE ID of this trust domain) as a
    /// node name and ID.
    fn node_arg(&self, name: &str) -> Result<(String, SpiffeId), CaError> {
        if name.starts_with("spiffe://") {
            let id = SpiffeId::parse(name).map_err(|e| {
                CaError::InvalidArgument(format!("invalid SPIFFE ID {name:?}: {e}"))
            })?;
            let n = self.node_name(&id).ok_or_else(|| {
                CaError::InvalidArgument(format!("{id} is not a node identity of this CA"))
            })?;
            return Ok((n.to_owned(), id));
        }
        let id = self.node_id(name)?;
        Ok((name.to_owned(), id))
    }

    /// Removes `node`'s attestation: its SVIDs are refused from now on, on
    /// open connections too, and it must attest again with a new join token.
    /// With `ban`, attestation of that name is also refused until
    /// [`Ca::unban_node`].
    ///
    /// # Errors
    /// InvalidArgument for a bad name; NotFound when evicting (without ban)
    /// a node that is not attested; Unavailable when the audit log cannot
    /// be written (then nothing is changed).
    pub fn evict_node(&self, node: &str, ban: bool, caller: &str) -> Result<Eviction, CaError> {
        let action = if ban { "ban_node" } else { "evict_node" };
        self.refusing(caller, action, node, || {
            let (name, id) = self.node_arg(node)?;
            let now = unix(self.now());
            let outcome = self.store.transaction(|tx| {
                let was_attested = nodes_ban::delete_node(tx, id.as_str())?;
                if !was_attested && !ban {
                    return Err(CaError::NotFound(format!("node {id} is not attested")));
                }
                let newly_banned = ban && nodes_ban::ban(tx, &name, now)?;
                self.auditor.durable_in(
                    tx,
                    &AuditRecord {
                        at: now,
                        caller: caller.into(),
                        action: action.into(),
                        spiffe_id: id.to_string(),
                        result: "ok".into(),
                        detail: format!("was attested: {was_attested}"),
                        ..AuditRecord::default()
                    },
                )?;
                Ok(Eviction {
                    was_attested,
                    newly_banned,
                })
            })?;
            tracing::info!(node = %id, ban, was_attested = outcome.was_attested, "node evicted");
            self.announce_node_change(&id);
            Ok(outcome)
        })
    }

    /// Lifts the ban of `node`; it may attest again with a new join token.
    ///
    /// # Errors
    /// InvalidArgument for a bad name; NotFound when it is not banned;
    /// Unavailable when the audit log cannot be written.
    pub fn unban_node(&self, node: &str, caller: &str) -> Result<(), CaError> {
        self.refusing(caller, "unban_node", node, || {
            let (name, id) = self.node_arg(node)?;
            let now = unix(self.now());
            self.store.transaction(|tx| {
                if !nodes_ban::unban(tx, &name)? {
                    return Err(CaError::NotFound(format!("node {name} is not banned")));
                }
                self.auditor.durable_in(
                    tx,
                    &AuditRecord {
                        at: now,
                        caller: caller.into(),
                        action: "unban_node".into(),
                        spiffe_id: id.to_string(),
                        result: "ok".into(),
                        ..AuditRecord::default()
                    },
                )?;
                Ok(())
            })
        })
    }

    /// Refuses attestation of a banned node name, inside the attestation's
    /// transaction.
    ///
    /// # Errors
    /// PermissionDenied for a banned name.
    pub(super) fn check_not_banned(&self, tx: &Tx<'_>, name: &str) -> Result<(), CaError> {
        if nodes_ban::is_banned(tx, name)? {
            return Err(CaError::PermissionDenied(format!(
                "node {name} is banned; an administrator must unban it first"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::testing::{self, TestClock};
    use crate::config::Settings;

    fn current_serial(ca: &Ca) -> String {
        ca.nodes().unwrap().pop().unwrap().last_serial
    }

    #[test]
    fn only_the_current_and_previous_node_svids_are_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let ca = testing::open(dir.path(), &clock, Settings::default());
        let node = testing::attest(&ca, "n1");
        let first = current_serial(&ca);
        ca.authorize_node_svid(&node, Some(&first)).unwrap();

        let second = ca
            .renew_node(&node, Some(&first), &testing::csr())
            .unwrap()
            .serial_hex();
        let third = ca
            .renew_node(&node, Some(&second), &testing::csr())
            .unwrap()
            .serial_hex();
        ca.authorize_node_svid(&node, Some(&second)).unwrap();
        ca.authorize_node_svid(&node, Some(&third)).unwrap();
        // Two renewals old: refused, for calls and for renewal.
        assert!(matches!(
            ca.authorize_node_svid(&node, Some(&first)),
            Err(CaError::PermissionDenied(_))
        ));
        assert!(matches!(
            ca.renew_node(&node, Some(&first), &testing::csr()),
            Err(CaError::PermissionDenied(_))
        ));
        // Renewing from the previous SVID retires the one issued in between.
        let fourth = ca
            .renew_node(&node, Some(&second), &testing::csr())
            .unwrap()
            .serial_hex();
        assert!(ca.authorize_node_svid(&node, Some(&third)).is_err());
        assert_eq!(
            ca.honoured_serials(&node).unwrap(),
            vec![fourth.clone(), second]
        );
        // A new attestation retires every earlier SVID.
        testing::attest(&ca, "n1");
        assert!(ca.authorize_node_svid(&node, Some(&fourth)).is_err());
        assert_eq!(
            ca.honoured_serials(&node).unwrap(),
            vec![current_serial(&ca)]
        );
    }

    #[test]
    fn evict_ban_and_unban_are_announced_and_recorded_durably() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let ca = testing::open(dir.path(), &clock, Settings::default());
        let node = testing::attest(&ca, "n1");
        let mut events = ca.node_events();

        testing::break_audit_log(&ca);
        assert!(matches!(
            ca.evict_node("n1", true, "admin"),
            Err(CaError::Unavailable(_))
        ));
        testing::repair_audit_log(&ca);
        assert!(
            !ca.honoured_serials(&node).unwrap().is_empty(),
            "nothing changed without its record"
        );
        assert!(events.try_recv().is_err());

        let outcome = ca.evict_node(node.as_str(), true, "admin").unwrap();
        assert_eq!(
            outcome,
            Eviction {
                was_attested: true,
                newly_banned: true
            }
        );
        assert_eq!(events.try_recv().unwrap(), node);
        assert!(ca.honoured_serials(&node).unwrap().is_empty());
        let last = testing::audit(&ca).pop().unwrap();
        assert_eq!(
            (last.action.as_str(), last.result.as_str()),
            ("ban_node", "ok")
        );

        let token = ca.create_join_token("n1", None, "admin").unwrap();
        assert!(matches!(
            ca.attest_node(&token.token, &testing::csr(), "127.0.0.1:1"),
            Err(CaError::PermissionDenied(_))
        ));
        assert!(matches!(
            ca.evict_node("n1", false, "admin"),
            Err(CaError::NotFound(_))
        ));
        ca.unban_node("n1", "admin").unwrap();
        let last = testing::audit(&ca).pop().unwrap();
        assert_eq!(last.action, "unban_node");
        assert!(matches!(
            ca.unban_node("n1", "admin"),
            Err(CaError::NotFound(_))
        ));
        // The refused token was not used up.
        ca.attest_node(&token.token, &testing::csr(), "127.0.0.1:1")
            .unwrap();
    }
}
