//! The manager keeps the agent's snapshot true: it follows the bundle and the
//! node's authorized entries as streams from the CA, generates a key per
//! entry on this node, gets the SVIDs signed in batches, renews them at half
//! of their life (±10% jitter, so that a fleet started together does not
//! renew together), retries with exponential backoff while the CA is
//! unreachable, keeps serving still-valid SVIDs meanwhile and drops expired
//! ones. It is the only writer of the snapshot.

pub mod backoff;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use signet_identity::x509::SvidError;
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

/// Most CSRs sent in one request.
const BATCH: usize = 200;

/// What can go wrong while following the CA.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The node identity or a bundle from the CA.
    #[error(transparent)]
    Node(#[from] NodeError),
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
    entries: BTreeMap<String, Arc<Entry>>,
    svids: BTreeMap<String, Arc<Svid>>,
    version: u64,
}

/// A cached JWT-SVID is keyed by entry id and sorted audience.
type JwtKey = (String, Vec<String>);

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
    jwt_cache: Mutex<HashMap<JwtKey, (String, SystemTime)>>,
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

    /// Builds and sends a new snapshot from the current state, dropping
    /// expired SVIDs first.
    fn publish(&self) {
        let now = SystemTime::now();
        let mut inner = self.lock();
        inner.svids.retain(|_, s| s.not_after > now);
        inner.version += 1;
        let mut entries: Vec<Arc<Entry>> = inner.entries.values().cloned().collect();
        entries.sort_by(|a, b| (a.spiffe_id.as_str(), &a.id).cmp(&(b.spiffe_id.as_str(), &b.id)));
        let snapshot = Snapshot {
            bundle: if inner.synced {
                inner.bundle.clone()
            } else {
                None
            },
            federated: BTreeMap::new(),
            entries,
            svids: inner.svids.clone(),
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
            let renew_at = self
                .node
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .renew_at();
            let wait = renew_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            let Some(bundle) = self.lock().bundle.clone() else {
                return;
            };
            match node::renew(&self.client(), &bundle).await {
                Ok(svid) => {
                    if let Err(e) = node::save(&self.config.data_dir, &svid, &bundle) {
                        tracing::error!(error = %format!("{e:#}"), "could not persist the renewed node SVID");
                    }
                    let client = self.client();
                    client.set_identity(svid.client_identity());
                    // New calls and streams go over a connection made with
                    // the new SVID; the CA ends streams on the old one when
                    // its certificate expires, and they reconnect here.
                    *self
                        .client
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = client.fresh();
                    tracing::info!(not_after = %humantime::format_rfc3339_seconds(svid.not_after), "renewed the node SVID");
                    *self
                        .node
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(svid);
                    backoff.reset();
                    crate::metrics::synced();
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    crate::metrics::renewal_failed("node");
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "node SVID renewal failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => return,
                    }
                }
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
                async move { client.node().watch_bundle(pb::WatchBundleRequest {}).await }
            },
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
        {
            let mut inner = self.lock();
            if inner.bundle.as_deref() == Some(&bundle) {
                return Ok(());
            }
            inner.bundle = Some(Arc::new(bundle.clone()));
        }
        self.client()
            .set_trust(ServerTrust::Roots(bundle.x509_authorities().to_vec()));
        let node = self
            .node
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Err(e) = node::save(&self.config.data_dir, &node, &bundle) {
            tracing::error!(error = %format!("{e:#}"), "could not persist the bundle");
        }
        tracing::info!(sequence = bundle.sequence(), "serving a new trust bundle");
        self.publish();
        self.wake_status.notify_one();
        Ok(())
    }

    async fn follow_entries(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let this = self.clone();
        follow(
            "entry",
            self.config.max_backoff,
            shutdown,
            move || {
                let client = this.client();
                async move {
                    client
                        .node()
                        .watch_authorized_entries(pb::WatchAuthorizedEntriesRequest {})
                        .await
                }
            },
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
                            && (old.spiffe_id != entry.spiffe_id
                                || old.dns_names != entry.dns_names
                                || old.ttl_seconds != entry.ttl_seconds)
                        {
                            inner.svids.remove(&entry.id);
                        }
                        inner.entries.insert(entry.id.clone(), Arc::new(entry));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring an entry the CA sent")
                    }
                }
            }
            let Inner { entries, svids, .. } = &mut *inner;
            svids.retain(|id, _| entries.contains_key(id));
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
            let due: Vec<Arc<Entry>> = {
                let now = SystemTime::now();
                let inner = self.lock();
                inner
                    .entries
                    .values()
                    .filter(|e| inner.svids.get(&e.id).is_none_or(|s| s.renew_at <= now))
                    .cloned()
                    .collect()
            };
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
            let (next_due, unserved) = {
                let now = SystemTime::now();
                let inner = self.lock();
                let mut next_due: Option<SystemTime> = None;
                let mut unserved = false;
                for entry in inner.entries.values() {
                    match inner.svids.get(&entry.id) {
                        Some(s) if s.renew_at > now => {
                            let t = s.renew_at.min(s.not_after);
                            next_due = Some(next_due.map_or(t, |n| n.min(t)));
                        }
                        _ => unserved = true,
                    }
                }
                (next_due, unserved)
            };
            let retry = if failed || unserved {
                backoff.next_delay()
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
        let resp = self
            .client()
            .node()
            .batch_sign_x509_svid(pb::BatchSignX509SvidRequest { items })
            .await?
            .into_inner();
        crate::metrics::synced();
        let mut issued = 0;
        {
            let mut inner = self.lock();
            let bundle = inner.bundle.clone();
            for r in resp.results {
                let Some((key, entry)) = keys.remove(&r.entry_id) else {
                    continue;
                };
                match r.result {
                    Some(pb::sign_result::Result::Svid(svid)) => {
                        match bundle
                            .as_deref()
                            .ok_or(ManagerError::NoBundle)
                            .and_then(|b| svid_from_pb(&entry, svid, key, b, SystemTime::now()))
                        {
                            Ok(s) => {
                                if inner.entries.contains_key(&entry.id) {
                                    tracing::debug!(entry = %entry.id, spiffe_id = %s.spiffe_id, serial = %s.serial, "SVID issued");
                                    inner.svids.insert(entry.id.clone(), Arc::new(s));
                                    issued += 1;
                                }
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
        Ok(())
    }

    async fn report_status(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut last_reported: Option<(u64, u32)> = None;
        loop {
            let (sequence, count) = {
                let inner = self.lock();
                (
                    inner.bundle.as_ref().map_or(0, |b| b.sequence()),
                    inner.svids.len() as u32,
                )
            };
            if last_reported != Some((sequence, count)) {
                let req = pb::ReportStatusRequest {
                    bundle_sequence: sequence,
                    svid_count: count,
                    chains_through: Vec::new(),
                };
                match self.client().node().report_status(req).await {
                    Ok(_) => {
                        crate::metrics::synced();
                        last_reported = Some((sequence, count));
                    }
                    Err(s) => {
                        tracing::debug!(code = ?s.code(), message = %s.message(), "status report failed")
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(if last_reported.is_some() { 30 } else { 2 })) => {
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
        if let Some((token, refresh_at)) = self
            .jwt_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            && *refresh_at > now
        {
            return Ok(token.clone());
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
        cache.retain(|_, (_, r)| *r > now);
        cache.insert(key, (resp.token.clone(), refresh_at));
        Ok(resp.token)
    }
}

/// Follows a server stream from the CA until `shutdown`: opens it, applies
/// every message, and after an error or the end of the stream reopens it
/// with exponential backoff and jitter (reset by every message applied).
async fn follow<T, F, Fut>(
    what: &str,
    max_backoff: Duration,
    mut shutdown: watch::Receiver<bool>,
    open: F,
    mut apply: impl FnMut(T) -> Result<(), ManagerError>,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), max_backoff);
    loop {
        let result: Result<(), ManagerError> = async {
            let mut stream = open().await?.into_inner();
            loop {
                tokio::select! {
                    msg = stream.message() => match msg? {
                        Some(m) => {
                            apply(m)?;
                            crate::metrics::synced();
                            backoff.reset();
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
    })
}

/// An SVID from the CA, checked before anything is published: it must be
/// for the key generated here, and validate, as a workload's peer would
/// check it, against the bundle the agent serves, for the entry's SPIFFE ID.
fn svid_from_pb(
    entry: &Entry,
    svid: pb::X509Svid,
    key: PrivateKey,
    bundle: &TrustBundle,
    now: SystemTime,
) -> Result<Svid, ManagerError> {
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain
        .into_iter()
        .map(CertificateDer::from)
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
    // Half of the lifetime, ±10%.
    let renew_at = node::renew_time(
        not_before,
        not_after,
        now,
        0.5 * (0.9 + 0.2 * jitter_fraction()),
    );
    Ok(Svid {
        entry_id: entry.id.clone(),
        spiffe_id: verified.spiffe_id,
        chain,
        key,
        serial: svid.serial,
        not_before,
        not_after,
        renew_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pki::TestCa;

    fn entry(id: &str) -> Entry {
        Entry {
            id: "e1".into(),
            spiffe_id: SpiffeId::parse(id).unwrap(),
            selectors: vec![Selector::new("unix", "uid:1")],
            ttl_seconds: 0,
            dns_names: vec![],
            revision: 1,
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
