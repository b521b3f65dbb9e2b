//! Authorities across replicas. Each replica signs with its own
//! authorities and moves them through the rotation states itself; no
//! private key leaves the replica that made it. Two things need more than
//! one replica's view:
//!
//! - A replica that is gone (no heartbeat for `replica_expiry`) leaves its
//!   authorities behind. One replica at a time (an advisory lock) retires
//!   them: they stay in the bundle until everything they signed can have
//!   expired, then leave it, as a rotation's retired authorities do.
//! - A replica still running whose active authority was retired that way
//!   (it was cut off from the store for longer than the expiry), or was
//!   tainted through another replica, makes a new one, published before it
//!   signs, as on a first start.
//!
//! Only a replica that has itself reached the store for a whole expiry
//! judges another gone: after an outage every replica's heartbeat is
//! stale, and none is gone for it.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::authorities::SELF;
use super::rotation::secs;
use super::time::unix;
use super::{Ca, CaError};
use crate::store::{AuthorityKind, AuthorityRow, AuthorityState, OnceWork};

impl Ca {
    /// Refuses a change to `row` that only its own replica can make (it
    /// holds the key and signs with it).
    pub(super) fn must_own(&self, row: &AuthorityRow, verb: &str) -> Result<(), CaError> {
        if self.keys.owns(row) {
            return Ok(());
        }
        let Some(owner) = row.replica_id.as_deref() else {
            return Err(CaError::FailedPrecondition(format!(
                "authority {} belongs to no replica yet (its key is in another data directory); start the CA that holds it",
                row.id
            )));
        };
        let address = self
            .store
            .replicas()?
            .into_iter()
            .find(|r| r.id == owner)
            .map(|r| format!(" at {}", r.address))
            .unwrap_or_default();
        Err(CaError::FailedPrecondition(format!(
            "authority {} is replica {owner}'s{address}; it can only be {verb} through that replica",
            row.id
        )))
    }

    /// Records whether this replica's last heartbeat reached the store.
    pub fn store_reachable(&self, reached: bool) {
        let now = unix(self.now());
        if reached {
            let _ =
                self.store_up_since
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        } else {
            self.store_up_since.store(0, Ordering::Relaxed);
        }
    }

    /// When this replica lost its active authority of a kind (another
    /// replica took it for gone and retired it), makes new ones and
    /// publishes them before they sign. Callers hold the writer lock.
    pub(super) fn heal_own(&self, now: SystemTime) -> Result<bool, CaError> {
        let own = self.keys.own()?;
        let has = |kind| {
            own.iter()
                .any(|r| r.kind == kind && r.state == AuthorityState::Active)
        };
        let mut needed = vec![AuthorityKind::Intermediate, AuthorityKind::Jwt];
        if self.config.upstream_ca.is_none() {
            needed.push(AuthorityKind::Root);
        }
        let missing: Vec<&str> = needed
            .into_iter()
            .filter(|k| !has(*k))
            .map(AuthorityKind::as_str)
            .collect();
        if missing.is_empty() {
            return Ok(false);
        }
        tracing::warn!(
            replica = %self.replica_id,
            missing = %missing.join(", "),
            "this replica has no active authority of these kinds (another replica took it for gone while it could not reach the store); making new ones"
        );
        match &self.upstream {
            Some(up) => {
                let up = up.read().unwrap_or_else(std::sync::PoisonError::into_inner);
                self.keys
                    .bootstrap(now, Some((up.parent.as_ref(), &up.anchor)))?;
            }
            None => self.keys.bootstrap(now, None)?,
        }
        self.publish(SELF)?;
        self.reload_signing()?;
        Ok(true)
    }

    /// Retires the authorities of replicas that are gone, and prunes them
    /// when their time comes. One replica at a time. Callers hold the
    /// writer lock.
    pub(super) fn retire_orphans(&self, now: SystemTime) -> Result<bool, CaError> {
        let t = unix(now);
        let expiry = secs(self.config.rotation.replica_expiry);
        let since = self.store_up_since.load(Ordering::Relaxed);
        if since == 0 || t.saturating_sub(since) < expiry {
            return Ok(false);
        }
        let Some(_once) = self.store.try_once(OnceWork::OrphanAuthorities)? else {
            return Ok(false);
        };
        let replicas = self.store.replicas()?;
        let stale = t.saturating_sub(expiry);
        let gone = |row: &AuthorityRow| {
            let Some(owner) = row.replica_id.as_deref() else {
                return false;
            };
            owner != self.replica_id
                && match replicas.iter().find(|r| r.id == owner) {
                    Some(r) => r.heartbeat_at < stale,
                    // Not registered (yet, or its row was cleaned away):
                    // judged by the authority's age.
                    None => row.created_at < stale,
                }
        };
        let mut owners: Vec<&str> = Vec::new();
        let mut changes: Vec<(AuthorityRow, &'static str)> = Vec::new();
        let rows = self.store.authorities(None)?;
        for row in rows.iter().filter(|r| gone(r)) {
            let change = match row.state {
                AuthorityState::Active => Some((
                    AuthorityRow {
                        state: AuthorityState::Retired,
                        retired_at: Some(t),
                        ..row.clone()
                    },
                    "authority_retire",
                )),
                // Nothing was signed by a prepared one.
                AuthorityState::Prepared => Some((
                    AuthorityRow {
                        state: AuthorityState::Pruned,
                        ..row.clone()
                    },
                    "authority_prune",
                )),
                AuthorityState::Retired if t >= self.prune_point(row) => Some((
                    AuthorityRow {
                        state: AuthorityState::Pruned,
                        ..row.clone()
                    },
                    "authority_prune",
                )),
                AuthorityState::Tainted if row.not_after <= t => Some((
                    AuthorityRow {
                        state: AuthorityState::Pruned,
                        ..row.clone()
                    },
                    "authority_prune",
                )),
                _ => None,
            };
            if let Some(change) = change {
                if let Some(owner) = row.replica_id.as_deref()
                    && !owners.contains(&owner)
                {
                    owners.push(owner);
                }
                changes.push(change);
            }
        }
        if changes.is_empty() {
            return Ok(false);
        }
        tracing::warn!(
            replicas = %owners.join(", "),
            changes = changes.len(),
            expiry = %humantime::format_duration(self.config.rotation.replica_expiry),
            "retiring the authorities of replicas silent past replica_expiry"
        );
        self.commit(&changes, SELF)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use signet_identity::SpiffeId;
    use signet_identity::x509::{VerifiedCsr, verify_x509_svid};

    use super::*;
    use crate::ca::authorities::cert_id;
    use crate::ca::testing::{self, TestClock, short};

    const HOUR: Duration = Duration::from_secs(3600);

    fn own_active(ca: &Ca, kind: AuthorityKind) -> AuthorityRow {
        ca.keys()
            .own()
            .unwrap()
            .into_iter()
            .find(|r| r.kind == kind && r.state == AuthorityState::Active)
            .unwrap_or_else(|| {
                panic!(
                    "replica {} has no active {kind:?}: {:?}",
                    ca.replica_id(),
                    ca.store()
                        .authorities(None)
                        .unwrap()
                        .iter()
                        .map(|r| (&r.id, r.kind, r.state, &r.replica_id))
                        .collect::<Vec<_>>()
                )
            })
    }

    fn row(ca: &Ca, id: &str) -> AuthorityRow {
        ca.store()
            .authorities(None)
            .unwrap()
            .into_iter()
            .find(|r| r.id == id)
            .unwrap()
    }

    fn roots_in(ca: &Ca) -> Vec<String> {
        ca.bundle()
            .x509_authorities()
            .iter()
            .map(|c| cert_id(c))
            .collect()
    }

    fn sign(ca: &Ca) -> signet_identity::x509::IssuedCert {
        sign_for(ca, HOUR)
    }

    fn sign_for(ca: &Ca, ttl: Duration) -> signet_identity::x509::IssuedCert {
        let csr = VerifiedCsr::from_der(&testing::csr()).unwrap();
        let id = SpiffeId::parse("spiffe://test.org/w").unwrap();
        ca.sign(&csr, &id, &[], ttl).unwrap()
    }

    /// The root an SVID chains to: its intermediate's parent.
    fn root_of(ca: &Ca, svid: &signet_identity::x509::IssuedCert) -> String {
        let intermediate = cert_id(svid.chain.last().unwrap());
        row(ca, &intermediate).parent_id.unwrap()
    }

    fn key_files(dir: &std::path::Path) -> Vec<String> {
        std::fs::read_dir(dir.join("keys"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn each_replica_signs_with_its_own_keys_and_the_bundle_is_their_union() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let clock = TestClock::new();
        let a = testing::open(da.path(), &clock, short());
        let b = testing::open_replica(da.path(), db.path(), &clock, short());
        assert_ne!(a.replica_id(), b.replica_id());
        for kind in [
            AuthorityKind::Root,
            AuthorityKind::Intermediate,
            AuthorityKind::Jwt,
        ] {
            let (ra, rb) = (own_active(&a, kind), own_active(&b, kind));
            assert_ne!(ra.id, rb.id, "{kind:?} is shared");
            assert_eq!(ra.replica_id.as_deref(), Some(a.replica_id()));
            assert_eq!(rb.replica_id.as_deref(), Some(b.replica_id()));
        }
        // No private key is in both data directories.
        let (ka, kb) = (key_files(da.path()), key_files(db.path()));
        assert_eq!(ka.len(), 3);
        assert_eq!(kb.len(), 3);
        assert!(ka.iter().all(|k| !kb.contains(k)), "{ka:?} {kb:?}");
        // A follows B's new root (LISTEN/NOTIFY on PostgreSQL calls this).
        a.follow_bundle().unwrap();
        let (root_a, root_b) = (
            own_active(&a, AuthorityKind::Root).id,
            own_active(&b, AuthorityKind::Root).id,
        );
        for ca in [&a, &b] {
            let roots = roots_in(ca);
            assert!(
                roots.contains(&root_a) && roots.contains(&root_b),
                "{roots:?}"
            );
            assert_eq!(ca.bundle().jwt_authorities().len(), 2);
        }
        // Each signs under its own root, and each SVID validates against
        // the other replica's bundle.
        let (from_a, from_b) = (sign(&a), sign(&b));
        assert_eq!(root_of(&a, &from_a), root_a);
        assert_ne!(a.signing().signer_id, b.signing().signer_id);
        verify_x509_svid(&from_a.chain, &b.bundle(), clock.now()).unwrap();
        verify_x509_svid(&from_b.chain, &a.bundle(), clock.now()).unwrap();
        // A reopened replica finds its own authorities again.
        drop(a);
        let a = testing::open(da.path(), &clock, short());
        assert_eq!(own_active(&a, AuthorityKind::Root).id, root_a);
    }

    #[test]
    fn another_replicas_authority_is_activated_only_by_it_and_tainted_from_anywhere() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let clock = TestClock::new();
        let a = testing::open(da.path(), &clock, short());
        let b = testing::open_replica(da.path(), db.path(), &clock, short());
        b.register_replica("127.0.0.1:4001").unwrap();
        let (next, _) = b
            .prepare_authority(Some(AuthorityKind::Intermediate), "admin")
            .unwrap();
        let err = a
            .activate_authority(&next.row.id, true, "admin")
            .unwrap_err();
        assert!(
            matches!(&err, CaError::FailedPrecondition(m) if m.contains(b.replica_id()) && m.contains("127.0.0.1:4001")),
            "{err:?}"
        );
        assert_eq!(row(&a, &next.row.id).state, AuthorityState::Prepared);

        // B's active root tainted through A (B may be compromised): B
        // replaces it, and its intermediate, as soon as it follows the
        // bundle, and signs under the new root from then on.
        let theirs = own_active(&b, AuthorityKind::Root).id;
        let ours = own_active(&a, AuthorityKind::Root).id;
        a.taint_authority(&theirs, "admin").unwrap();
        assert_eq!(row(&a, &theirs).state, AuthorityState::Tainted);
        assert_eq!(own_active(&a, AuthorityKind::Root).id, ours);
        b.follow_bundle().unwrap();
        let fresh = own_active(&b, AuthorityKind::Root);
        assert_ne!(fresh.id, theirs);
        assert!(fresh.published_sequence.is_some());
        let svid = sign(&b);
        assert_eq!(root_of(&b, &svid), fresh.id);
        verify_x509_svid(&svid.chain, &b.bundle(), clock.now()).unwrap();
        // And it can be revoked (out of every bundle) through A too.
        a.revoke_authority(&theirs, true, "admin").unwrap();
        b.follow_bundle().unwrap();
        assert!(!roots_in(&b).contains(&theirs));
        assert!(!roots_in(&a).contains(&theirs));
    }

    #[test]
    fn a_gone_replicas_authorities_are_retired_kept_until_their_svids_expire_then_pruned() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let clock = TestClock::new();
        let a = testing::open(da.path(), &clock, short());
        let b = testing::open_replica(da.path(), db.path(), &clock, short());
        a.register_replica("a").unwrap();
        b.register_replica("b").unwrap();
        let svid_b = sign_for(&b, 4 * HOUR);
        let root_b = own_active(&b, AuthorityKind::Root).id;
        let inter_b = own_active(&b, AuthorityKind::Intermediate).id;
        a.follow_bundle().unwrap();

        // Silent, but not yet for the whole expiry: nothing happens.
        clock.advance(HOUR - Duration::from_secs(60));
        a.register_replica("a").unwrap();
        a.rotate_if_due().unwrap();
        assert_eq!(row(&a, &root_b).state, AuthorityState::Active);

        // Gone: retired, still published, its SVIDs still valid.
        clock.advance(Duration::from_secs(120));
        a.register_replica("a").unwrap();
        a.rotate_if_due().unwrap();
        for id in [&root_b, &inter_b] {
            assert_eq!(row(&a, id).state, AuthorityState::Retired, "{id}");
        }
        assert!(roots_in(&a).contains(&root_b));
        verify_x509_svid(&svid_b.chain, &a.bundle(), clock.now()).unwrap();
        // A's own authorities are untouched and it still signs.
        assert_eq!(
            own_active(&a, AuthorityKind::Root).state,
            AuthorityState::Active
        );
        sign(&a);

        // Once what it signed has expired (4 h SVIDs + 1 h grace), pruned.
        clock.advance(5 * HOUR + Duration::from_secs(60));
        a.register_replica("a").unwrap();
        a.rotate_if_due().unwrap();
        assert_eq!(row(&a, &root_b).state, AuthorityState::Pruned);
        assert!(!roots_in(&a).contains(&root_b));
        assert!(
            testing::audit(&a)
                .iter()
                .any(|r| r.action == "authority_retire" && r.serial == root_b)
        );
    }

    #[test]
    fn a_replica_cut_off_past_the_expiry_makes_new_authorities_when_it_returns() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let clock = TestClock::new();
        let a = testing::open(da.path(), &clock, short());
        let b = testing::open_replica(da.path(), db.path(), &clock, short());
        b.register_replica("b").unwrap();
        let old_root = own_active(&b, AuthorityKind::Root).id;
        clock.advance(2 * HOUR);
        a.register_replica("a").unwrap();
        a.rotate_if_due().unwrap();
        assert_eq!(row(&a, &old_root).state, AuthorityState::Retired);
        // B comes back: its store was unreachable, so it judges nobody
        // gone, and it replaces what it lost before signing again.
        b.store_reachable(false);
        b.store_reachable(true);
        b.register_replica("b").unwrap();
        assert!(b.rotate_if_due().unwrap());
        let new_root = own_active(&b, AuthorityKind::Root);
        assert_ne!(new_root.id, old_root);
        assert!(new_root.published_sequence.is_some());
        assert!(roots_in(&b).contains(&new_root.id));
        let svid = sign(&b);
        assert_eq!(root_of(&b, &svid), new_root.id);
        // A's authorities were not touched by B.
        assert_eq!(
            own_active(&a, AuthorityKind::Root).state,
            AuthorityState::Active
        );
    }

    #[test]
    fn rows_without_an_owner_are_adopted_by_the_replica_holding_their_keys() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let clock = TestClock::new();
        let a = testing::open(da.path(), &clock, short());
        let root = own_active(&a, AuthorityKind::Root).id;
        // As rows from before replicas owned authorities (or a migrated store).
        a.store()
            .with_conn(|c| c.execute("UPDATE authorities SET replica_id = NULL", &[]))
            .unwrap();
        drop(a);
        // A replica without their keys does not take them...
        let b = testing::open_replica(da.path(), db.path(), &clock, short());
        assert!(row(&b, &root).replica_id.is_none());
        assert_ne!(own_active(&b, AuthorityKind::Root).id, root);
        // ...the one with them does, and signs with them again.
        let a = testing::open(da.path(), &clock, short());
        assert_eq!(own_active(&a, AuthorityKind::Root).id, root);
        let svid = sign(&a);
        assert_eq!(root_of(&a, &svid), root, "the adopted root signs");
    }
}
