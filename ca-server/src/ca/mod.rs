//! The certificate authority: holds the signing authorities and the bundle,
//! decides what each caller may obtain, signs, and records every decision in
//! the audit log. Transport-free: the gRPC layer in `api/` is a thin shell
//! that decodes, calls the CA and converts.
//!
//! One concern per file: `error` (what can fail), `signing` (the signing
//! state, its rotation, the authority list), `bundle`, `issue` (X.509-SVIDs and their
//! lifetimes), `jwt`, `nodes` (attestation, renewal, authorization),
//! `revocation` (current node SVIDs, eviction and bans),
//! `entries` (registration entries and join tokens), `replica` (this
//! process among the replicas sharing the store), `audit` (the auditor),
//! `authorities` (the key store), `rotation` (the rotation schedule and
//! the activation gate), `revoke` (taint and revoke), `crl` (CRLs of
//! revoked intermediates), `upstream` (following an upstream CA), `time` (integer/time conversions).

pub mod audit;
pub mod authorities;
pub mod bundle;
mod crl;
pub mod entries;
pub mod error;
pub mod issue;
pub mod jwt;
pub mod nodes;
mod orphans;
pub mod replica;
pub mod revocation;
mod revoke;
pub mod rotation;
pub mod signing;
pub mod time;
mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use signet_identity::TrustBundle;
use signet_identity::x509::SigningAuthority;
use tokio::sync::watch;

use crate::config::Config;
use crate::store::{self, AuditRecord, Store};
use audit::{Auditor, RefusalLimits};
use authorities::KeyStore;
pub use bundle::NodeBundle;
pub use entries::NewEntry;
pub use error::{CaError, OpenError};
pub use issue::{ItemResult, MeshLeaf, SignItem};
pub use jwt::{DEFAULT_JWT_TTL, MAX_JWT_TTL};
pub use nodes::token_hash;
pub use signing::Signing;
use time::unix;

/// The CA's clock; tests inject one they can move.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Most audit records deleted per batch by retention, and batches per run:
/// pruning never holds the store for long, and a backlog drains over runs.
const PRUNE_BATCH: usize = 1000;
const PRUNE_BATCHES_PER_RUN: usize = 20;

/// The CA.
pub struct Ca {
    config: Arc<Config>,
    store: Store,
    keys: KeyStore,
    auditor: Auditor,
    signing: RwLock<Arc<Signing>>,
    /// Serializes every writer of the authorities, the bundle and
    /// `signing` (the rotation tick and the admin's prepare, activate,
    /// taint, revoke), so that none overwrites another's new state.
    /// Readers never take it.
    rotation: Mutex<()>,
    bundle: watch::Sender<Arc<TrustBundle>>,
    node_bundle: watch::Sender<Arc<NodeBundle>>,
    /// Upstream-CA mode: the upstream CA and the bundle's root set.
    upstream: Option<RwLock<Upstream>>,
    /// Agents with an open WatchBundle stream (node SPIFFE ID -> streams):
    /// the ones activation waits for.
    connected: Mutex<HashMap<String, usize>>,
    entries: watch::Sender<u64>,
    /// Entries derived from Kubernetes pod policies (in memory, never stored).
    derived: Arc<crate::k8s::derived::DerivedEntries>,
    node_events: tokio::sync::broadcast::Sender<signet_identity::SpiffeId>,
    /// This process among the replicas sharing the store.
    replica_id: String,
    /// Since when (Unix seconds) this replica has reached the store without
    /// a failed heartbeat; 0 while it cannot. Only a replica that has been
    /// watching for a whole `replica_expiry` judges another one gone.
    store_up_since: std::sync::atomic::AtomicI64,
    clock: Clock,
}

impl Ca {
    /// Opens the data directory and the store, loads or creates the
    /// authorities, and publishes the bundle.
    ///
    /// # Errors
    /// Anything that prevents the CA from signing safely.
    pub fn open(config: Arc<Config>) -> Result<Self, OpenError> {
        Self::open_with_clock(config, Arc::new(SystemTime::now))
    }

    /// As [`Ca::open`], with an injected clock.
    ///
    /// # Errors
    /// As [`Ca::open`].
    pub fn open_with_clock(config: Arc<Config>, clock: Clock) -> Result<Self, OpenError> {
        for dir in [config.data_dir.clone(), config.data_dir.join("keys")] {
            signet_identity::fsutil::ensure_private_dir(&dir)
                .map_err(|source| OpenError::DataDir { path: dir, source })?;
        }
        let replica_id = replica::load_or_create_id(&config.data_dir)?;
        let store = Store::open_location(&config.store)?;
        let auditor = Auditor::new(store::AuditLog::start(&store)?, RefusalLimits::default());
        match store.meta("trust_domain")? {
            Some(td) if td != config.trust_domain.as_str() => {
                return Err(OpenError::TrustDomainMismatch {
                    store: store.describe(),
                    found: td,
                    configured: config.trust_domain.to_string(),
                });
            }
            Some(_) => {}
            None => store.set_meta("trust_domain", config.trust_domain.as_str())?,
        }
        let keys = KeyStore::new(config.clone(), store.clone(), &replica_id);
        let now = clock();
        let upstream = match &config.upstream_ca {
            Some((cert, key)) => {
                let mut up = Upstream::load(&config, &keys, cert, key)?;
                up.merge_stored_roots(&config, &store, now)?;
                Some(up)
            }
            None => None,
        };
        keys.bootstrap(
            now,
            upstream.as_ref().map(|u| (u.parent.as_ref(), &u.anchor)),
        )?;
        let rows = keys.own()?;
        // Nothing signs before the bundle is published: this first state
        // only exists while the CA is being opened.
        let unchecked = signing::load(&keys, &rows, upstream.as_ref(), Vec::new(), false)?;
        let (bundle_tx, _) =
            watch::channel(Arc::new(TrustBundle::new(config.trust_domain.clone())));
        let (node_bundle_tx, _) = watch::channel(Arc::new(NodeBundle {
            bundle: Arc::new(TrustBundle::new(config.trust_domain.clone())),
            tainted: Vec::new(),
            crls: Vec::new(),
            revoked: Vec::new(),
        }));
        let (entries_tx, _) = watch::channel(store.revision()?);
        let ca = Self {
            config,
            store,
            keys,
            auditor,
            signing: RwLock::new(Arc::new(unchecked)),
            rotation: Mutex::new(()),
            bundle: bundle_tx,
            node_bundle: node_bundle_tx,
            upstream: upstream.map(RwLock::new),
            connected: Mutex::new(HashMap::new()),
            entries: entries_tx,
            derived: Arc::default(),
            node_events: tokio::sync::broadcast::channel(revocation::NODE_EVENTS_CAPACITY).0,
            replica_id,
            store_up_since: std::sync::atomic::AtomicI64::new(time::unix(now)),
            clock,
        };
        ca.resume()?;
        Ok(ca)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The key store.
    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// The current time, from the injected clock.
    pub fn now(&self) -> SystemTime {
        (self.clock)()
    }

    /// The current signing state.
    pub fn signing(&self) -> Arc<Signing> {
        self.signing
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The current bundle.
    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.bundle.borrow().clone()
    }

    /// Follows the bundle.
    pub fn watch_bundle(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.bundle.subscribe()
    }

    /// What the node API's Bundle carries now.
    pub fn node_bundle(&self) -> Arc<NodeBundle> {
        self.node_bundle.borrow().clone()
    }

    /// Follows what the node API's Bundle carries.
    pub fn watch_node_bundle(&self) -> watch::Receiver<Arc<NodeBundle>> {
        self.node_bundle.subscribe()
    }

    /// The one writer of the authorities and the signing state.
    fn writer(&self) -> MutexGuard<'_, ()> {
        self.rotation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Upstream-CA mode: the bundle's roots.
    fn upstream_roots(&self) -> Option<Vec<CertificateDer<'static>>> {
        self.upstream.as_ref().map(|u| {
            u.read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .roots
                .clone()
        })
    }

    /// The entries derived from pod policies; their writer calls
    /// [`Ca::entries_changed`] after a change.
    pub fn derived(&self) -> &Arc<crate::k8s::derived::DerivedEntries> {
        &self.derived
    }

    /// Follows the entry revision.
    pub fn watch_entries(&self) -> watch::Receiver<u64> {
        self.entries.subscribe()
    }

    /// Logs and audits a refused request (best effort, rate limited).
    pub fn audit_rejection(&self, caller: &str, action: &str, spiffe_id: &str, err: &CaError) {
        tracing::info!(caller, action, spiffe_id, error = %err, "request refused");
        let now = self.now();
        self.auditor.best_effort(
            AuditRecord {
                at: unix(now),
                caller: caller.into(),
                action: action.into(),
                spiffe_id: spiffe_id.into(),
                result: "rejected".into(),
                detail: err.to_string(),
                ..AuditRecord::default()
            },
            err.kind(),
            now,
        );
    }

    /// Writes the refusal summaries of the current window before the CA
    /// stops, so that a restart loses no suppressed count.
    pub fn flush_audit_summaries(&self) {
        self.auditor.flush_all(self.now());
    }

    /// Periodic upkeep of the audit log: writes the summaries of refusal
    /// windows that have closed, and deletes records older than the
    /// retention period in bounded batches. Returns how many were deleted.
    ///
    /// # Errors
    /// Store errors while pruning.
    pub fn maintain_audit_log(&self) -> Result<usize, CaError> {
        let now = self.now();
        self.auditor.flush(now);
        let Some(cutoff) = now.checked_sub(self.config.audit_retention) else {
            return Ok(0);
        };
        // One replica prunes at a time; the others skip this turn.
        let Some(_pruning) = self.store.try_once(store::OnceWork::AuditPruning)? else {
            return Ok(0);
        };
        let mut deleted = 0;
        for _ in 0..PRUNE_BATCHES_PER_RUN {
            let n = self.store.prune_audit(unix(cutoff), PRUNE_BATCH)?;
            deleted += n;
            if n < PRUNE_BATCH {
                break;
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, retention = %humantime::format_duration(self.config.audit_retention), "pruned the audit log");
        }
        Ok(deleted)
    }

    /// Runs `f` as the audited operation `action` of `caller`: a refusal is
    /// recorded (best effort) before it is returned.
    fn refusing<T>(
        &self,
        caller: &str,
        action: &str,
        spiffe_id: &str,
        f: impl FnOnce() -> Result<T, CaError>,
    ) -> Result<T, CaError> {
        let result = f();
        if let Err(e) = &result {
            self.audit_rejection(caller, action, spiffe_id, e);
        }
        result
    }
}

/// Upstream-CA mode: the CA that signs our intermediates and the roots of
/// the bundle, each with the hash of the file it was read from, so that a
/// changed file is noticed.
pub struct Upstream {
    pub parent: Arc<SigningAuthority>,
    /// The top of the upstream chain.
    pub anchor: CertificateDer<'static>,
    /// The bundle's roots: the `upstream_bundle` file's, or `anchor`.
    pub roots: Vec<CertificateDer<'static>>,
    pub(crate) files_hash: Vec<u8>,
    pub(crate) bundle_hash: Vec<u8>,
    /// A changed upstream CA not yet signing our intermediates: it takes
    /// over once its root is in the bundle agents serve.
    pub(crate) pending: Option<PendingUpstream>,
}

/// A new upstream CA read from changed files.
pub struct PendingUpstream {
    pub parent: Arc<SigningAuthority>,
    pub anchor: CertificateDer<'static>,
    pub files_hash: Vec<u8>,
    /// Unix seconds when it was read.
    pub since: i64,
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ca::audit::SUPPRESSED;
    use crate::config::Settings;
    use testing::TestClock;

    #[test]
    fn a_flood_of_refusals_is_written_as_a_few_records_and_a_summary() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let ca = testing::open(dir.path(), &clock, Settings::default());
        let before = testing::audit(&ca).len();
        let limits = RefusalLimits::default();
        for port in 0..200u16 {
            let caller = format!("192.0.2.7:{}", 10_000 + port);
            let err = ca
                .attest_node("bogus", &testing::csr(), &caller)
                .unwrap_err();
            assert!(matches!(err, CaError::PermissionDenied(_)));
        }
        let written = testing::audit(&ca).split_off(before);
        assert_eq!(written.len(), limits.per_key as usize, "{written:?}");
        assert!(written.iter().all(|r| r.result == "rejected"));

        // Another reason from the same host is counted apart.
        ca.attest_node("", &testing::csr(), "192.0.2.7:1")
            .unwrap_err();
        assert_eq!(
            testing::audit(&ca).len(),
            before + limits.per_key as usize + 1
        );

        // When the window closes, one record tells how many were left out.
        clock.advance(limits.window);
        ca.maintain_audit_log().unwrap();
        let summary = testing::audit(&ca).pop().unwrap();
        assert_eq!(summary.result, SUPPRESSED);
        assert_eq!(summary.caller, "192.0.2.7");
        assert_eq!(summary.action, "attest_node");
        let expected = format!("suppressed {} similar refusals", 200 - limits.per_key);
        assert!(summary.detail.starts_with(&expected), "{}", summary.detail);
    }

    #[test]
    fn suppressed_refusals_are_summarised_when_the_ca_stops_mid_window() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let ca = testing::open(dir.path(), &clock, Settings::default());
        let limits = RefusalLimits::default();
        let extra = 7;
        for port in 0..(u16::try_from(limits.per_key).unwrap() + extra) {
            let caller = format!("192.0.2.9:{}", 20_000 + port);
            ca.attest_node("bogus", &testing::csr(), &caller)
                .unwrap_err();
        }
        // Upkeep before the window is over writes nothing more...
        let before = testing::audit(&ca).len();
        ca.maintain_audit_log().unwrap();
        assert_eq!(testing::audit(&ca).len(), before);
        // ...but stopping does, at once.
        ca.flush_audit_summaries();
        let summary = testing::audit(&ca).pop().unwrap();
        assert_eq!(summary.result, SUPPRESSED);
        assert_eq!(summary.caller, "192.0.2.9");
        assert!(
            summary
                .detail
                .starts_with(&format!("suppressed {extra} similar refusals")),
            "{}",
            summary.detail
        );
        // Nothing is counted twice once the window would have closed.
        clock.advance(limits.window);
        ca.maintain_audit_log().unwrap();
        assert_eq!(testing::audit(&ca).len(), before + 1);
    }

    #[test]
    fn refused_batch_items_are_rate_limited_and_issued_ones_always_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let ca = testing::open(dir.path(), &clock, Settings::default());
        let node = testing::attest(&ca, "n1");
        let entry = testing::entry(&ca, &node, "/web");
        let limits = RefusalLimits::default();
        let before = testing::audit(&ca).len();
        let mut items: Vec<SignItem> = (0..50)
            .map(|i| SignItem {
                entry_id: format!("nope-{i}"),
                csr: testing::csr(),
                ttl: None,
            })
            .collect();
        items.push(SignItem {
            entry_id: entry.id.clone(),
            csr: testing::csr(),
            ttl: None,
        });
        let results = ca.sign_batch(&node, &items).unwrap();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        let written = testing::audit(&ca).split_off(before);
        let count = |result: &str| written.iter().filter(|r| r.result == result).count();
        assert_eq!(count("rejected"), limits.per_key as usize);
        assert_eq!(count("issued"), 1);

        clock.advance(limits.window);
        ca.sign_batch(&node, &items[..1]).unwrap();
        let written = testing::audit(&ca).split_off(before);
        let summary = written.iter().find(|r| r.result == SUPPRESSED).unwrap();
        assert!(
            summary
                .detail
                .starts_with(&format!("suppressed {}", 50 - limits.per_key)),
            "{}",
            summary.detail
        );
    }

    #[test]
    fn audit_records_older_than_the_retention_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let settings = Settings {
            audit_retention: Some(Duration::from_secs(30 * 86_400)),
            ..Settings::default()
        };
        let ca = testing::open(dir.path(), &clock, settings);
        for i in 0..5 {
            ca.create_join_token(&format!("old{i}"), None, "admin")
                .unwrap();
        }
        let old = testing::audit(&ca).len();
        assert!(old >= 5);
        assert_eq!(ca.maintain_audit_log().unwrap(), 0, "nothing is old yet");

        clock.advance(Duration::from_secs(20 * 86_400));
        ca.create_join_token("recent", None, "admin").unwrap();
        clock.advance(Duration::from_secs(10 * 86_400 + 1));
        assert_eq!(ca.maintain_audit_log().unwrap(), old);
        let left = testing::audit(&ca);
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].spiffe_id, "spiffe://test.org/signet/node/recent");
    }
}
