//! Nodes: attestation with a join token, SVID renewal, the check that a
//! caller is an attested node, and what nodes report.

use signet_identity::x509::IssuedCert;
use signet_identity::{SpiffeId, reserved};

use super::issue::{issued_record, parse_csr};
use super::time::unix;
use super::{Ca, CaError};
use crate::k8s::derived::EntryView;
use crate::store::{self, NodeEvent, NodeRow, TokenState};

/// The stored form of a join token: its SHA-256, hex.
pub fn token_hash(token: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

impl Ca {
    /// The SPIFFE ID of a node.
    ///
    /// # Errors
    /// [`CaError::InvalidArgument`] when `name` is not a valid path segment.
    pub fn node_id(&self, name: &str) -> Result<SpiffeId, CaError> {
        reserved::node_id(&self.config.trust_domain, name)
            .map_err(|e| CaError::InvalidArgument(format!("invalid node name {name:?}: {e}")))
    }

    /// The node name in a node SPIFFE ID, when it is one of ours.
    pub fn node_name<'a>(&self, id: &'a SpiffeId) -> Option<&'a str> {
        reserved::node_name(id, &self.config.trust_domain)
    }

    /// Exchanges a join token and a CSR for a node SVID. The token is
    /// consumed only if the SVID is issued and its record committed with it.
    ///
    /// # Errors
    /// Unauthenticated without a token; InvalidArgument for a bad CSR;
    /// PermissionDenied for an unknown, used or expired token; Unavailable
    /// when the audit log cannot be written.
    pub fn attest_node(
        &self,
        token: &str,
        csr: &[u8],
        caller: &str,
    ) -> Result<(SpiffeId, IssuedCert), CaError> {
        self.refusing(caller, "attest_node", "", || {
            if token.is_empty() {
                return Err(CaError::Unauthenticated("a join token is required".into()));
            }
            let csr = parse_csr(csr)?;
            let hash = token_hash(token);
            let now = unix(self.now());
            let attested = self.store.transaction(|tx| {
                let name = match store::claim_token(tx, &hash, now)? {
                    TokenState::Valid(name) => name,
                    TokenState::Unknown => {
                        return Err(CaError::PermissionDenied("join token is not valid".into()));
                    }
                    TokenState::Used => {
                        return Err(CaError::PermissionDenied(
                            "join token has already been used".into(),
                        ));
                    }
                    TokenState::Expired => {
                        return Err(CaError::PermissionDenied("join token has expired".into()));
                    }
                };
                self.check_not_banned(tx, &name)?;
                let id = self.node_id(&name)?;
                let cert = self.sign(&csr, &id, &[], self.config.node_svid_ttl)?;
                store::upsert_node(
                    tx,
                    id.as_str(),
                    &name,
                    now,
                    &cert.serial_hex(),
                    unix(cert.not_after),
                    NodeEvent::Attested,
                )?;
                // A new attestation retires every earlier SVID of the node.
                store::nodes_ban::set_previous_serial(tx, id.as_str(), "")?;
                self.auditor
                    .durable_in(tx, &issued_record(caller, "attest_node", &id, &cert, now))?;
                tracing::info!(node = %id, serial = %cert.serial_hex(), "node attested");
                Ok((id, cert))
            })?;
            self.announce_node_change(&attested.0);
            Ok(attested)
        })
    }

    /// Issues a node SVID to a Kubernetes node whose agent's projected token was
    /// checked by [`crate::k8s::PsatAttestor`] (`checked` is its verdict: the node name
    /// `<cluster>/<node-uid>`, or why not). Refusals are audited here, in one place.
    ///
    /// # Errors
    /// The refusal in `checked`; InvalidArgument for a bad CSR; PermissionDenied for a
    /// banned node; Unavailable when the audit log cannot be written.
    pub fn attest_k8s_node(
        &self,
        checked: Result<String, CaError>,
        csr: &[u8],
        caller: &str,
    ) -> Result<(SpiffeId, IssuedCert), CaError> {
        self.refusing(caller, "attest_node_k8s_psat", "", || {
            let name = checked?;
            let csr = parse_csr(csr)?;
            let now = unix(self.now());
            let attested = self.store.transaction(|tx| {
                self.check_not_banned(tx, &name)?;
                let id = self.node_id(&name)?;
                let cert = self.sign(&csr, &id, &[], self.config.node_svid_ttl)?;
                store::upsert_node(
                    tx,
                    id.as_str(),
                    &name,
                    now,
                    &cert.serial_hex(),
                    unix(cert.not_after),
                    NodeEvent::Attested,
                )?;
                // A new attestation retires every earlier SVID of the node.
                store::nodes_ban::set_previous_serial(tx, id.as_str(), "")?;
                self.auditor.durable_in(
                    tx,
                    &issued_record(caller, "attest_node_k8s_psat", &id, &cert, now),
                )?;
                tracing::info!(node = %id, serial = %cert.serial_hex(), "kubernetes node attested (k8s_psat)");
                Ok::<_, CaError>((id, cert))
            })?;
            self.announce_node_change(&attested.0);
            Ok(attested)
        })
    }

    /// Checks that `node` is an attested node of this trust domain.
    ///
    /// # Errors
    /// PermissionDenied otherwise.
    pub fn authorize_node(&self, node: &SpiffeId) -> Result<(), CaError> {
        if self.node_name(node).is_none() {
            return Err(CaError::PermissionDenied(format!(
                "{node} is not a node identity"
            )));
        }
        if !self
            .store
            .with_conn(|c| store::node_exists(c, node.as_str()))?
        {
            return Err(CaError::PermissionDenied(format!(
                "node {node} is not attested"
            )));
        }
        Ok(())
    }

    /// Issues a fresh node SVID to an authenticated node presenting its
    /// current node SVID (serial `presented`); see [`super::revocation`].
    ///
    /// # Errors
    /// InvalidArgument for a bad CSR; PermissionDenied for an unknown node
    /// or a superseded SVID; Unavailable when the audit log cannot be
    /// written.
    pub fn renew_node(
        &self,
        node: &SpiffeId,
        presented: Option<&str>,
        csr: &[u8],
    ) -> Result<IssuedCert, CaError> {
        self.refusing(node.as_str(), "renew_node", node.as_str(), || {
            self.authorize_node(node)?;
            let csr = parse_csr(csr)?;
            let now = unix(self.now());
            let name = self.node_name(node).unwrap_or_default().to_owned();
            let cert = self.store.transaction(|tx| {
                let previous = self.check_renewal(tx, node, presented)?;
                let cert = self.sign(&csr, node, &[], self.config.node_svid_ttl)?;
                store::upsert_node(
                    tx,
                    node.as_str(),
                    &name,
                    now,
                    &cert.serial_hex(),
                    unix(cert.not_after),
                    NodeEvent::Renewed,
                )?;
                store::nodes_ban::set_previous_serial(tx, node.as_str(), &previous)?;
                self.auditor.durable_in(
                    tx,
                    &issued_record(node.as_str(), "renew_node", node, &cert, now),
                )?;
                Ok::<_, CaError>(cert)
            })?;
            self.announce_node_change(node);
            Ok(cert)
        })
    }

    /// The entries `node` may obtain SVIDs for, and the revision they reflect.
    ///
    /// # Errors
    /// PermissionDenied for an unknown node.
    pub fn authorized_entries(&self, node: &SpiffeId) -> Result<(Vec<EntryView>, u64), CaError> {
        self.authorize_node(node)?;
        let revision = *self.entries.borrow();
        // Derived entries name the node the pod watch says their pod runs on.
        Ok((self.list_any_entries(Some(node.as_str()))?, revision))
    }

    /// Records what an agent reports it serves.
    ///
    /// # Errors
    /// Store errors.
    pub fn report_status(
        &self,
        node: &SpiffeId,
        bundle_sequence: u64,
        svid_count: u32,
        chains_through: &[String],
    ) -> Result<(), CaError> {
        if chains_through.len() > MAX_CHAINS_THROUGH
            || chains_through
                .iter()
                .any(|id| id.len() > MAX_AUTHORITY_ID_LEN)
        {
            return Err(CaError::InvalidArgument(format!(
                "chains_through holds at most {MAX_CHAINS_THROUGH} authority ids of at most {MAX_AUTHORITY_ID_LEN} bytes"
            )));
        }
        let now = unix(self.now());
        self.store.report_status(
            node.as_str(),
            bundle_sequence,
            svid_count,
            chains_through,
            now,
        )?;
        Ok(())
    }

    /// Every attested node with what it last reported.
    ///
    /// # Errors
    /// Store errors.
    pub fn nodes(&self) -> Result<Vec<NodeRow>, CaError> {
        Ok(self.store.nodes()?)
    }
}

/// Most authority ids one status report may list, and their longest form
/// (ids are 16 hex digits; the margin is for future forms).
const MAX_CHAINS_THROUGH: usize = 64;
const MAX_AUTHORITY_ID_LEN: usize = 64;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ca::testing::{self, TestClock};
    use crate::config::Settings;

    /// PostgreSQL stops: attestation fails with UNAVAILABLE, consumes
    /// nothing and records no issuance; once it is back the CA reconnects
    /// by itself and the same token works.
    #[test]
    fn while_the_database_is_down_nothing_is_issued_and_callers_get_unavailable() {
        let mut db = signet_test_postgres::Database::on_private_server();
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let settings = Settings {
            store: Some(
                db.url()
                    .parse()
                    .unwrap_or_else(|e: std::convert::Infallible| match e {}),
            ),
            ..Settings::default()
        };
        let ca = testing::open(dir.path(), &clock, settings);
        testing::attest(&ca, "n1");
        let token = ca.create_join_token("n2", None, "test").unwrap();

        db.server_mut().unwrap().stop();
        for _ in 0..3 {
            let err = ca
                .attest_node(&token.token, &testing::csr(), "127.0.0.1:1")
                .unwrap_err();
            assert!(
                matches!(&err, CaError::Unavailable(m) if m.contains("the CA's database is unreachable")),
                "{err:?}"
            );
        }

        db.server_mut().unwrap().start_again();
        let mut attempts = 0;
        let (node, _) = loop {
            match ca.attest_node(&token.token, &testing::csr(), "127.0.0.1:1") {
                Ok(done) => break done,
                Err(CaError::Unavailable(_)) if attempts < 200 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("{e:?}"),
            }
        };
        assert_eq!(node.as_str(), "spiffe://test.org/signet/node/n2");
        let issued: Vec<_> = testing::audit(&ca)
            .into_iter()
            .filter(|r| {
                r.action == "attest_node" && r.result == "issued" && r.spiffe_id == node.as_str()
            })
            .collect();
        assert_eq!(issued.len(), 1, "{issued:?}");
    }

    #[test]
    fn renewal_keeps_the_attestation_time_and_a_new_attestation_moves_it() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let ca = testing::open(dir.path(), &clock, Settings::default());
        let attested_at = unix(clock.now());
        let node = testing::attest(&ca, "n1");

        clock.advance(Duration::from_secs(600));
        let current = ca.nodes().unwrap().pop().unwrap().last_serial;
        let cert = ca
            .renew_node(&node, Some(&current), &testing::csr())
            .unwrap();
        let row = ca.nodes().unwrap().pop().unwrap();
        assert_eq!(row.attested_at, attested_at, "renewal is not attestation");
        assert_eq!(row.last_serial, cert.serial_hex());

        clock.advance(Duration::from_secs(600));
        let again = testing::attest(&ca, "n1");
        assert_eq!(again, node);
        let row = ca.nodes().unwrap().pop().unwrap();
        assert_eq!(row.attested_at, unix(clock.now()));
    }

    #[test]
    fn status_reports_are_bounded_and_a_refused_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let ca = testing::open(dir.path(), &clock, Settings::default());
        let node = testing::attest(&ca, "n1");
        ca.report_status(&node, 3, 1, &["a".repeat(16)]).unwrap();
        for bad in [
            vec!["x".to_owned(); MAX_CHAINS_THROUGH + 1],
            vec!["x".repeat(MAX_AUTHORITY_ID_LEN + 1)],
        ] {
            let e = ca.report_status(&node, 9, 9, &bad).unwrap_err();
            assert!(matches!(e, CaError::InvalidArgument(_)), "{e:?}");
        }
        let row = ca.nodes().unwrap().pop().unwrap();
        assert_eq!((row.bundle_sequence, row.svid_count), (3, 1));
        assert_eq!(row.chains_through, ["a".repeat(16)]);
    }
}
