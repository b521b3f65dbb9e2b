//! Taint and revoke: the operator's early exits from an authority's life.
//! Taint makes agents replace everything an authority signed (and, for an
//! active one, puts a successor in its place); revoke takes a tainted one
//! out of every bundle, or lists an intermediate in CRLs, once nothing
//! valid still chains to it.

use super::rotation::secs;
use super::signing::AuthorityInfo;
use super::time::unix;
use super::{Ca, CaError, MAX_JWT_TTL};
use crate::store::{AuthorityKind, AuthorityRow, AuthorityState};

impl Ca {
    /// Taints an active or retired authority: agents replace everything it
    /// signed within `taint_reissue_window`. The active intermediate is
    /// first replaced by a fresh one; the active root or JWT key by its
    /// published successor, which must exist.
    ///
    /// # Errors
    /// NotFound; FailedPrecondition for another state, or an active root or
    /// JWT key without a published successor.
    pub fn taint_authority(&self, id: &str, caller: &str) -> Result<(AuthorityInfo, u64), CaError> {
        self.refusing(caller, "taint_authority", "", || {
            {
                let _writer = self.writer();
                let now = self.now();
                let t = unix(now);
                let row = self.find(&self.store.authorities(None)?, id)?;
                let rows = self.keys.own()?;
                let mut changes = match row.state {
                    AuthorityState::Retired => Vec::new(),
                    // Another replica's: its successor is that replica's to
                    // make. It does so as soon as the bundle change reaches
                    // it (or at its next start): a replica without an active
                    // authority of a kind makes one (see `orphans`). A
                    // replica that may be compromised is tainted this way
                    // from any other.
                    AuthorityState::Active if !self.keys.owns(&row) => Vec::new(),
                    AuthorityState::Active => match row.kind {
                        AuthorityKind::Intermediate => {
                            let fresh = self.prepare_locked(AuthorityKind::Intermediate, caller, now)?;
                            let rows = self.keys.own()?;
                            self.plan_activation(&fresh, &rows, true, now)?
                        }
                        kind => {
                            let next = self
                                .successor(kind, &rows, t)
                                .filter(|r| r.published_sequence.is_some())
                                .ok_or_else(|| {
                                    CaError::FailedPrecondition(format!(
                                        "authority {id} is the active {}; prepare a successor first (signet ca authority prepare {}) so that tainting it can activate one",
                                        kind.as_str(),
                                        kind.as_str()
                                    ))
                                })?;
                            self.plan_activation(next, &rows, true, now)?
                        }
                    },
                    other => {
                        return Err(CaError::FailedPrecondition(format!(
                            "authority {id} is {}; only an active or retired one can be tainted",
                            other.as_str()
                        )));
                    }
                };
                changes.retain(|(r, _)| r.id != row.id);
                changes.push((
                    AuthorityRow {
                        state: AuthorityState::Tainted,
                        tainted_at: Some(t),
                        retired_at: row.retired_at.or(Some(t)),
                        ..row
                    },
                    "authority_taint",
                ));
                self.commit(&changes, caller)?;
                self.reload_signing()?;
            }
            Ok((self.info(id)?, self.bundle().sequence()))
        })
    }

    /// What still depends on a tainted authority: agents that have not
    /// reported since the taint or still serve SVIDs chaining through it,
    /// unexpired admin-minted SVIDs under it, JWT-SVIDs it may have signed.
    fn dependents(
        &self,
        row: &AuthorityRow,
        rows: &[AuthorityRow],
        now: i64,
    ) -> Result<Vec<String>, CaError> {
        let mut out = Vec::new();
        let tainted_at = row.tainted_at.unwrap_or(now);
        let connected: Vec<String> = self
            .connected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        if row.kind != AuthorityKind::Jwt {
            for node in self.store.nodes()? {
                if node.chains_through.contains(&row.id) {
                    out.push(format!(
                        "agent {} serves SVIDs that chain through it",
                        node.name
                    ));
                } else if connected.contains(&node.spiffe_id) && node.last_seen <= tainted_at {
                    out.push(format!(
                        "agent {} has not reported since the taint",
                        node.name
                    ));
                }
            }
            let signers: Vec<String> = match row.kind {
                AuthorityKind::Root => rows
                    .iter()
                    .filter(|r| r.parent_id.as_deref() == Some(&row.id))
                    .map(|r| r.id.clone())
                    .collect(),
                _ => vec![row.id.clone()],
            };
            for signer in signers {
                let minted: i64 = self.store.with_conn(|c| {
                    c.query_opt(
                        "SELECT COUNT(*) FROM audit WHERE action = 'mint' AND result = 'issued' AND detail = ?1 AND not_after > ?2",
                        crate::args![format!("signer {signer}"), now],
                    )?
                    .map_or(Ok(0), |r| r.get(0))
                })?;
                if minted > 0 {
                    out.push(format!(
                        "{minted} unexpired admin-minted SVIDs under {signer}"
                    ));
                }
            }
        } else {
            let stopped = row.retired_at.unwrap_or(tainted_at);
            let until = stopped.saturating_add(secs(MAX_JWT_TTL));
            if until > now {
                out.push(format!(
                    "JWT-SVIDs it signed may be valid until {}",
                    humantime::format_rfc3339_seconds(super::time::from_unix(until))
                ));
            }
        }
        Ok(out)
    }

    /// Revokes a tainted authority: a root or JWT key leaves the bundle, an
    /// intermediate is listed in its root's CRL. Without `force` only once
    /// nothing valid still chains to it.
    ///
    /// # Errors
    /// NotFound; FailedPrecondition when it is not tainted, something
    /// still depends on it (without force), or an intermediate cannot be
    /// listed in a CRL (upstream CA that is not the anchor).
    pub fn revoke_authority(
        &self,
        id: &str,
        force: bool,
        caller: &str,
    ) -> Result<(AuthorityInfo, u64), CaError> {
        self.refusing(caller, "revoke_authority", "", || {
            {
                let _writer = self.writer();
                let now = unix(self.now());
                let rows = self.store.authorities(None)?;
                let row = self.find(&rows, id)?;
                if row.state != AuthorityState::Tainted {
                    return Err(CaError::FailedPrecondition(format!(
                        "authority {id} is {}; taint it first",
                        row.state.as_str()
                    )));
                }
                if row.kind == AuthorityKind::Intermediate
                    && let Some(up) = &self.upstream
                {
                    let up = up.read().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if !up.parent.served_chain().is_empty() || !up.roots.contains(up.parent.cert()) {
                        return Err(CaError::FailedPrecondition(
                            "the upstream CA is not itself a trust anchor of the bundle, so Signet cannot publish a CRL for its intermediates; revoke at the upstream CA".into(),
                        ));
                    }
                }
                if !force {
                    let deps = self.dependents(&row, &rows, now)?;
                    if !deps.is_empty() {
                        return Err(CaError::FailedPrecondition(format!(
                            "something valid may still chain to {id}: {}; wait, or use force",
                            deps.join("; ")
                        )));
                    }
                }
                self.commit(
                    &[(
                        AuthorityRow {
                            state: AuthorityState::Revoked,
                            revoked_at: Some(now),
                            ..row
                        },
                        "authority_revoke",
                    )],
                    caller,
                )?;
            }
            Ok((self.info(id)?, self.bundle().sequence()))
        })
    }
}
