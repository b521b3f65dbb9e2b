//! The relationships at run time: one poller task per relationship, the
//! last good bundle of each, and the set of them published on a `watch` for
//! the node API. The registry's mutex is the single owner of this state;
//! a fetch runs outside it and commits its result under it, so a
//! relationship deleted meanwhile is not brought back.
//!
//! With several replicas on one PostgreSQL database, one replica fetches:
//! the one holding the federation advisory lock (a session lock, so a dead
//! poller's lock goes with its session and another replica takes over).
//! It stores each result in the `federations` table with a notification;
//! every replica, the poller included, then reloads the relationships and
//! bundles from the table ([`Federations::reload`]) and publishes them to
//! its agents. Relationships created or deleted through any replica notify
//! the same way. On SQLite this process is the only replica and always
//! the poller.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use signet_identity::{TrustBundle, TrustDomain};
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use super::check::{self, FetchError, Outcome};
use super::store::{self as fstore, FetchStatus};
use super::{FederationError, MAX_RELATIONSHIPS, Profile, Relationship};
use crate::ca::Ca;
use crate::ca::time::unix;
use crate::store::{OnceGuard, OnceWork};

/// The refresh interval when the remote gives no hint (Federation
/// standard: 5 minutes).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// The longest interval between two fetches, whatever the hint.
pub const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// How often the poller checks that its lock is still held, and the other
/// replicas try to take it.
pub const POLLER_CHECK: Duration = Duration::from_secs(5);

/// The federated bundles, one per trust domain, ordered by trust domain.
pub type FederatedBundles = Arc<Vec<TrustBundle>>;

/// A relationship as the admin API shows it.
#[derive(Debug, Clone)]
pub struct View {
    pub relationship: Relationship,
    pub bundle: Option<TrustBundle>,
    pub status: FetchStatus,
    /// Unix seconds; 0 when none is scheduled.
    pub next_fetch_at: i64,
}

struct Slot {
    relationship: Relationship,
    bundle: Option<TrustBundle>,
    status: FetchStatus,
    next_fetch_at: i64,
    /// Serializes this relationship's fetches (the poller's and refresh).
    fetching: Arc<tokio::sync::Mutex<()>>,
    /// Tells the poller to reschedule.
    wake: Arc<Notify>,
    /// Stops the poller (deletion).
    stop: watch::Sender<bool>,
}

struct Inner {
    ca: Arc<Ca>,
    min_refresh: Duration,
    slots: Mutex<BTreeMap<TrustDomain, Slot>>,
    published: watch::Sender<FederatedBundles>,
    shutdown: watch::Receiver<bool>,
    /// Whether this replica holds the federation lock and fetches.
    poller: AtomicBool,
    /// Fetches this replica started.
    fetches: AtomicU64,
}

/// The federation relationships of a CA.
#[derive(Clone)]
pub struct Federations {
    inner: Arc<Inner>,
}

impl Federations {
    /// Brings the store in line with the configured relationships (a
    /// configured one replaces a stored one of the same trust domain,
    /// keeping its last good bundle when the endpoint is unchanged; stored
    /// ones from an older configuration are removed), loads every
    /// relationship and starts one poller each.
    ///
    /// # Errors
    /// Store errors.
    pub fn start(ca: Arc<Ca>, shutdown: watch::Receiver<bool>) -> Result<Self, FederationError> {
        let store = ca.store().clone();
        let now = unix(ca.now());
        let stored = fstore::load_all(&store)?;
        let configured = &ca.config().federations;
        for s in &stored {
            let rel = &s.relationship;
            if rel.from_config
                && !configured
                    .iter()
                    .any(|c| c.trust_domain == rel.trust_domain)
            {
                tracing::info!(trust_domain = %rel.trust_domain, "removing a relationship no longer in the configuration");
                fstore::delete(&store, rel.trust_domain.as_str())?;
            }
        }
        for c in configured {
            let keep = stored.iter().any(|s| {
                s.relationship.trust_domain == c.trust_domain
                    && s.relationship.url == c.url
                    && s.relationship.profile.kind() == c.profile.kind()
            });
            fstore::upsert(&store, c, now, keep)?;
        }
        let (published, _) = watch::channel(Arc::new(Vec::new()));
        let federations = Self {
            inner: Arc::new(Inner {
                min_refresh: ca.config().federation_min_refresh,
                ca,
                slots: Mutex::new(BTreeMap::new()),
                published,
                shutdown,
                poller: AtomicBool::new(false),
                fetches: AtomicU64::new(0),
            }),
        };
        let guard = store.try_once(OnceWork::Federation)?;
        federations
            .inner
            .poller
            .store(guard.is_some(), Ordering::Relaxed);
        for s in fstore::load_all(&store)? {
            federations.add(s.relationship, s.bundle, s.status);
        }
        federations.inner.publish();
        tokio::spawn(
            federations
                .inner
                .clone()
                .hold_poller(guard)
                .instrument(tracing::info_span!("federation-poller")),
        );
        Ok(federations)
    }

    /// Whether this replica is the one that fetches.
    pub fn is_poller(&self) -> bool {
        self.inner.poller.load(Ordering::Relaxed)
    }

    /// How many fetches this replica started since it started.
    pub fn fetches(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// Brings the relationships in line with the store after a change
    /// notification: relationships gone from the table stop, new ones
    /// start, and a stored bundle and status at least as recent as this
    /// replica's (by attempt time) replace them. Then publishes.
    ///
    /// # Errors
    /// Store errors; nothing changes then.
    pub fn reload(&self) -> Result<(), FederationError> {
        let stored = fstore::load_all(self.inner.ca.store())?;
        let mut added = Vec::new();
        {
            let mut slots = self.inner.lock();
            let present: BTreeSet<TrustDomain> = stored
                .iter()
                .map(|s| s.relationship.trust_domain.clone())
                .collect();
            slots.retain(|td, slot| {
                let keep = present.contains(td);
                if !keep {
                    let _ = slot.stop.send(true);
                }
                keep
            });
            for s in stored {
                match slots.get_mut(&s.relationship.trust_domain) {
                    Some(slot) if slot.relationship == s.relationship => {
                        let newer = s.status.last_attempt_at >= slot.status.last_attempt_at;
                        if newer && (slot.bundle != s.bundle || slot.status != s.status) {
                            slot.bundle = s.bundle;
                            slot.status = s.status;
                            // Reschedules from the new status.
                            slot.wake.notify_one();
                        }
                    }
                    Some(slot) => {
                        let _ = slot.stop.send(true);
                        added.push(s);
                    }
                    None => added.push(s),
                }
            }
        }
        for s in added {
            tracing::info!(trust_domain = %s.relationship.trust_domain, "federation relationship loaded from the store");
            self.add(s.relationship, s.bundle, s.status);
        }
        self.inner.publish();
        Ok(())
    }

    /// Follows the federated bundles.
    pub fn watch(&self) -> watch::Receiver<FederatedBundles> {
        self.inner.published.subscribe()
    }

    /// Every relationship.
    pub fn list(&self) -> Vec<View> {
        self.inner.lock().values().map(Slot::view).collect()
    }

    /// One relationship.
    ///
    /// # Errors
    /// [`FederationError::NotFound`].
    pub fn get(&self, td: &str) -> Result<View, FederationError> {
        let key = TrustDomain::new(td).map_err(|_| FederationError::NotFound(td.to_owned()))?;
        self.inner
            .lock()
            .get(&key)
            .map(Slot::view)
            .ok_or_else(|| FederationError::NotFound(td.to_owned()))
    }

    /// Adds a relationship made through the admin API and starts its
    /// poller (which fetches at once).
    ///
    /// # Errors
    /// [`FederationError::AlreadyExists`], [`FederationError::TooMany`],
    /// store errors.
    pub fn create(&self, rel: Relationship, caller: &str) -> Result<View, FederationError> {
        {
            let slots = self.inner.lock();
            if slots.contains_key(&rel.trust_domain) {
                return Err(FederationError::AlreadyExists(rel.trust_domain));
            }
            if slots.len() >= MAX_RELATIONSHIPS {
                return Err(FederationError::TooMany);
            }
        }
        let ca = &self.inner.ca;
        ca.store().transaction(|tx| {
            fstore::insert_new(tx, &rel, unix(ca.now())).map_err(|e| match e {
                crate::store::StoreError::Conflict(_) => {
                    FederationError::AlreadyExists(rel.trust_domain.clone())
                }
                other => other.into(),
            })?;
            ca.audit_change_in(
                tx,
                caller,
                "create_federation",
                format!(
                    "federation with {} at {} ({})",
                    rel.trust_domain,
                    rel.url.as_str(),
                    rel.profile.kind().as_str()
                ),
            )
            .map_err(FederationError::Ca)
        })?;
        tracing::info!(trust_domain = %rel.trust_domain, url = rel.url.as_str(), profile = rel.profile.kind().as_str(), "federation relationship created");
        let td = rel.trust_domain.clone();
        // The creation's own notification may have loaded it already.
        let loaded = self.inner.lock().contains_key(&td);
        if !loaded {
            self.add(rel, None, FetchStatus::default());
        }
        self.get(td.as_str())
    }

    /// Deletes a relationship made through the admin API: its poller
    /// stops and its bundle leaves the federated set at once.
    ///
    /// # Errors
    /// [`FederationError::NotFound`], [`FederationError::FromConfig`].
    pub fn delete(&self, td: &str, caller: &str) -> Result<(), FederationError> {
        let key = TrustDomain::new(td).map_err(|_| FederationError::NotFound(td.to_owned()))?;
        let mut slots = self.inner.lock();
        let slot = slots
            .get(&key)
            .ok_or_else(|| FederationError::NotFound(td.to_owned()))?;
        if slot.relationship.from_config {
            return Err(FederationError::FromConfig(key));
        }
        let ca = &self.inner.ca;
        ca.store().transaction(|tx| {
            fstore::delete_in(tx, key.as_str())?;
            ca.audit_change_in(
                tx,
                caller,
                "delete_federation",
                format!("federation with {key}"),
            )
            .map_err(FederationError::Ca)
        })?;
        if let Some(slot) = slots.remove(&key) {
            let _ = slot.stop.send(true);
        }
        drop(slots);
        tracing::info!(trust_domain = %key, "federation relationship deleted");
        self.inner.publish();
        Ok(())
    }

    /// Fetches the bundle of `td` now, and returns the relationship after.
    ///
    /// # Errors
    /// [`FederationError::NotFound`].
    pub async fn refresh(&self, td: &str) -> Result<View, FederationError> {
        let key = TrustDomain::new(td).map_err(|_| FederationError::NotFound(td.to_owned()))?;
        let wake = self
            .inner
            .lock()
            .get(&key)
            .map(|s| s.wake.clone())
            .ok_or_else(|| FederationError::NotFound(td.to_owned()))?;
        self.inner.attempt(&key).await;
        // The answer shows the next fetch; the poller reschedules to it.
        let _ = self.inner.next_delay(&key);
        wake.notify_one();
        self.get(td)
    }

    fn add(&self, relationship: Relationship, bundle: Option<TrustBundle>, status: FetchStatus) {
        let td = relationship.trust_domain.clone();
        let (stop, stopped) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        self.inner.lock().insert(
            td.clone(),
            Slot {
                relationship,
                bundle,
                status,
                next_fetch_at: 0,
                fetching: Arc::new(tokio::sync::Mutex::new(())),
                wake: wake.clone(),
                stop,
            },
        );
        self.inner.publish();
        let inner = self.inner.clone();
        tokio::spawn(
            inner
                .poll(td.clone(), wake, stopped)
                .instrument(tracing::info_span!("federation", trust_domain = %td)),
        );
    }
}

impl Slot {
    fn view(&self) -> View {
        View {
            relationship: self.relationship.clone(),
            bundle: self.bundle.clone(),
            status: self.status.clone(),
            next_fetch_at: self.next_fetch_at,
        }
    }
}

/// The interval the remote asks for, clamped to `[min, MAX_REFRESH]`.
pub fn refresh_interval(bundle: Option<&TrustBundle>, min: Duration) -> Duration {
    bundle
        .and_then(TrustBundle::refresh_hint)
        .filter(|h| !h.is_zero())
        .unwrap_or(DEFAULT_REFRESH)
        .clamp(min, MAX_REFRESH.max(min))
}

/// The wait after `failures` consecutive failures: doubling from `min`,
/// capped at the refresh interval.
pub fn backoff(failures: u32, min: Duration, interval: Duration) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(20);
    min.saturating_mul(factor).min(interval).max(min)
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<TrustDomain, Slot>> {
        // Every change under this lock is a plain assignment; a poisoned
        // lock holds consistent state.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps the federation lock while this replica has it, checking every
    /// [`POLLER_CHECK`] that its session still answers, and tries to take
    /// it when it does not have it. Becoming the poller wakes every
    /// relationship so that overdue fetches happen at once.
    async fn hold_poller(self: Arc<Self>, mut guard: Option<OnceGuard>) {
        let mut shutdown = self.shutdown.clone();
        loop {
            let stop = tokio::select! {
                () = tokio::time::sleep(POLLER_CHECK) => false,
                _ = shutdown.wait_for(|s| *s) => true,
            };
            let was = guard.is_some();
            let store = self.ca.store().clone();
            let checked = tokio::task::spawn_blocking(move || {
                if stop {
                    // Releases the lock off the async workers.
                    drop(guard);
                    return Ok(None);
                }
                match guard {
                    Some(held) if held.still_held() => Ok(Some(held)),
                    lost => {
                        drop(lost);
                        store.try_once(OnceWork::Federation)
                    }
                }
            })
            .await;
            if stop {
                return;
            }
            guard = match checked {
                Ok(Ok(g)) => g,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot take the federation lock");
                    None
                }
                Err(e) => {
                    tracing::error!(error = %e, "federation lock task failed");
                    None
                }
            };
            let now = guard.is_some();
            self.poller.store(now, Ordering::Relaxed);
            if now != was {
                if now {
                    tracing::info!("this replica now fetches the federated bundles");
                    for slot in self.lock().values() {
                        slot.wake.notify_one();
                    }
                } else {
                    tracing::warn!("this replica lost the federation lock; another fetches");
                }
            }
        }
    }

    /// Publishes the last good bundles when they changed.
    fn publish(&self) {
        let bundles: Vec<TrustBundle> = self
            .lock()
            .values()
            .filter_map(|s| s.bundle.clone())
            .collect();
        self.published.send_if_modified(|current| {
            if current.as_slice() == bundles.as_slice() {
                false
            } else {
                *current = Arc::new(bundles);
                true
            }
        });
    }

    /// When the next fetch of `td` is due, from now.
    fn next_delay(&self, td: &TrustDomain) -> Option<Duration> {
        let now = self.ca.now();
        let mut slots = self.lock();
        let slot = slots.get_mut(td)?;
        let interval = refresh_interval(slot.bundle.as_ref(), self.min_refresh);
        let (from, wait) = if slot.status.consecutive_failures > 0 {
            (
                slot.status.last_attempt_at,
                backoff(slot.status.consecutive_failures, self.min_refresh, interval),
            )
        } else if slot.bundle.is_some() && slot.status.last_success_at > 0 {
            (slot.status.last_success_at, interval)
        } else {
            (0, Duration::ZERO)
        };
        let due = SystemTime::UNIX_EPOCH + Duration::from_secs(from.max(0) as u64) + wait;
        let delay = due.duration_since(now).unwrap_or_default();
        slot.next_fetch_at = unix(now + delay);
        Some(delay)
    }

    async fn poll(
        self: Arc<Self>,
        td: TrustDomain,
        wake: Arc<Notify>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut shutdown = self.shutdown.clone();
        loop {
            let Some(delay) = self.next_delay(&td) else {
                return;
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = wake.notified() => continue,
                _ = stopped.wait_for(|s| *s) => return,
                _ = shutdown.wait_for(|s| *s) => return,
            }
            if !self.poller.load(Ordering::Relaxed) {
                // Another replica fetches; its results come by
                // notification (a reload wakes this task), or this one
                // becomes the poller (which wakes it too).
                tokio::select! {
                    () = wake.notified() => continue,
                    _ = stopped.wait_for(|s| *s) => return,
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
            tokio::select! {
                () = self.attempt(&td) => {}
                _ = stopped.wait_for(|s| *s) => return,
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// One fetch of `td`, checked and committed.
    async fn attempt(&self, td: &TrustDomain) {
        let Some((rel, last, fetching)) = self
            .lock()
            .get(td)
            .map(|s| (s.relationship.clone(), s.bundle.clone(), s.fetching.clone()))
        else {
            return;
        };
        let _one_at_a_time = fetching.lock().await;
        self.fetches.fetch_add(1, Ordering::Relaxed);
        // Re-read: a fetch that waited for the lock sees the one before it.
        let last = self.lock().get(td).map_or(last, |s| s.bundle.clone());
        let anchors = match (&rel.profile, &last) {
            (Profile::HttpsSpiffe { .. }, Some(b)) => b.clone(),
            (Profile::HttpsSpiffe { initial, .. }, None) => initial.clone(),
            (Profile::HttpsWeb { .. }, _) => TrustBundle::new(rel.trust_domain.clone()),
        };
        let result = match super::verify::client_config(&rel.profile, &anchors) {
            Ok(tls) => match super::fetch::fetch(&rel.url, tls).await {
                Ok(body) => check::check_update(&rel.trust_domain, last.as_ref(), &body)
                    .map_err(FetchError::from),
                Err(e) => Err(e),
            },
            Err(e) => Err(FetchError::Tls(e.to_string())),
        };
        self.commit(td, &fetching, result).await;
    }

    /// Records `result` in the relationship it was fetched for: not in a
    /// relationship of the same trust domain created after a delete.
    async fn commit(
        &self,
        td: &TrustDomain,
        fetched_for: &Arc<tokio::sync::Mutex<()>>,
        result: Result<Outcome, FetchError>,
    ) {
        let now = unix(self.ca.now());
        let (status, new_bundle) = {
            let mut slots = self.lock();
            let Some(slot) = slots
                .get_mut(td)
                .filter(|s| Arc::ptr_eq(&s.fetching, fetched_for))
            else {
                return;
            };
            slot.status.last_attempt_at = now;
            let new_bundle = match &result {
                Ok(Outcome::Replace(b)) => {
                    tracing::info!(
                        sequence = b.sequence(),
                        previous = slot.bundle.as_ref().map(TrustBundle::sequence),
                        x509_authorities = b.x509_authorities().len(),
                        jwt_authorities = b.jwt_authorities().len(),
                        "federated bundle updated"
                    );
                    slot.bundle = Some(b.clone());
                    Some(b.clone())
                }
                Ok(Outcome::Unchanged) => None,
                Err(e) => {
                    tracing::warn!(error = %e, failures = slot.status.consecutive_failures + 1, "federated bundle fetch failed; keeping the last good bundle");
                    None
                }
            };
            match &result {
                Ok(_) => {
                    slot.status.last_success_at = now;
                    slot.status.last_error.clear();
                    slot.status.consecutive_failures = 0;
                }
                Err(e) => {
                    slot.status.last_error = e.to_string();
                    slot.status.consecutive_failures =
                        slot.status.consecutive_failures.saturating_add(1);
                }
            }
            (slot.status.clone(), new_bundle)
        };
        let store = self.ca.store().clone();
        let key = td.as_str().to_owned();
        let saved = tokio::task::spawn_blocking(move || {
            fstore::record(&store, &key, new_bundle.as_ref(), &status)
        })
        .await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "could not persist the federated bundle"),
            Err(e) => tracing::error!(error = %e, "federation store task failed"),
        }
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refresh_hint_is_followed_within_bounds() {
        let min = Duration::from_secs(30);
        assert_eq!(refresh_interval(None, min), DEFAULT_REFRESH);
        let td = TrustDomain::new("remote.org").unwrap();
        let mut b = TrustBundle::new(td);
        b.set_refresh_hint(Some(Duration::from_secs(1)));
        assert_eq!(refresh_interval(Some(&b), min), min);
        b.set_refresh_hint(Some(Duration::from_secs(600)));
        assert_eq!(refresh_interval(Some(&b), min), Duration::from_secs(600));
        b.set_refresh_hint(Some(Duration::from_secs(10 * 86_400)));
        assert_eq!(refresh_interval(Some(&b), min), MAX_REFRESH);
    }

    #[test]
    fn backoff_doubles_up_to_the_interval() {
        let min = Duration::from_secs(1);
        let interval = Duration::from_secs(10);
        let waits: Vec<u64> = (1..=6)
            .map(|f| backoff(f, min, interval).as_secs())
            .collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff(u32::MAX, min, interval), interval);
    }
}
