//! The manager keeps the agent's snapshot true: it follows the bundle and the
//! node's authorized entries as streams from the CA, generates a key per
//! entry on this node, gets the SVIDs signed in batches, renews them at half
//! of their life (±10% jitter, so that a fleet started together does not
//! renew together), retries with exponential backoff while the CA is
//! unreachable, keeps serving still-valid SVIDs meanwhile and drops expired
//! ones. It is the only writer of the snapshot.

pub mod backoff;
pub mod trust;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use signet_identity::jwt;
use signet_identity::x509::{SvidError, authority_id};
use signet_identity::{
    KeyError, KeyType, PrivateKey, SpiffeId, SpiffeIdError, TrustBundle, TrustDomain,
};
use signet_proto::ca::v1 as pb;
use tokio::sync::{Notify, watch};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::Config;
use crate::node::client::{CaClient, ServerTrust};
use crate::node::{self, NodeError, NodeSvid};
use crate::state::{Entry, JwtSource, Selector, Snapshot, Svid};
use backoff::{Backoff, jitter_fraction};
use trust::Taint;

/// Most CSRs sent in one request.
const BATCH: usize = 200;
/// The shortest retry of a failed renewal, however close the expiry.
const RETRY_FLOOR: Duration = Duration::from_millis(500);

/// The wait before retrying a failed renewal: the backoff's `delay`, but no
/// more than an eighth of `left`, the life left of the soonest-expiring SVID
/// that is due (and never under [`RETRY_FLOOR`]).
fn capped_retry(delay: Duration, left: Option<Duration>) -> Duration {
    left.map_or(delay, |left| delay.min((left / 8).max(RETRY_FLOOR)))
}
/// How often the k8s_psat token file is checked for a rotated token.
const TOKEN_POLL: Duration = Duration::from_secs(2);
/// How long an SVID that does not validate against the served bundle yet
/// is held for the bundle that will validate it (the CA publishes a new
/// root before it signs with it, but the bundle stream may deliver it after
/// the signing call returns). After this the entry is signed again.
const AWAIT_BUNDLE: Duration = Duration::from_secs(30);

/// What can go wrong while following the CA.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The node identity or a bundle from the CA.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The k8s_psat token file cannot be read.
    #[error("k8s_psat token file {0}")]
    TokenFile(String),
    /// A bundle for another trust domain.
    #[error("the CA sent a bundle for {0}")]
    ForeignBundle(TrustDomain),
    /// A bundle that would leave nothing to verify with.
    #[error("the CA sent a bundle without X.509 authorities; keeping the current one")]
    EmptyBundle,
    /// A call to the CA failed.
    #[error("{code:?}: {message}")]
    Ca { code: tonic::Code, message: String },
    /// The CA ended a stream.
    #[error("the CA closed the stream")]
    StreamClosed,
    /// The CA replica drains: move to another now.
    #[error("the CA replica is draining")]
    Draining,
    /// The CA replica answered UNAVAILABLE: try another, with backoff.
    #[error("the CA replica is unavailable: {0}")]
    Unavailable(String),
    /// A key could not be generated.
    #[error("key: {0}")]
    Key(#[from] KeyError),
    /// An entry whose SPIFFE ID does not parse.
    #[error("entry {id}: {source}")]
    Entry {
        id: String,
        #[source]
        source: SpiffeIdError,
    },
    /// No bundle yet to check an SVID with.
    #[error("no trust bundle to verify the SVID against")]
    NoBundle,
    /// The CA's answer holds no certificate.
    #[error("empty certificate chain")]
    EmptyChain,
    /// A certificate that does not parse.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The certificate is for another key.
    #[error("the certificate is not for the key generated here")]
    WrongKey,
    /// The SVID would not validate for the entry against the served bundle.
    #[error("the SVID does not validate against the served bundle: {0}")]
    Invalid(#[from] SvidError),
}

impl From<tonic::Status> for ManagerError {
    fn from(s: tonic::Status) -> Self {
        if pb::is_drain(&s) {
            return Self::Draining;
        }
        // Said by the replica itself (a transport failure carries its cause).
        if s.code() == tonic::Code::Unavailable && std::error::Error::source(&s).is_none() {
            return Self::Unavailable(s.message().to_owned());
        }
        Self::Ca {
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

#[derive(Default)]
struct Inner {
    /// False until the first entry snapshot from the CA: until then the
    /// published snapshot has no bundle, which servers read as "not ready"
    /// (they wait) rather than "no identity" (they refuse).
    synced: bool,
    bundle: Option<Arc<TrustBundle>>,
    /// [`authority_id`] of each root of `bundle`.
    root_ids: Vec<String>,
    /// Federated bundles, CRLs and taints of the last bundle message.
    federated: BTreeMap<TrustDomain, Arc<TrustBundle>>,
    crls: Arc<[Vec<u8>]>,
    taints: Vec<Taint>,
    entries: BTreeMap<String, Arc<Entry>>,
    svids: BTreeMap<String, Arc<Svid>>,
    /// SVIDs from the CA that the served bundle does not validate yet, by
    /// entry id (see [`AWAIT_BUNDLE`]).
    awaiting: BTreeMap<String, Awaiting>,
    version: u64,
}

/// A signed SVID held back until the bundle that validates it is served: a
/// leaf is never served before its root.
struct Awaiting {
    entry: Arc<Entry>,
    svid: pb::X509Svid,
    key: PrivateKey,
    /// When the agent asked for it.
    requested_at: SystemTime,
    since: SystemTime,
}

impl Inner {
    /// When `svid` is due: its renewal time, or earlier when it chains
    /// through a tainted authority; at once when the root it chains to has
    /// left the bundle (revoked or pruned), since peers no longer accept it.
    fn due_at(&self, svid: &Svid) -> SystemTime {
        if !svid
            .chains_through
            .iter()
            .any(|id| self.root_ids.contains(id))
        {
            return svid.requested_at;
        }
        trust::reissue_deadline(
            &self.taints,
            &svid.entry_id,
            &svid.chains_through,
            svid.requested_at,
        )
        .map_or(svid.renew_at, |d| d.min(svid.renew_at))
    }

    /// Whether an SVID for `entry_id` is held back for a bundle, and still
    /// worth waiting for at `now`.
    fn is_awaiting(&self, entry_id: &str, now: SystemTime) -> bool {
        self.awaiting
            .get(entry_id)
            .is_some_and(|a| a.since + AWAIT_BUNDLE > now)
    }

    /// Serves the held-back SVIDs the current bundle validates; drops those
    /// whose entry is gone or whose wait is over.
    fn install_awaiting(&mut self, now: SystemTime) -> usize {
        let Some(bundle) = self.bundle.clone() else {
            return 0;
        };
        let mut installed = 0;
        for (id, held) in std::mem::take(&mut self.awaiting) {
            // Signed for what the entry was then: if it has changed since,
            // the SVID is not for it any more.
            if self
                .entries
                .get(&id)
                .is_none_or(|now| !now.same_svid(&held.entry))
            {
                continue;
            }
            match check_svid(&held.entry, &held.svid, &held.key, &bundle, now) {
                Ok(checked) => {
                    tracing::info!(entry = %id, serial = %held.svid.serial, "the bundle now validates a held-back SVID; serving it");
                    let svid = checked.into_svid(
                        &held.entry,
                        held.svid.serial,
                        held.key,
                        held.requested_at,
                    );
                    self.svids.insert(id, Arc::new(svid));
                    installed += 1;
                }
                Err(_) if held.since + AWAIT_BUNDLE > now => {
                    self.awaiting.insert(id, held);
                }
                Err(e) => {
                    tracing::error!(entry = %id, error = %e, "no bundle validated the SVID in time; signing again");
                }
            }
        }
        installed
    }
}

/// The keys generated for a signing call, with their entries, by entry id.
type PendingKeys = HashMap<String, (PrivateKey, Arc<Entry>)>;

/// A cached JWT-SVID is keyed by entry id and sorted audience.
type JwtKey = (String, Vec<String>);

/// A cached JWT-SVID: the token, when to fetch a new one, and the key id
/// that signed it.
struct CachedJwt {
    token: String,
    refresh_at: SystemTime,
    key_id: Option<String>,
}

/// The agent's manager.
pub struct Manager {
    config: Arc<Config>,
    /// Replaced by a fresh channel after each node SVID renewal.
    client: Mutex<CaClient>,
    node: Mutex<Arc<NodeSvid>>,
    inner: Mutex<Inner>,
    tx: watch::Sender<Arc<Snapshot>>,
    wake_certify: Notify,
    wake_status: Notify,
    wake_node: Notify,
    jwt_cache: Mutex<HashMap<JwtKey, CachedJwt>>,
}

impl Manager {
    /// A manager for an attested node.
    pub fn new(
        config: Arc<Config>,
        client: CaClient,
        node: NodeSvid,
        bundle: TrustBundle,
    ) -> Arc<Self> {
        let inner = Inner {
            root_ids: root_ids(&bundle),
            bundle: Some(Arc::new(bundle)),
            ..Inner::default()
        };
        let (tx, _) = watch::channel(Arc::new(Snapshot::default()));
        let m = Arc::new(Self {
            config,
            client: Mutex::new(client),
            node: Mutex::new(Arc::new(node)),
            inner: Mutex::new(inner),
            tx,
            wake_certify: Notify::new(),
            wake_status: Notify::new(),
            wake_node: Notify::new(),
            jwt_cache: Mutex::new(HashMap::new()),
        });
        m.publish();
        m
    }

    /// Follows the snapshots.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// The current CA client.
    fn client(&self) -> CaClient {
        self.client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn node_svid(&self) -> Arc<NodeSvid> {
        self.node
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// When the node SVID must be re-issued because it chains through a
    /// tainted authority, if it does.
    fn node_taint_deadline(&self, node: &NodeSvid) -> Option<SystemTime> {
        let inner = self.lock();
        let bundle = inner.bundle.as_deref()?;
        let through = trust::chains_through(&node.chain, bundle, SystemTime::now());
        trust::reissue_deadline(
            &inner.taints,
            node.spiffe_id.as_str(),
            &through,
            node.requested_at,
        )
    }

    /// Builds and sends a new snapshot from the current state, dropping
    /// expired SVIDs first. Everything a bundle message changes (own and
    /// federated bundles, CRLs) goes out in one snapshot, so every stream
    /// sees it at once.
    fn publish(&self) {
        let now = SystemTime::now();
        let node_pending = usize::from(self.node_taint_deadline(&self.node_svid()).is_some());
        let mut inner = self.lock();
        inner.svids.retain(|_, s| s.not_after > now);
        let reissue_pending = node_pending
            + inner
                .svids
                .values()
                .filter(|s| {
                    trust::reissue_deadline(
                        &inner.taints,
                        &s.entry_id,
                        &s.chains_through,
                        s.requested_at,
                    )
                    .is_some()
                })
                .count();
        inner.version += 1;
        let mut entries: Vec<Arc<Entry>> = inner.entries.values().cloned().collect();
        entries.sort_by(|a, b| (a.spiffe_id.as_str(), &a.id).cmp(&(b.spiffe_id.as_str(), &b.id)));
        let snapshot = Snapshot {
            bundle: if inner.synced {
                inner.bundle.clone()
            } else {
                None
            },
            federated: inner.federated.clone(),
            crls: inner.crls.clone(),
            entries,
            svids: inner.svids.clone(),
            reissue_pending,
            version: inner.version,
        };
        drop(inner);
        self.tx.send_replace(Arc::new(snapshot));
    }

    /// Runs every loop until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let tasks = vec![
            tokio::spawn(self.clone().node_renewal(shutdown.clone())),
            tokio::spawn(self.clone().follow_bundle(shutdown.clone())),
            tokio::spawn(self.clone().follow_entries(shutdown.clone())),
            tokio::spawn(self.clone().certify(shutdown.clone())),
            tokio::spawn(self.clone().report_status(shutdown.clone())),
        ];
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn node_renewal(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_secs(1), self.config.max_backoff);
        loop {
            let node = self.node_svid();
            let tainted = self.node_taint_deadline(&node);
            let renew_at = tainted.map_or(node.renew_at(), |t| t.min(node.renew_at()));
            let wait = renew_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // A taint may bring the renewal forward.
                _ = self.wake_node.notified() => continue,
                _ = shutdown.changed() => return,
                // k8s_psat: the kubelet rotated the token; attest with the new one.
                () = Self::token_rotated(self.config.k8s_psat_token_file.as_deref()) => {
                    let Some(bundle) = self.lock().bundle.clone() else {
                        return;
                    };
                    if let Err(e) = self.reattest_k8s_psat(&bundle).await {
                        tracing::warn!(error = %format!("{e:#}"), "k8s_psat re-attestation after token rotation failed");
                    }
                    continue;
                }
            }
            if tainted.is_some_and(|t| t <= SystemTime::now()) {
                tracing::info!("re-issuing the node SVID: it chains through a tainted authority");
            }
            let Some(bundle) = self.lock().bundle.clone() else {
                return;
            };
            match node::renew(&self.client(), &bundle).await {
                Ok(svid) => {
                    self.install_node_svid(svid, &bundle);
                    tracing::info!("renewed the node SVID");
                    backoff.reset();
                }
                Err(e) => {
                    crate::metrics::renewal_failed("node");
                    tracing::warn!(error = %format!("{e:#}"), "node SVID renewal failed");
                    // A Kubernetes node proves itself again with its current token.
                    if self.config.k8s_psat_token_file.is_some() {
                        match self.reattest_k8s_psat(&bundle).await {
                            Ok(()) => {
                                backoff.reset();
                                continue;
                            }
                            Err(e) => {
                                tracing::warn!(error = %format!("{e:#}"), "k8s_psat re-attestation failed")
                            }
                        }
                    }
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }

    /// A call on `client` failed with `error`. When its replica drains or
    /// answered UNAVAILABLE, later connections go to another first, and,
    /// when `client` is still the current one, calls move to a new channel
    /// at once (the old connection lives on only for the calls in flight on
    /// it). Streams on the same replica reopen on that channel too.
    fn ca_failed(&self, client: &CaClient, error: &ManagerError) {
        let marked = match error {
            ManagerError::Draining => client.drained(),
            ManagerError::Unavailable(_) => client.unavailable(),
            _ => None,
        };
        if marked.is_none() {
            return;
        }
        let mut current = self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.same_channel(client) {
            *current = current.fresh();
        }
    }

    /// Makes `svid` the node's credential: saved, used for new connections, published.
    fn install_node_svid(&self, svid: node::NodeSvid, bundle: &signet_identity::TrustBundle) {
        if let Err(e) = node::save(&self.config.data_dir, &svid, bundle) {
            tracing::error!(error = %format!("{e:#}"), "could not persist the node SVID");
        }
        let client = self.client();
        client.set_identity(svid.client_identity());
        // New calls and streams go over a connection made with the new SVID; the CA
        // ends streams on the old one when its certificate expires, and they
        // reconnect here.
        *self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = client.fresh();
        tracing::info!(node = %svid.spiffe_id, not_after = %humantime::format_rfc3339_seconds(svid.not_after), "new node SVID");
        *self
            .node
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(svid);
        crate::metrics::synced();
        self.publish();
        self.wake_status.notify_one();
    }

    /// Attests again with the projected token as it is now in its file.
    async fn reattest_k8s_psat(
        &self,
        bundle: &signet_identity::TrustBundle,
    ) -> Result<(), ManagerError> {
        let Some(path) = &self.config.k8s_psat_token_file else {
            return Ok(());
        };
        let token = tokio::fs::read(path)
            .await
            .map_err(|e| ManagerError::TokenFile(format!("{}: {e}", path.display())))?;
        let (svid, _) = node::attest(
            &self.client().fresh(),
            &node::NodeCredential::K8sPsat(token),
        )
        .await?;
        self.install_node_svid(svid, bundle);
        tracing::info!("attested again with the k8s_psat token");
        Ok(())
    }

    /// Resolves when the token file's content changes (polled: projected volumes are
    /// updated by symlink swaps that inotify on the file would miss); never without one.
    async fn token_rotated(path: Option<&std::path::Path>) {
        let Some(path) = path else {
            return std::future::pending().await;
        };
        let first = tokio::fs::read(path).await.ok();
        loop {
            tokio::time::sleep(TOKEN_POLL).await;
            let now = tokio::fs::read(path).await.ok();
            if now.is_some() && now != first {
                return;
            }
        }
    }

    async fn follow_bundle(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let this = self.clone();
        follow(
            "bundle",
            self.config.max_backoff,
            shutdown,
            move || {
                let client = this.client();
                let c = client.clone();
                (client, async move {
                    c.node().watch_bundle(pb::WatchBundleRequest {}).await
                })
            },
            |client, e| self.ca_failed(client, e),
            |b: pb::Bundle| self.apply_bundle(&b),
        )
        .await;
    }

    fn apply_bundle(&self, b: &pb::Bundle) -> Result<(), ManagerError> {
        let bundle = node::bundle_from_pb(b)?;
        if bundle.trust_domain() != &self.config.trust_domain {
            return Err(ManagerError::ForeignBundle(bundle.trust_domain().clone()));
        }
        if bundle.x509_authorities().is_empty() {
            return Err(ManagerError::EmptyBundle);
        }
        let federated = trust::federated_from_pb(&b.federated, &self.config.trust_domain);
        let crls = trust::crls_from_pb(&b.crls);
        let now = SystemTime::now();
        let (own_changed, taints_changed, installed) = {
            let mut inner = self.lock();
            let taints = trust::taints_from_pb(&b.tainted, &inner.taints, now);
            let own_changed = inner.bundle.as_deref() != Some(&bundle);
            let federated_changed = inner.federated != federated;
            let crls_changed = *inner.crls != *crls;
            let taints_changed = inner.taints != taints;
            if !(own_changed || federated_changed || crls_changed || taints_changed) {
                return Ok(());
            }
            if federated_changed {
                tracing::info!(
                    trust_domains = ?federated.keys().map(TrustDomain::as_str).collect::<Vec<_>>(),
                    "serving new federated bundles"
                );
            }
            if crls_changed {
                tracing::info!(crls = crls.len(), "serving new CRLs");
            }
            inner.root_ids = root_ids(&bundle);
            inner.bundle = Some(Arc::new(bundle.clone()));
            inner.federated = federated;
            inner.crls = crls;
            inner.taints = taints;
            let installed = if own_changed {
                inner.install_awaiting(now)
            } else {
                0
            };
            (own_changed, taints_changed, installed)
        };
        if own_changed {
            self.client()
                .set_trust(ServerTrust::Roots(bundle.x509_authorities().to_vec()));
            if let Err(e) = node::save(&self.config.data_dir, &self.node_svid(), &bundle) {
                tracing::error!(error = %format!("{e:#}"), "could not persist the bundle");
            }
            tracing::info!(
                sequence = bundle.sequence(),
                installed,
                "serving a new trust bundle"
            );
        }
        self.prune_jwt_cache(&bundle);
        if own_changed {
            // A root may have left: SVIDs under it are due at once.
            self.wake_certify.notify_one();
        }
        if taints_changed {
            let taints = self.lock().taints.clone();
            for t in &taints {
                tracing::info!(authority = %t.id, kind = ?t.kind, window = ?t.window, "an authority is tainted; re-issuing what chains through it within its window");
            }
            self.wake_certify.notify_one();
            self.wake_node.notify_one();
        }
        self.publish();
        self.wake_status.notify_one();
        Ok(())
    }

    /// Drops cached JWT-SVIDs signed by a key that is no longer published,
    /// or that is tainted: a validator would (soon) reject them.
    fn prune_jwt_cache(&self, bundle: &TrustBundle) {
        let tainted: Vec<String> = self
            .lock()
            .taints
            .iter()
            .filter(|t| t.kind == pb::AuthorityKind::Jwt)
            .map(|t| t.id.clone())
            .collect();
        let mut cache = self
            .jwt_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = cache.len();
        cache.retain(|_, c| {
            c.key_id.as_deref().is_some_and(|kid| {
                bundle.jwt_authority(kid).is_some() && !tainted.iter().any(|t| t == kid)
            })
        });
        if cache.len() < before {
            tracing::info!(
                dropped = before - cache.len(),
                "dropped cached JWT-SVIDs of keys no longer published or tainted"
            );
        }
    }

    async fn follow_entries(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let this = self.clone();
        follow(
            "entry",
            self.config.max_backoff,
            shutdown,
            move || {
                let client = this.client();
                let c = client.clone();
                (client, async move {
                    c.node()
                        .watch_authorized_entries(pb::WatchAuthorizedEntriesRequest {})
                        .await
                })
            },
            |client, e| self.ca_failed(client, e),
            |update: pb::AuthorizedEntriesUpdate| {
                self.apply_entries(update);
                Ok(())
            },
        )
        .await;
    }

    fn apply_entries(&self, update: pb::AuthorizedEntriesUpdate) {
        {
            let mut inner = self.lock();
            if update.snapshot {
                inner.entries.clear();
                inner.synced = true;
            }
            for id in &update.removed_ids {
                inner.entries.remove(id);
            }
            for e in update.upserted {
                match entry_from_pb(e) {
                    Ok(entry) if entry.is_path_only() => {
                        tracing::warn!(entry = %entry.id, spiffe_id = %entry.spiffe_id, "ignoring an entry that selects only by unix:path; add unix:uid or unix:gid");
                        inner.entries.remove(&entry.id);
                        inner.svids.remove(&entry.id);
                    }
                    Ok(entry) => {
                        // A changed entry (DNS names, TTL, ID) needs a new SVID.
                        if let Some(old) = inner.entries.get(&entry.id)
                            && !old.same_svid(&entry)
                        {
                            inner.svids.remove(&entry.id);
                            inner.awaiting.remove(&entry.id);
                        }
                        inner.entries.insert(entry.id.clone(), Arc::new(entry));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring an entry the CA sent")
                    }
                }
            }
            let Inner {
                entries,
                svids,
                awaiting,
                ..
            } = &mut *inner;
            svids.retain(|id, _| entries.contains_key(id));
            awaiting.retain(|id, _| entries.contains_key(id));
            tracing::info!(
                entries = entries.len(),
                revision = update.revision,
                "authorized entries updated"
            );
        }
        self.publish();
        self.wake_certify.notify_one();
    }

    async fn certify(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(500), self.config.max_backoff);
        loop {
            let due = self.due_entries(SystemTime::now());
            let mut failed = false;
            for chunk in due.chunks(BATCH) {
                if let Err(e) = self.sign_batch(chunk).await {
                    failed = true;
                    crate::metrics::renewal_failed("workload");
                    tracing::warn!(error = %format!("{e:#}"), "signing SVIDs failed; still-valid SVIDs stay in service");
                    break;
                }
            }
            // Expired SVIDs must disappear even when nothing else changes.
            self.publish();
            // What to wait for is decided from what is held *now*, after
            // signing: the earliest renewal (or expiry) of any SVID, and a
            // retry with backoff for entries still without an SVID.
            let (next_due, unserved, expiring) = {
                let now = SystemTime::now();
                let inner = self.lock();
                let mut next_due: Option<SystemTime> = None;
                let mut unserved = false;
                // The soonest expiry of an SVID that is due but still served.
                let mut expiring: Option<SystemTime> = None;
                for entry in inner.entries.values() {
                    if inner.is_awaiting(&entry.id, now) {
                        // Look again when the wait for its bundle is over.
                        if let Some(a) = inner.awaiting.get(&entry.id) {
                            let t = a.since + AWAIT_BUNDLE;
                            next_due = Some(next_due.map_or(t, |n| n.min(t)));
                        }
                        continue;
                    }
                    match inner.svids.get(&entry.id) {
                        Some(s) if inner.due_at(s) > now => {
                            let t = inner.due_at(s).min(s.not_after);
                            next_due = Some(next_due.map_or(t, |n| n.min(t)));
                        }
                        Some(s) if s.not_after > now => {
                            unserved = true;
                            expiring = Some(expiring.map_or(s.not_after, |e| e.min(s.not_after)));
                        }
                        _ => unserved = true,
                    }
                }
                (next_due, unserved, expiring)
            };
            let retry = if failed || unserved {
                // The backoff grows to max_backoff, but a retry never waits
                // past an eighth of what is left of a served SVID that is
                // due: a CA away for a while must not make it lapse.
                let left = expiring.and_then(|t| t.duration_since(SystemTime::now()).ok());
                capped_retry(backoff.next_delay(), left)
            } else {
                backoff.reset();
                Duration::from_secs(3600)
            };
            let until_due = next_due
                .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default())
                .unwrap_or(retry);
            let wait = retry.min(until_due);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake_certify.notified(), if !failed => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// The entries to sign for at `now`: those without an SVID, or whose
    /// SVID is due (renewal, or a taint), except those whose new SVID is
    /// held back for its bundle.
    fn due_entries(&self, now: SystemTime) -> Vec<Arc<Entry>> {
        let inner = self.lock();
        inner
            .entries
            .values()
            .filter(|e| !inner.is_awaiting(&e.id, now))
            .filter(|e| {
                inner
                    .svids
                    .get(&e.id)
                    .is_none_or(|s| inner.due_at(s) <= now)
            })
            .cloned()
            .collect()
    }

    async fn sign_batch(&self, entries: &[Arc<Entry>]) -> Result<(), ManagerError> {
        let mut keys = HashMap::with_capacity(entries.len());
        let mut items = Vec::with_capacity(entries.len());
        for e in entries {
            let key = PrivateKey::generate(KeyType::EcdsaP256)?;
            items.push(pb::SignRequestItem {
                entry_id: e.id.clone(),
                csr: key.csr_der()?,
                ttl_seconds: 0,
            });
            keys.insert(e.id.clone(), (key, e.clone()));
        }
        // Before the call: an SVID asked for before the agent saw a taint
        // may have been signed before it (see `trust::Taint::seen_at`).
        let requested_at = SystemTime::now();
        let client = self.client();
        let resp = match client
            .node()
            .batch_sign_x509_svid(pb::BatchSignX509SvidRequest { items })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let e = ManagerError::from(status);
                self.ca_failed(&client, &e);
                return Err(e);
            }
        };
        crate::metrics::synced();
        self.accept(resp.results, keys, requested_at);
        Ok(())
    }

    /// Takes the CA's answers to a signing call: serves each SVID that
    /// validates against the served bundle, holds back those signed by an
    /// authority the bundle does not carry yet, refuses the rest.
    fn accept(
        &self,
        results: Vec<pb::SignResult>,
        mut keys: PendingKeys,
        requested_at: SystemTime,
    ) -> usize {
        let mut issued = 0;
        {
            let mut inner = self.lock();
            let bundle = inner.bundle.clone();
            for r in results {
                let Some((key, entry)) = keys.remove(&r.entry_id) else {
                    continue;
                };
                match r.result {
                    Some(pb::sign_result::Result::Svid(svid)) => {
                        if !inner.entries.contains_key(&entry.id) {
                            continue;
                        }
                        let now = SystemTime::now();
                        match bundle
                            .as_deref()
                            .ok_or(ManagerError::NoBundle)
                            .and_then(|b| check_svid(&entry, &svid, &key, b, now))
                        {
                            Ok(checked) => {
                                let s = checked.into_svid(&entry, svid.serial, key, requested_at);
                                tracing::debug!(entry = %entry.id, spiffe_id = %s.spiffe_id, serial = %s.serial, "SVID issued");
                                inner.awaiting.remove(&entry.id);
                                inner.svids.insert(entry.id.clone(), Arc::new(s));
                                issued += 1;
                            }
                            // Signed by an authority the served bundle does
                            // not hold yet (a new root whose bundle is on
                            // its way): keep serving the current SVID and
                            // look again when the next bundle arrives.
                            Err(ManagerError::Invalid(SvidError::Path(reason))) => {
                                tracing::info!(entry = %entry.id, serial = %svid.serial, %reason, "the served bundle does not validate the new SVID yet; holding it for the next bundle");
                                inner.awaiting.insert(
                                    entry.id.clone(),
                                    Awaiting {
                                        entry: entry.clone(),
                                        svid,
                                        key,
                                        requested_at,
                                        since: now,
                                    },
                                );
                            }
                            Err(e) => {
                                tracing::error!(entry = %entry.id, error = %e, "refusing an SVID from the CA; not publishing it")
                            }
                        }
                    }
                    Some(pb::sign_result::Result::Error(e)) => {
                        crate::metrics::renewal_failed("workload");
                        tracing::warn!(entry = %entry.id, code = e.code, message = %e.message, "the CA refused an SVID");
                    }
                    None => {}
                }
            }
        }
        if issued > 0 {
            tracing::info!(issued, "SVIDs rotated");
            self.publish();
            self.wake_status.notify_one();
        }
        issued
    }

    /// What the agent reports: the bundle sequence it serves, how many SVIDs
    /// it holds, and the authorities those and its node SVID chain through
    /// (sorted, no repeats).
    fn status(&self) -> (u64, u32, Vec<String>) {
        let node = self.node_svid();
        let inner = self.lock();
        let mut through: std::collections::BTreeSet<String> = inner
            .svids
            .values()
            .flat_map(|s| s.chains_through.iter().cloned())
            .collect();
        if let Some(bundle) = inner.bundle.as_deref() {
            through.extend(trust::chains_through(
                &node.chain,
                bundle,
                SystemTime::now(),
            ));
        }
        (
            inner.bundle.as_ref().map_or(0, |b| b.sequence()),
            u32::try_from(inner.svids.len()).unwrap_or(u32::MAX),
            through.into_iter().collect(),
        )
    }

    async fn report_status(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut last_reported: Option<(u64, u32, Vec<String>)> = None;
        // A report that failed (the CA was away) is retried soon rather than
        // at the next heartbeat: the CA's activation gate waits for it.
        let mut failed = false;
        loop {
            let status = self.status();
            if failed || last_reported.as_ref() != Some(&status) {
                let req = pb::ReportStatusRequest {
                    bundle_sequence: status.0,
                    svid_count: status.1,
                    chains_through: status.2.clone(),
                };
                match self.client().node().report_status(req).await {
                    Ok(_) => {
                        crate::metrics::synced();
                        last_reported = Some(status);
                        failed = false;
                    }
                    Err(s) => {
                        failed = true;
                        tracing::debug!(code = ?s.code(), message = %s.message(), "status report failed")
                    }
                }
            }
            let wait = if failed || last_reported.is_none() {
                2
            } else {
                30
            };
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(wait)) => {
                    // Heartbeat: report again even without a change.
                    last_reported = None;
                }
                _ = self.wake_status.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[tonic::async_trait]
impl JwtSource for Manager {
    async fn fetch_jwt(
        &self,
        entry_id: &str,
        audience: &[String],
    ) -> Result<String, tonic::Status> {
        let mut aud = audience.to_vec();
        aud.sort();
        let key = (entry_id.to_owned(), aud);
        let now = SystemTime::now();
        if let Some(cached) = self
            .jwt_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            && cached.refresh_at > now
        {
            return Ok(cached.token.clone());
        }
        let resp = self
            .client()
            .node()
            .mint_jwt_svid(pb::MintJwtSvidRequest {
                entry_id: entry_id.to_owned(),
                audience: audience.to_vec(),
                ttl_seconds: 0,
            })
            .await?
            .into_inner();
        let exp = SystemTime::UNIX_EPOCH + Duration::from_secs(resp.expires_at.max(0) as u64);
        let refresh_at = now + exp.duration_since(now).unwrap_or_default() / 2;
        let mut cache = self
            .jwt_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.retain(|_, c| c.refresh_at > now);
        cache.insert(
            key,
            CachedJwt {
                token: resp.token.clone(),
                refresh_at,
                key_id: jwt::peek_key_id(&resp.token).ok(),
            },
        );
        Ok(resp.token)
    }
}

/// Follows a server stream from the CA until `shutdown`: opens it, applies
/// every message, and after an error or the end of the stream reopens it
/// with exponential backoff and jitter (reset by every message applied).
/// Errors go to `failed` (which may move the agent to another replica); a
/// draining replica's "move now" is no failure: the stream is reopened at
/// once, on another replica.
async fn follow<T, F, Fut>(
    what: &str,
    max_backoff: Duration,
    mut shutdown: watch::Receiver<bool>,
    open: F,
    failed: impl Fn(&CaClient, &ManagerError),
    mut apply: impl FnMut(T) -> Result<(), ManagerError>,
) where
    F: Fn() -> (CaClient, Fut),
    Fut: std::future::Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), max_backoff);
    // Moved at once after a drain, and nothing applied since: a second
    // drain in a row backs off (a replica must not make the agent spin).
    let mut just_moved = false;
    loop {
        let (client, opening) = open();
        let result: Result<(), ManagerError> = async {
            let mut stream = opening.await?.into_inner();
            loop {
                tokio::select! {
                    msg = stream.message() => match msg? {
                        Some(m) => {
                            apply(m)?;
                            crate::metrics::synced();
                            backoff.reset();
                            just_moved = false;
                        }
                        None => return Err(ManagerError::StreamClosed),
                    },
                    _ = shutdown.changed() => return Ok(()),
                }
            }
        }
        .await;
        if *shutdown.borrow() {
            return;
        }
        if let Err(e) = &result {
            failed(&client, e);
        }
        if matches!(result, Err(ManagerError::Draining)) && !just_moved {
            just_moved = true;
            tracing::info!(replica = ?client.replica(), "the CA replica drains; moving the {what} stream to another at once");
            continue;
        }
        let delay = backoff.next_delay();
        if let Err(e) = result {
            tracing::warn!(error = %e, retry_in = ?delay, "{what} stream interrupted");
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

fn entry_from_pb(e: pb::Entry) -> Result<Entry, ManagerError> {
    // A name that is not a trust domain costs the entry that federation,
    // not its identity.
    let federates_with = e
        .federates_with
        .iter()
        .filter_map(|name| match TrustDomain::new(name) {
            Ok(td) => Some(td),
            Err(error) => {
                tracing::warn!(entry = %e.id, name = %name, %error, "ignoring a federates_with name that is not a trust domain");
                None
            }
        })
        .collect();
    Ok(Entry {
        spiffe_id: SpiffeId::parse(&e.spiffe_id).map_err(|source| ManagerError::Entry {
            id: e.id.clone(),
            source,
        })?,
        id: e.id,
        selectors: e
            .selectors
            .into_iter()
            .map(|s| Selector::new(s.r#type, s.value))
            .collect(),
        ttl_seconds: e.x509_svid_ttl_seconds,
        dns_names: e.dns_names,
        revision: e.revision,
        federates_with,
    })
}

/// The ids of `bundle`'s roots.
fn root_ids(bundle: &TrustBundle) -> Vec<String> {
    bundle
        .x509_authorities()
        .iter()
        .map(|c| authority_id(c))
        .collect()
}

/// An SVID from the CA that passed [`check_svid`].
struct Checked {
    spiffe_id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    not_before: SystemTime,
    not_after: SystemTime,
    chains_through: Vec<String>,
}

impl Checked {
    /// The SVID to serve, asked for at `requested_at`.
    fn into_svid(
        self,
        entry: &Entry,
        serial: String,
        key: PrivateKey,
        requested_at: SystemTime,
    ) -> Svid {
        // Half of the lifetime, ±10%.
        let renew_at = node::renew_time(
            self.not_before,
            self.not_after,
            requested_at,
            0.5 * (0.9 + 0.2 * jitter_fraction()),
        );
        Svid {
            entry_id: entry.id.clone(),
            spiffe_id: self.spiffe_id,
            chain: self.chain,
            key,
            serial,
            not_before: self.not_before,
            not_after: self.not_after,
            renew_at,
            requested_at,
            chains_through: self.chains_through,
        }
    }
}

/// An SVID from the CA, checked before anything is published: it must be
/// for the key generated here, and validate, as a workload's peer would
/// check it, against the bundle the agent serves, for the entry's SPIFFE ID.
fn check_svid(
    entry: &Entry,
    svid: &pb::X509Svid,
    key: &PrivateKey,
    bundle: &TrustBundle,
    now: SystemTime,
) -> Result<Checked, ManagerError> {
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let leaf = chain.first().ok_or(ManagerError::EmptyChain)?;
    let (_, cert) =
        X509Certificate::from_der(leaf).map_err(|e| ManagerError::Certificate(e.to_string()))?;
    if cert.public_key().raw != key.public_key_spki().as_slice() {
        return Err(ManagerError::WrongKey);
    }
    let verified =
        signet_identity::x509::verify::verify_x509_svid_for(&chain, bundle, &entry.spiffe_id, now)?;
    let not_before = SystemTime::from(cert.validity().not_before.to_datetime());
    let not_after = SystemTime::from(cert.validity().not_after.to_datetime());
    let chains_through = trust::chains_through(&chain, bundle, now);
    Ok(Checked {
        spiffe_id: verified.spiffe_id,
        chain,
        not_before,
        not_after,
        chains_through,
    })
}

/// [`check_svid`], then the SVID to serve.
#[cfg(test)]
fn svid_from_pb(
    entry: &Entry,
    svid: pb::X509Svid,
    key: PrivateKey,
    bundle: &TrustBundle,
    now: SystemTime,
) -> Result<Svid, ManagerError> {
    let checked = check_svid(entry, &svid, &key, bundle, now)?;
    Ok(checked.into_svid(entry, svid.serial, key, now))
}

#[cfg(test)]
mod lifecycle;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pki::TestCa;

    #[test]
    fn a_failed_renewal_is_retried_well_before_the_served_svid_expires() {
        let s = Duration::from_secs;
        // Far from expiry: the backoff as it is.
        assert_eq!(capped_retry(s(2), Some(s(3600))), s(2));
        assert_eq!(capped_retry(s(30), None), s(30));
        // 24 s left: at most 3 s between tries, however long the backoff.
        assert_eq!(capped_retry(s(30), Some(s(24))), s(3));
        // Almost expired: every half second, never a busy loop.
        assert_eq!(capped_retry(s(30), Some(Duration::ZERO)), RETRY_FLOOR);
        assert_eq!(
            capped_retry(Duration::from_millis(100), Some(s(1))),
            Duration::from_millis(100)
        );
    }

    fn entry(id: &str) -> Entry {
        Entry {
            id: "e1".into(),
            spiffe_id: SpiffeId::parse(id).unwrap(),
            selectors: vec![Selector::new("unix", "uid:1")],
            ttl_seconds: 0,
            dns_names: vec![],
            revision: 1,
            federates_with: vec![],
        }
    }

    fn answer(cert: &signet_identity::x509::IssuedCert, id: &str) -> pb::X509Svid {
        pb::X509Svid {
            spiffe_id: id.into(),
            cert_chain: cert.chain.iter().map(|c| c.to_vec()).collect(),
            serial: cert.serial_hex(),
            ..pb::X509Svid::default()
        }
    }

    const WEB: &str = "spiffe://example.org/web";

    #[test]
    fn a_good_svid_is_accepted() {
        let ca = TestCa::new("example.org");
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let cert = ca.issue_for(&key, WEB, &[]);
        let svid = svid_from_pb(
            &entry(WEB),
            answer(&cert, WEB),
            key,
            &ca.bundle,
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(svid.spiffe_id.as_str(), WEB);
    }

    #[test]
    fn an_svid_that_would_not_validate_is_never_published() {
        let ca = TestCa::new("example.org");
        let other = TestCa::new("example.org");
        let now = SystemTime::now();

        // Signed by a CA outside the served bundle.
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let cert = other.issue_for(&key, WEB, &[]);
        let err = svid_from_pb(&entry(WEB), answer(&cert, WEB), key, &ca.bundle, now).unwrap_err();
        assert!(matches!(err, ManagerError::Invalid(_)), "{err}");

        // A certificate for another SPIFFE ID, whatever the answer claims.
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let cert = ca.issue_for(&key, "spiffe://example.org/admin", &[]);
        let err = svid_from_pb(&entry(WEB), answer(&cert, WEB), key, &ca.bundle, now).unwrap_err();
        assert!(matches!(err, ManagerError::Invalid(_)), "{err}");

        // For another key.
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let (_, cert) = ca.issue(WEB, &[]);
        let err = svid_from_pb(&entry(WEB), answer(&cert, WEB), key, &ca.bundle, now).unwrap_err();
        assert!(matches!(err, ManagerError::WrongKey), "{err}");

        // Not valid yet / any more at `now`.
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let cert = ca.issue_for(&key, WEB, &[]);
        let later = now + std::time::Duration::from_secs(7200);
        let err =
            svid_from_pb(&entry(WEB), answer(&cert, WEB), key, &ca.bundle, later).unwrap_err();
        assert!(matches!(err, ManagerError::Invalid(_)), "{err}");

        // An empty chain.
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let empty = pb::X509Svid {
            spiffe_id: WEB.into(),
            ..pb::X509Svid::default()
        };
        let err = svid_from_pb(&entry(WEB), empty, key, &ca.bundle, now).unwrap_err();
        assert!(matches!(err, ManagerError::EmptyChain), "{err}");
    }
}
