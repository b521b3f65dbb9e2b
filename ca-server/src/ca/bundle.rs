//! The trust bundle and its publication. What the node API's `Bundle`
//! carries (roots, JWT keys, tainted authorities, CRLs) is derived from the
//! authority rows; its sequence is bumped whenever that content changes.
//! Publishing assigns `published_sequence` to every authority that enters
//! the bundle, in the transaction that bumps the sequence, and only then is
//! the new bundle sent to agents and written to DATA_DIR/bundle.pem (the
//! SPIFFE bundle: roots and JWT keys only).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use signet_identity::{JwtAuthority, TrustBundle};

use super::authorities::cert_id;
use super::time::unix;
use super::{Ca, CaError};
use crate::config::Config;
use crate::store::{self, AuditRecord, AuthorityKind, AuthorityRow, AuthorityState};

/// A tainted authority as agents are told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tainted {
    pub id: String,
    pub kind: AuthorityKind,
    /// DER certificate, or DER SubjectPublicKeyInfo for a JWT key.
    pub material: Vec<u8>,
    pub tainted_at: i64,
    pub reissue_window: Duration,
}

/// What the node API's `Bundle` carries.
#[derive(Debug, Clone)]
pub struct NodeBundle {
    /// The SPIFFE bundle (roots and JWT keys) with the sequence.
    pub bundle: Arc<TrustBundle>,
    /// Authorities whose SVIDs agents replace early.
    pub tainted: Vec<Tainted>,
    /// DER CRLs (empty unless an intermediate is revoked).
    pub crls: Vec<Vec<u8>>,
    /// DER certificates of the revoked intermediates the CRLs list: the
    /// CA refuses node SVIDs that chain through them.
    pub revoked: Vec<Vec<u8>>,
}

impl NodeBundle {
    /// Whether `id` (a root or JWT key id) is in this bundle.
    pub fn carries(&self, id: &str) -> bool {
        self.bundle
            .x509_authorities()
            .iter()
            .any(|c| cert_id(c) == id)
            || self.bundle.jwt_authority(id).is_some()
    }
}

/// The content of the bundle as the rows define it at `now`.
pub(super) struct Content {
    pub roots: Vec<CertificateDer<'static>>,
    pub jwt: Vec<AuthorityRow>,
    pub tainted: Vec<AuthorityRow>,
    /// Revoked intermediates whose root is still published: what the CRLs list.
    pub revoked: Vec<AuthorityRow>,
    /// While `revoked` is not empty: the unexpired, unrevoked intermediates,
    /// each of which needs its own (empty) CRL in the bundle before an SVID
    /// it signs passes a full-chain CRL check.
    pub live_intermediates: Vec<AuthorityRow>,
}

impl Content {
    /// Reads the content from the rows. `upstream_roots` replaces the
    /// stored roots in upstream-CA mode.
    pub(super) fn of(
        rows: &[AuthorityRow],
        upstream_roots: Option<&[CertificateDer<'static>]>,
        now: SystemTime,
    ) -> Self {
        let now = unix(now);
        let live = |r: &&AuthorityRow| r.state.is_published_state() && r.not_after > now;
        let roots: Vec<CertificateDer<'static>> = match upstream_roots {
            Some(roots) => roots.to_vec(),
            None => rows
                .iter()
                .filter(|r| r.kind == AuthorityKind::Root)
                .filter(live)
                .map(|r| CertificateDer::from(r.cert_der.clone()))
                .collect(),
        };
        let root_ids: Vec<String> = roots.iter().map(|c| cert_id(c)).collect();
        let revoked: Vec<AuthorityRow> = rows
            .iter()
            .filter(|r| {
                r.kind == AuthorityKind::Intermediate
                    && r.state == AuthorityState::Revoked
                    && r.parent_id.as_ref().is_some_and(|p| root_ids.contains(p))
            })
            .cloned()
            .collect();
        let live_intermediates = if revoked.is_empty() {
            Vec::new()
        } else {
            rows.iter()
                .filter(|r| {
                    r.kind == AuthorityKind::Intermediate
                        && !matches!(r.state, AuthorityState::Revoked | AuthorityState::Pruned)
                        && r.not_after > now
                })
                .cloned()
                .collect()
        };
        Self {
            jwt: rows
                .iter()
                .filter(|r| r.kind == AuthorityKind::Jwt)
                .filter(live)
                .cloned()
                .collect(),
            tainted: rows
                .iter()
                .filter(|r| r.state == AuthorityState::Tainted && r.not_after > now)
                .cloned()
                .collect(),
            revoked,
            live_intermediates,
            roots,
        }
    }

    /// A canonical description of the content: the sequence moves exactly
    /// when it changes. (Roots and JWT keys are listed as before the
    /// lifecycle existed, so that an upgrade does not bump the sequence.)
    fn fingerprint(&self) -> String {
        let mut ids: Vec<String> = self.roots.iter().map(|a| cert_id(a)).collect();
        ids.extend(self.jwt.iter().map(|j| format!("jwt:{}", j.id)));
        ids.extend(self.tainted.iter().map(|t| format!("tainted:{}", t.id)));
        ids.extend(self.revoked.iter().map(|r| format!("revoked:{}", r.id)));
        ids.extend(
            self.live_intermediates
                .iter()
                .map(|r| format!("crl:{}", r.id)),
        );
        ids.sort();
        ids.join(",")
    }

    /// The SPIFFE bundle with `sequence`.
    pub(super) fn trust_bundle(
        &self,
        config: &Config,
        sequence: u64,
    ) -> Result<TrustBundle, CaError> {
        let mut bundle = TrustBundle::new(config.trust_domain.clone())
            .with_x509_authorities(self.roots.clone())?;
        for j in &self.jwt {
            bundle.add_jwt_authority(
                JwtAuthority::new(j.id.clone(), &j.cert_der)?.with_expires_at(j.not_after),
            )?;
        }
        bundle.set_sequence(sequence);
        Ok(bundle)
    }

    pub(super) fn tainted_list(&self, config: &Config) -> Vec<Tainted> {
        self.tainted
            .iter()
            .map(|r| Tainted {
                id: r.id.clone(),
                kind: r.kind,
                material: r.cert_der.clone(),
                tainted_at: r.tainted_at.unwrap_or(r.created_at),
                reissue_window: config.rotation.taint_reissue_window,
            })
            .collect()
    }
}

/// Inside a transaction: bumps the sequence when the content changed and
/// marks every authority that the bundle now carries (and every
/// intermediate) as published. Returns the sequence and the rows after.
pub(super) fn publish_in(
    ca: &Ca,
    tx: &store::Tx<'_>,
    caller: &str,
    now: SystemTime,
) -> Result<(u64, Vec<AuthorityRow>), CaError> {
    let mut rows = store::authorities::list(tx, None)?;
    let upstream = ca.upstream_roots();
    let content = Content::of(&rows, upstream.as_deref(), now);
    let fingerprint = content.fingerprint();
    let mut sequence: u64 = store::meta_get(tx, "bundle_sequence")?
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if store::meta_get(tx, "bundle_anchors")?.as_deref() != Some(fingerprint.as_str()) {
        sequence += 1;
        store::meta_set(tx, "bundle_anchors", &fingerprint)?;
        store::meta_set(tx, "bundle_sequence", &sequence.to_string())?;
        store::notify(tx, store::ChangeKind::Bundle, sequence)?;
    }
    let carried: Vec<String> = content
        .roots
        .iter()
        .map(|c| cert_id(c))
        .chain(content.jwt.iter().map(|j| j.id.clone()))
        .collect();
    for row in &mut rows {
        let enters = match row.kind {
            AuthorityKind::Root | AuthorityKind::Jwt => carried.contains(&row.id),
            AuthorityKind::Intermediate => {
                matches!(row.state, AuthorityState::Prepared | AuthorityState::Active)
            }
            AuthorityKind::Upstream => false,
        };
        if !enters || row.published_sequence.is_some() {
            continue;
        }
        row.published_sequence = Some(sequence);
        row.published_at = Some(unix(now));
        store::authorities::update(tx, row)?;
        ca.auditor.durable_in(
            tx,
            &AuditRecord {
                at: unix(now),
                caller: caller.into(),
                action: "authority_publish".into(),
                serial: row.id.clone(),
                not_after: row.not_after,
                result: "ok".into(),
                detail: format!(
                    "{} {} in bundle sequence {sequence}",
                    row.kind.as_str(),
                    row.id
                ),
                ..AuditRecord::default()
            },
        )?;
        tracing::info!(kind = row.kind.as_str(), id = %row.id, sequence, "published an authority");
    }
    Ok((sequence, rows))
}

/// Writes DATA_DIR/bundle.pem for operators and for bootstrapping agents.
pub(super) fn write_file(config: &Config, bundle: &TrustBundle) -> Result<(), CaError> {
    signet_identity::fsutil::write_atomic(
        &config.data_dir.join("bundle.pem"),
        bundle.to_pem().as_bytes(),
        0o644,
    )?;
    Ok(())
}

impl Ca {
    /// Applies `changes` (rows with their new state and journal, each
    /// audited as its action) and publishes the bundle as the rows then
    /// define it, in one transaction: the sequence bumps when the content
    /// changed and what entered the bundle is marked published. Only then
    /// is the bundle sent to agents and written to bundle.pem. Callers hold
    /// the writer lock. Returns the rows after.
    ///
    /// # Errors
    /// Store and file errors; Unavailable when the audit log cannot be written.
    pub(super) fn commit(
        &self,
        changes: &[(AuthorityRow, &'static str)],
        caller: &str,
    ) -> Result<Vec<AuthorityRow>, CaError> {
        let now = self.now();
        let (sequence, rows) = self.store.transaction(|tx| {
            // First, before any row: replicas publish one at a time.
            store::lock_bundle(tx)?;
            for (row, action) in changes {
                store::authorities::update(tx, row)?;
                self.auditor.durable_in(
                    tx,
                    &AuditRecord {
                        at: unix(now),
                        caller: caller.into(),
                        action: (*action).into(),
                        serial: row.id.clone(),
                        not_after: row.not_after,
                        result: "ok".into(),
                        detail: format!("{} {} {}", row.kind.as_str(), row.id, row.state.as_str()),
                        ..AuditRecord::default()
                    },
                )?;
                tracing::info!(kind = row.kind.as_str(), id = %row.id, state = row.state.as_str(), caller, "{action}");
            }
            publish_in(self, tx, caller, now)
        })?;
        let upstream = self.upstream_roots();
        let content = Content::of(&rows, upstream.as_deref(), now);
        let bundle = content.trust_bundle(&self.config, sequence)?;
        let current = self.node_bundle.borrow().clone();
        // CRLs change only with the sequence (the revoked set is part of
        // it): re-sign them only then, not on every tick.
        let crls = if current.bundle.sequence() == sequence && sequence != 0 {
            current.crls.clone()
        } else {
            self.crls(&rows, &content, sequence, now)?
        };
        let node = NodeBundle {
            bundle: Arc::new(bundle),
            tainted: content.tainted_list(&self.config),
            crls,
            revoked: content.revoked.iter().map(|r| r.cert_der.clone()).collect(),
        };
        if current.bundle.as_ref() != node.bundle.as_ref() || current.tainted != node.tainted {
            write_file(&self.config, &node.bundle)?;
            tracing::info!(sequence, "publishing a new trust bundle");
            self.bundle.send_replace(node.bundle.clone());
            self.node_bundle.send_replace(Arc::new(node));
        }
        Ok(rows)
    }

    /// Publishes without other changes.
    ///
    /// # Errors
    /// As [`Ca::commit`].
    pub(super) fn publish(&self, caller: &str) -> Result<Vec<AuthorityRow>, CaError> {
        self.commit(&[], caller)
    }
}
