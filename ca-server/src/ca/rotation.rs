//! The rotation schedule, the activation gate and activation (taint and
//! revoke are in `revoke`).
//!
//! One cycle per kind (root in self-signed mode, intermediate, JWT key):
//! when the active authority passes `rotation_prepare_at` of its life a
//! successor is prepared and published; when it has
//! `rotation_activate_before` of its life left the successor is activated,
//! once every live agent reports serving a bundle sequence that
//! carries it (the gate) or, after `activation_ack_timeout`, no earlier
//! than 3 x `agent_sync_interval` after publication. The old one is
//! retired and stays published until the last thing it signed can have
//! expired (+ `prune_grace`, never past its notAfter), then pruned.
//!
//! The authority rows are the journal: every step is one transaction with
//! its audit record, so a CA that stops at any point resumes from the rows.
//! All writers hold the CA's writer lock; readers never wait.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use signet_identity::SpiffeId;

use super::authorities::{SELF, cert_id};
use super::signing::AuthorityInfo;
use super::time::unix;
use super::{Ca, CaError, MAX_JWT_TTL};
use crate::store::{AuthorityKind, AuthorityRow, AuthorityState};

/// Test-only crash hook: debug builds exit at once, as a SIGKILL would
/// stop them, when `SIGNET_TEST_CRASH_AT` names the rotation step reached
/// ("prepared", "published", "gated", "activated"). Release builds ignore
/// it. Integration tests use it to stop the CA at each step.
fn crash_point(step: &str) {
    if cfg!(debug_assertions) && std::env::var("SIGNET_TEST_CRASH_AT").is_ok_and(|v| v == step) {
        eprintln!("SIGNET_TEST_CRASH_AT={step}: exiting (test hook)");
        std::process::exit(86);
    }
}

/// How many refresh hints of the served bundle a new root or JWT key is
/// published before it is used (the Federation standard says 3 to 5).
pub const FEDERATION_HOLD_HINTS: i64 = 3;

/// What the activation gate says about a prepared authority.
/// "Live" agents count: see [`Ca::agent_lag`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Every connected agent serves a bundle that carries it.
    Acknowledged,
    /// Not every agent did, but the ack timeout and the time rule have
    /// passed; these lagged (name, sequence).
    TimeRule(Vec<(String, u64)>),
    /// Wait: these connected agents lag (name, sequence).
    Closed(Vec<(String, u64)>),
    /// Wait until this Unix time: the CA serves its bundle to federated
    /// trust domains, which poll it at the refresh hint; the SPIFFE
    /// Federation standard asks that a key be published several refresh
    /// hints before it is used, so that they have it in time.
    FederationHold(i64),
}

/// One open WatchBundle stream of an agent; dropping it unregisters it.
pub struct ConnectedAgent {
    ca: Arc<Ca>,
    id: String,
}

impl Drop for ConnectedAgent {
    fn drop(&mut self) {
        let mut connected = self
            .ca
            .connected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = connected.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                connected.remove(&self.id);
            }
        }
    }
}

fn life(row: &AuthorityRow) -> i64 {
    (row.not_after - row.not_before).max(0)
}

pub(super) fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn lagging_names(lagging: &[(String, u64)]) -> String {
    lagging
        .iter()
        .map(|(name, seq)| format!("{name} (at {seq})"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn with_state(row: &AuthorityRow, state: AuthorityState) -> AuthorityRow {
    AuthorityRow {
        state,
        ..row.clone()
    }
}

impl Ca {
    /// Registers an open WatchBundle stream of `node` until the returned
    /// guard is dropped.
    pub fn agent_connected(self: &Arc<Self>, node: &SpiffeId) -> ConnectedAgent {
        let id = node.to_string();
        *self
            .connected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(id.clone())
            .or_default() += 1;
        ConnectedAgent {
            ca: self.clone(),
            id,
        }
    }

    /// Every live agent with the bundle sequence it last reported: those
    /// with an open bundle stream, and those that reported within the
    /// last 3 x `agent_sync_interval`. The second group matters after a
    /// restart, before agents have reconnected: the CA must not take their
    /// absence for consent.
    ///
    /// # Errors
    /// Store errors.
    pub fn agent_lag(&self) -> Result<Vec<(String, u64)>, CaError> {
        let connected: Vec<String> = self
            .connected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        let recent =
            unix(self.now()).saturating_sub(3 * secs(self.config.rotation.agent_sync_interval));
        Ok(self
            .store
            .nodes()?
            .into_iter()
            .filter(|n| {
                connected.contains(&n.spiffe_id) || (n.last_seen > 0 && n.last_seen >= recent)
            })
            .map(|n| (n.name, n.bundle_sequence))
            .collect())
    }

    /// The gate for a prepared authority.
    ///
    /// # Errors
    /// Store errors.
    pub fn gate(&self, row: &AuthorityRow, now: SystemTime) -> Result<Gate, CaError> {
        let Some(seq) = row.published_sequence else {
            return Ok(Gate::Closed(Vec::new()));
        };
        let t = unix(now);
        if let Some(until) = self.federation_hold(row, t) {
            return Ok(Gate::FederationHold(until));
        }
        let lagging: Vec<(String, u64)> = self
            .agent_lag()?
            .into_iter()
            .filter(|(_, s)| *s < seq)
            .collect();
        if lagging.is_empty() {
            return Ok(Gate::Acknowledged);
        }
        let r = &self.config.rotation;
        let published_at = row.published_at.unwrap_or(t);
        let timed_out = t >= published_at.saturating_add(secs(r.activation_ack_timeout))
            && t >= published_at.saturating_add(3 * secs(r.agent_sync_interval));
        Ok(if timed_out {
            Gate::TimeRule(lagging)
        } else {
            Gate::Closed(lagging)
        })
    }

    /// When the bundle endpoint is served, a root or JWT key (what the
    /// served bundle carries) is activated no earlier than
    /// [`FEDERATION_HOLD_HINTS`] refresh hints after it was published: the
    /// time until then, or `None` when there is nothing to wait for.
    fn federation_hold(&self, row: &AuthorityRow, t: i64) -> Option<i64> {
        let endpoint = self.config.bundle_endpoint.as_ref()?;
        if !matches!(row.kind, AuthorityKind::Root | AuthorityKind::Jwt) {
            return None;
        }
        let published_at = row.published_at.unwrap_or(t);
        let until = published_at
            .saturating_add(FEDERATION_HOLD_HINTS.saturating_mul(secs(endpoint.refresh_hint)));
        (t < until).then_some(until)
    }

    /// After open: publishes what was created but not published before a
    /// stop, restarts every prepared authority's wait (the CA cannot know
    /// what agents received while it was down), and loads the signing
    /// state from published authorities only.
    pub(super) fn resume(&self) -> Result<(), CaError> {
        let _writer = self.writer();
        let rows = self.publish(SELF)?;
        let now = unix(self.now());
        let reset: Vec<(AuthorityRow, &'static str)> = rows
            .iter()
            .filter(|r| r.state == AuthorityState::Prepared && r.published_sequence.is_some())
            .map(|r| {
                (
                    AuthorityRow {
                        published_at: Some(now),
                        ..r.clone()
                    },
                    "authority_republish",
                )
            })
            .collect();
        if !reset.is_empty() {
            self.commit(&reset, SELF)?;
        }
        self.reload_signing()
    }

    /// The id of the CA that signs intermediates now.
    fn parent_id(&self) -> String {
        cert_id(self.signing().parent.cert())
    }

    /// The newest prepared, unexpired authority that would replace the
    /// active one of `kind` (an intermediate: under the active parent).
    pub(super) fn successor<'a>(
        &self,
        kind: AuthorityKind,
        rows: &'a [AuthorityRow],
        now: i64,
    ) -> Option<&'a AuthorityRow> {
        let parent = self.parent_id();
        rows.iter().find(|r| {
            r.kind == kind
                && r.state == AuthorityState::Prepared
                && r.not_after > now
                && (kind != AuthorityKind::Intermediate || r.parent_id.as_deref() == Some(&parent))
        })
    }

    fn prepare_point(&self, row: &AuthorityRow) -> i64 {
        row.not_before + (life(row) as f64 * self.config.rotation.prepare_at) as i64
    }

    fn activate_point(&self, row: &AuthorityRow) -> i64 {
        row.not_after - (life(row) as f64 * self.config.rotation.activate_before) as i64
    }

    /// When a retired authority leaves the bundle: once the longest-lived
    /// thing it can have signed has expired, plus the grace, capped at its
    /// notAfter.
    pub(super) fn prune_point(&self, row: &AuthorityRow) -> i64 {
        let c = &self.config;
        let longest = match row.kind {
            AuthorityKind::Jwt => MAX_JWT_TTL,
            _ => c.max_x509_svid_ttl.max(c.node_svid_ttl),
        };
        let stopped = row.retired_at.or(row.tainted_at).unwrap_or(row.not_after);
        stopped
            .saturating_add(secs(longest) + secs(c.rotation.prune_grace))
            .min(row.not_after)
    }

    /// When the schedule will next move `row`.
    pub(super) fn next_transition(
        &self,
        row: &AuthorityRow,
        rows: &[AuthorityRow],
        now: i64,
    ) -> Option<i64> {
        let scheduled = match row.kind {
            AuthorityKind::Root => self.config.upstream_ca.is_none(),
            AuthorityKind::Intermediate | AuthorityKind::Jwt => true,
            AuthorityKind::Upstream => false,
        };
        match row.state {
            _ if !scheduled => None,
            AuthorityState::Active => Some(match self.successor(row.kind, rows, now) {
                None => self.prepare_point(row),
                Some(_) => self.activate_point(row),
            }),
            AuthorityState::Prepared => {
                let active = rows
                    .iter()
                    .find(|r| r.kind == row.kind && r.state == AuthorityState::Active)?;
                (self.successor(row.kind, rows, now).map(|s| &s.id) == Some(&row.id))
                    .then(|| self.activate_point(active))
            }
            AuthorityState::Retired => Some(self.prune_point(row)),
            AuthorityState::Tainted => Some(row.not_after),
            AuthorityState::Revoked | AuthorityState::Pruned => None,
        }
    }

    /// One tick of the schedule: follows the upstream files (and switches
    /// to a changed upstream CA once its root is served), then moves each
    /// kind one step if due, and prunes. Returns whether anything
    /// changed.
    ///
    /// # Errors
    /// The first failure; what was done before it stays done.
    pub fn rotate_if_due(&self) -> Result<bool, CaError> {
        let _writer = self.writer();
        let now = self.now();
        let mut changed = false;
        self.follow_upstream(unix(now));
        self.publish(SELF)?;
        // Each replica moves its own authorities; one at a time retires
        // those of replicas that are gone.
        changed |= self.heal_own(now)?;
        changed |= self.retire_orphans(now)?;
        changed |= self.switch_upstream(now)?;
        if self.config.upstream_ca.is_none() {
            changed |= self.schedule(AuthorityKind::Root, now)?;
        }
        changed |= self.schedule(AuthorityKind::Intermediate, now)?;
        changed |= self.schedule(AuthorityKind::Jwt, now)?;
        changed |= self.prune(now)?;
        Ok(changed)
    }

    fn schedule(&self, kind: AuthorityKind, now: SystemTime) -> Result<bool, CaError> {
        let rows = self.keys.own()?;
        let t = unix(now);
        let Some(active) = rows
            .iter()
            .find(|r| r.kind == kind && r.state == AuthorityState::Active)
        else {
            return Ok(false);
        };
        // A prepared root keeps a fresh intermediate under it, made and
        // published ahead of activation (its CRL too, while CRLs are in
        // use), so that activation never brings a key agents do not have.
        if kind == AuthorityKind::Root
            && let Some(next) = self.successor(kind, &rows, t)
            && self.companion(next, &rows, t).is_none()
        {
            let parent = self.keys.load_root(next)?;
            self.keys.create_intermediate(
                &parent,
                &next.id,
                std::slice::from_ref(parent.cert()),
                now,
                AuthorityState::Prepared,
                SELF,
            )?;
            self.publish(SELF)?;
            return Ok(true);
        }
        match self.successor(kind, &rows, t) {
            None if t >= self.prepare_point(active) => {
                self.prepare_locked(kind, SELF, now)?;
                Ok(true)
            }
            Some(next) if t >= self.activate_point(active) => match self.gate(next, now)? {
                Gate::FederationHold(until) => {
                    crash_point("gated");
                    tracing::info!(kind = kind.as_str(), id = %next.id, until, "activation waits until federated trust domains can have fetched the bundle");
                    Ok(false)
                }
                Gate::Closed(lagging) => {
                    crash_point("gated");
                    tracing::info!(kind = kind.as_str(), id = %next.id, sequence = next.published_sequence, lagging = %lagging_names(&lagging), "activation waits for agents to acknowledge the bundle");
                    Ok(false)
                }
                Gate::Acknowledged | Gate::TimeRule(_) => {
                    self.activate_rows(next, &rows, SELF, false, now)?;
                    Ok(true)
                }
            },
            _ => Ok(false),
        }
    }

    /// Retired authorities whose signatures can all have expired, and
    /// prepared or tainted ones that expired, leave the bundle.
    fn prune(&self, now: SystemTime) -> Result<bool, CaError> {
        let rows = self.keys.own()?;
        let t = unix(now);
        let successors: Vec<String> = [
            AuthorityKind::Root,
            AuthorityKind::Intermediate,
            AuthorityKind::Jwt,
        ]
        .into_iter()
        .filter_map(|k| self.successor(k, &rows, t).map(|r| r.id.clone()))
        .collect();
        let changes: Vec<(AuthorityRow, &'static str)> = rows
            .iter()
            .filter(|r| match r.state {
                AuthorityState::Retired => t >= self.prune_point(r),
                AuthorityState::Prepared => r.not_after <= t && !successors.contains(&r.id),
                AuthorityState::Tainted => r.not_after <= t,
                _ => false,
            })
            .map(|r| (with_state(r, AuthorityState::Pruned), "authority_prune"))
            .collect();
        if changes.is_empty() {
            return Ok(false);
        }
        self.commit(&changes, SELF)?;
        Ok(true)
    }

    /// Creates a prepared authority of `kind` and publishes it (two
    /// transactions: a stop in between leaves an unpublished prepared row,
    /// which the next start publishes). A root comes with a prepared
    /// intermediate under it.
    pub(super) fn prepare_locked(
        &self,
        kind: AuthorityKind,
        caller: &str,
        now: SystemTime,
    ) -> Result<AuthorityRow, CaError> {
        let row = match kind {
            AuthorityKind::Root => {
                if self.config.upstream_ca.is_some() {
                    return Err(CaError::FailedPrecondition(
                        "the roots belong to the upstream CA; rotate them there".into(),
                    ));
                }
                let root = self
                    .keys
                    .create_root(now, AuthorityState::Prepared, caller)?;
                let parent = self.keys.load_root(&root)?;
                self.keys.create_intermediate(
                    &parent,
                    &root.id,
                    std::slice::from_ref(parent.cert()),
                    now,
                    AuthorityState::Prepared,
                    caller,
                )?;
                root
            }
            AuthorityKind::Intermediate => {
                let signing = self.signing();
                let anchors = match &self.upstream {
                    Some(up) => vec![
                        up.read()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .anchor
                            .clone(),
                    ],
                    None => vec![signing.parent.cert().clone()],
                };
                self.keys.create_intermediate(
                    &signing.parent,
                    &cert_id(signing.parent.cert()),
                    &anchors,
                    now,
                    AuthorityState::Prepared,
                    caller,
                )?
            }
            AuthorityKind::Jwt => self
                .keys
                .create_jwt(now, AuthorityState::Prepared, caller)?,
            AuthorityKind::Upstream => {
                return Err(CaError::InvalidArgument(
                    "the upstream CA is not made by Signet".into(),
                ));
            }
        };
        crash_point("prepared");
        let rows = self.publish(caller)?;
        crash_point("published");
        Ok(rows.into_iter().find(|r| r.id == row.id).unwrap_or(row))
    }

    /// Activates `next` (with `force`, whatever the gate says): the one
    /// place an authority becomes active after start. It must be prepared
    /// and published, and (roots, JWT keys) in the bundle agents are being
    /// sent now: nothing is ever signed with a key the bundle did not carry
    /// first. A root brings an intermediate under it.
    fn activate_rows(
        &self,
        next: &AuthorityRow,
        rows: &[AuthorityRow],
        caller: &str,
        force: bool,
        now: SystemTime,
    ) -> Result<AuthorityRow, CaError> {
        let changes = self.plan_activation(next, rows, force, now)?;
        self.commit(&changes, caller)?;
        crash_point("activated");
        self.reload_signing()?;
        let rows = self.store.authorities(None)?;
        rows.into_iter()
            .find(|r| r.id == next.id)
            .ok_or_else(|| CaError::Internal(format!("authority {} vanished", next.id)))
    }

    pub(super) fn plan_activation(
        &self,
        next: &AuthorityRow,
        rows: &[AuthorityRow],
        force: bool,
        now: SystemTime,
    ) -> Result<Vec<(AuthorityRow, &'static str)>, CaError> {
        let t = unix(now);
        if next.state != AuthorityState::Prepared {
            return Err(CaError::FailedPrecondition(format!(
                "authority {} is {}; only a prepared one can be activated",
                next.id,
                next.state.as_str()
            )));
        }
        let Some(seq) = next.published_sequence else {
            return Err(CaError::FailedPrecondition(format!(
                "authority {} was never published; it cannot sign before agents have it",
                next.id
            )));
        };
        if next.not_after <= t {
            return Err(CaError::FailedPrecondition(format!(
                "authority {} has expired",
                next.id
            )));
        }
        let bundle = self.node_bundle();
        match next.kind {
            AuthorityKind::Root | AuthorityKind::Jwt if !bundle.carries(&next.id) => {
                return Err(CaError::FailedPrecondition(format!(
                    "authority {} is not in the bundle agents are sent (sequence {}); it cannot sign",
                    next.id,
                    bundle.bundle.sequence()
                )));
            }
            AuthorityKind::Intermediate if next.parent_id.as_deref() != Some(&self.parent_id()) => {
                return Err(CaError::FailedPrecondition(format!(
                    "intermediate {} is not signed by the active parent; activate its root instead",
                    next.id
                )));
            }
            _ => {}
        }
        if !force {
            match self.gate(next, now)? {
                Gate::Acknowledged => {}
                Gate::TimeRule(lagging) => {
                    tracing::warn!(kind = next.kind.as_str(), id = %next.id, sequence = seq, lagging = %lagging_names(&lagging), "activating after the ack timeout; these agents had not acknowledged the bundle");
                }
                Gate::FederationHold(until) => {
                    return Err(CaError::FailedPrecondition(format!(
                        "{} was published {}s ago; federated trust domains fetch this bundle every {} (the refresh hint), so it is used no earlier than {} refresh hints after publication: wait {}s, or use force",
                        next.id,
                        t.saturating_sub(next.published_at.unwrap_or(t)),
                        self.config
                            .bundle_endpoint
                            .as_ref()
                            .map_or_else(String::new, |e| humantime::format_duration(
                                e.refresh_hint
                            )
                            .to_string()),
                        FEDERATION_HOLD_HINTS,
                        until.saturating_sub(t)
                    )));
                }
                Gate::Closed(lagging) => {
                    return Err(CaError::FailedPrecondition(format!(
                        "not every connected agent has acknowledged bundle sequence {seq}, which carries {}: {}; wait, or use force",
                        next.id,
                        lagging_names(&lagging)
                    )));
                }
            }
        }
        let mut changes = Vec::new();
        let retire = |kind: AuthorityKind, changes: &mut Vec<(AuthorityRow, &'static str)>| {
            for old in rows
                .iter()
                .filter(|r| r.kind == kind && r.state == AuthorityState::Active)
            {
                changes.push((
                    AuthorityRow {
                        state: AuthorityState::Retired,
                        retired_at: Some(t),
                        ..old.clone()
                    },
                    "authority_retire",
                ));
            }
        };
        retire(next.kind, &mut changes);
        changes.push((
            AuthorityRow {
                state: AuthorityState::Active,
                activated_at: Some(t),
                ..next.clone()
            },
            "authority_activate",
        ));
        if next.kind == AuthorityKind::Root {
            // Its intermediate: the one prepared with it while still fresh,
            // else a new one (intermediates are not in the bundle; the root
            // that vouches for it is).
            let companion = match self.companion(next, rows, t) {
                Some(c) => {
                    if !force && let Gate::Closed(lagging) = self.gate(c, now)? {
                        return Err(CaError::FailedPrecondition(format!(
                            "not every connected agent has acknowledged bundle sequence {}, which carries the intermediate of {}: {}; wait, or use force",
                            c.published_sequence.unwrap_or(0),
                            next.id,
                            lagging_names(&lagging)
                        )));
                    }
                    c.clone()
                }
                None => {
                    let parent = self.keys.load_root(next)?;
                    let mut fresh = self.keys.create_intermediate(
                        &parent,
                        &next.id,
                        std::slice::from_ref(parent.cert()),
                        now,
                        AuthorityState::Prepared,
                        SELF,
                    )?;
                    fresh.published_sequence = Some(bundle.bundle.sequence());
                    fresh.published_at = Some(t);
                    fresh
                }
            };
            retire(AuthorityKind::Intermediate, &mut changes);
            changes.push((
                AuthorityRow {
                    state: AuthorityState::Active,
                    activated_at: Some(t),
                    ..companion
                },
                "authority_activate",
            ));
        }
        // The invariant, checked once more on exactly what will be written.
        for (row, _) in &changes {
            if row.state == AuthorityState::Active && row.published_sequence.is_none() {
                return Err(CaError::Internal(format!(
                    "refusing to activate {} {}: never published",
                    row.kind.as_str(),
                    row.id
                )));
            }
        }
        Ok(changes)
    }

    /// The fresh, published intermediate prepared under the prepared root
    /// `root`, if any (fresh: not yet past its own prepare point).
    fn companion<'a>(
        &self,
        root: &AuthorityRow,
        rows: &'a [AuthorityRow],
        t: i64,
    ) -> Option<&'a AuthorityRow> {
        rows.iter().find(|r| {
            r.kind == AuthorityKind::Intermediate
                && r.state == AuthorityState::Prepared
                && r.parent_id.as_deref() == Some(&root.id)
                && r.published_sequence.is_some()
                && r.not_after > t
                && t < self.prepare_point(r)
        })
    }

    pub(super) fn find(&self, rows: &[AuthorityRow], id: &str) -> Result<AuthorityRow, CaError> {
        rows.iter()
            .find(|r| r.id == id)
            .cloned()
            .ok_or_else(|| CaError::NotFound(format!("no authority {id:?}")))
    }

    pub(super) fn info(&self, id: &str) -> Result<AuthorityInfo, CaError> {
        self.list_authorities()?
            .into_iter()
            .find(|a| a.row.id == id)
            .ok_or_else(|| CaError::NotFound(format!("no authority {id:?}")))
    }

    /// Prepares and publishes a new authority of `kind` now (root,
    /// intermediate or JWT key). Returns it and the bundle sequence.
    ///
    /// # Errors
    /// InvalidArgument for another kind; FailedPrecondition for a root
    /// when an upstream CA owns the roots; Unavailable when the audit log
    /// cannot be written; internal errors.
    pub fn prepare_authority(
        &self,
        kind: Option<AuthorityKind>,
        caller: &str,
    ) -> Result<(AuthorityInfo, u64), CaError> {
        self.refusing(caller, "prepare_authority", "", || {
            let kind = match kind {
                Some(
                    k @ (AuthorityKind::Root | AuthorityKind::Intermediate | AuthorityKind::Jwt),
                ) => k,
                other => {
                    return Err(CaError::InvalidArgument(format!(
                        "kind must be root, intermediate or jwt, not {}",
                        other.map_or("unspecified", AuthorityKind::as_str)
                    )));
                }
            };
            let row = {
                let _writer = self.writer();
                self.prepare_locked(kind, caller, self.now())?
            };
            Ok((self.info(&row.id)?, self.bundle().sequence()))
        })
    }

    /// Activates a prepared, published authority; without `force` only
    /// when every connected agent has acknowledged the bundle carrying it.
    ///
    /// # Errors
    /// NotFound; FailedPrecondition when it is not prepared, was never
    /// published, or (without force) agents have not acknowledged it.
    pub fn activate_authority(
        &self,
        id: &str,
        force: bool,
        caller: &str,
    ) -> Result<(AuthorityInfo, u64), CaError> {
        self.refusing(caller, "activate_authority", "", || {
            {
                let _writer = self.writer();
                let row = self.find(&self.store.authorities(None)?, id)?;
                self.must_own(&row, "activated")?;
                let rows = self.keys.own()?;
                self.activate_rows(&row, &rows, caller, force, self.now())?;
            }
            Ok((self.info(id)?, self.bundle().sequence()))
        })
    }
}

#[cfg(test)]
#[path = "rotation_tests.rs"]
mod tests;
