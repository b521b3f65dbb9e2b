//! What the agent serves, published as one immutable snapshot on a
//! `tokio::sync::watch` channel: the trust bundle(s), the node's authorized
//! entries and the SVID held for each. Servers (Workload API, SDS, file
//! delivery) only read snapshots; the manager is the only writer, and a new
//! snapshot replaces the old one whole, so readers never block it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use signet_identity::{PrivateKey, SpiffeId, TrustBundle, TrustDomain};

/// A selector, e.g. type `unix`, value `uid:1000`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    pub kind: String,
    pub value: String,
}

impl Selector {
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            value: value.into(),
        }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// A registration entry the node is authorized for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub spiffe_id: SpiffeId,
    pub selectors: Vec<Selector>,
    pub ttl_seconds: i64,
    pub dns_names: Vec<String>,
    pub revision: u64,
    /// Trust domains whose bundles the entry's workloads receive beside
    /// their own (federation); never the agent's own trust domain.
    pub federates_with: Vec<TrustDomain>,
}

impl Entry {
    /// Whether a caller with `selectors` matches this entry: every selector
    /// of the entry must be among the caller's. An entry that selects only
    /// by executable path matches nobody (see [`Entry::is_path_only`]).
    pub fn matches(&self, selectors: &[Selector]) -> bool {
        !self.selectors.is_empty()
            && !self.is_path_only()
            && self.selectors.iter().all(|s| selectors.contains(s))
    }

    /// Whether an SVID signed for `other` is one for this entry too: same
    /// SPIFFE ID, DNS names and TTL (selectors and federation do not go into
    /// the certificate).
    pub fn same_svid(&self, other: &Entry) -> bool {
        self.spiffe_id == other.spiffe_id
            && self.dns_names == other.dns_names
            && self.ttl_seconds == other.ttl_seconds
    }

    /// Whether every selector is `unix:path:...`. The path of a process is
    /// read from /proc when it calls, not when it connected: a process can
    /// connect, hand the socket to a child and exec the registered binary,
    /// and be attested as that binary. `unix:uid`/`unix:gid` come from the
    /// kernel's record of the connecting process and cannot be changed that
    /// way, so a path must be combined with them.
    pub fn is_path_only(&self) -> bool {
        !self.selectors.is_empty()
            && self
                .selectors
                .iter()
                .all(|s| s.kind == "unix" && s.value.starts_with("path:"))
    }
}

/// An X.509-SVID held by the agent for one entry. The key never leaves the node.
#[derive(Debug)]
pub struct Svid {
    pub entry_id: String,
    pub spiffe_id: SpiffeId,
    /// Leaf first, then intermediates (no root).
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKey,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When the manager will renew it (half of the lifetime, ±10% jitter).
    pub renew_at: SystemTime,
    /// When the agent received it (its own clock).
    pub requested_at: SystemTime,
    /// Ids ([`signet_identity::x509::authority_id`]) of the intermediates in
    /// the chain and of the root that validates it.
    pub chains_through: Vec<String>,
}

/// Everything the agent serves at one moment.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// The agent's own trust domain bundle.
    pub bundle: Option<Arc<TrustBundle>>,
    /// Bundles of other trust domains (federation). A caller receives only
    /// those its matching entries federate with.
    pub federated: BTreeMap<TrustDomain, Arc<TrustBundle>>,
    /// DER CRLs of the own trust domain (revoked intermediates), for
    /// validators that check revocation; empty when none is published.
    pub crls: Arc<[Vec<u8>]>,
    /// Authorized entries, ordered by SPIFFE ID then entry id.
    pub entries: Vec<Arc<Entry>>,
    /// The current SVID of each entry that has one, by entry id.
    pub svids: BTreeMap<String, Arc<Svid>>,
    /// SVIDs (workload and node) that chain through a tainted authority
    /// and wait for their early re-issue.
    pub reissue_pending: usize,
    /// Bumped on every change.
    pub version: u64,
}

impl Snapshot {
    /// The valid SVIDs a caller with `selectors` is entitled to; the first is
    /// the default. Expired SVIDs are never returned.
    pub fn svids_for(&self, selectors: &[Selector], now: SystemTime) -> Vec<Arc<Svid>> {
        self.entries
            .iter()
            .filter(|e| e.matches(selectors))
            .filter_map(|e| self.svids.get(&e.id))
            .filter(|s| s.not_after > now)
            .cloned()
            .collect()
    }

    /// The entries a caller with `selectors` matches (whether or not an SVID
    /// is held for them yet).
    pub fn entries_for(&self, selectors: &[Selector]) -> Vec<Arc<Entry>> {
        self.entries
            .iter()
            .filter(|e| e.matches(selectors))
            .cloned()
            .collect()
    }

    /// The federated bundles a caller with `selectors` receives: those of
    /// the trust domains its matching entries federate with (and the agent
    /// holds), in trust domain order.
    pub fn federated_for(&self, selectors: &[Selector]) -> Vec<Arc<TrustBundle>> {
        let wanted: std::collections::BTreeSet<&TrustDomain> = self
            .entries
            .iter()
            .filter(|e| e.matches(selectors))
            .flat_map(|e| e.federates_with.iter())
            .collect();
        wanted
            .into_iter()
            .filter(|td| {
                self.bundle
                    .as_ref()
                    .is_none_or(|own| own.trust_domain() != *td)
            })
            .filter_map(|td| self.federated.get(td).cloned())
            .collect()
    }

    /// The bundles a caller with `selectors` receives: the own one first,
    /// then the federated ones its entries federate with.
    pub fn bundles_for(&self, selectors: &[Selector]) -> Vec<Arc<TrustBundle>> {
        self.bundle
            .iter()
            .cloned()
            .chain(self.federated_for(selectors))
            .collect()
    }

    /// The bundle of `trust_domain` for a caller with `selectors`: the own
    /// one, or a federated one its entries federate with.
    pub fn bundle_for(
        &self,
        selectors: &[Selector],
        trust_domain: &TrustDomain,
    ) -> Option<Arc<TrustBundle>> {
        match &self.bundle {
            Some(own) if own.trust_domain() == trust_domain => Some(own.clone()),
            _ => self
                .federated_for(selectors)
                .into_iter()
                .find(|b| b.trust_domain() == trust_domain),
        }
    }
}

/// Receives snapshots.
pub type SnapshotRx = tokio::sync::watch::Receiver<Arc<Snapshot>>;

/// Obtains JWT-SVIDs from the CA (the manager implements it; tests may fake it).
#[tonic::async_trait]
pub trait JwtSource: Send + Sync + 'static {
    /// A JWT-SVID for `entry_id` with `audience`.
    async fn fetch_jwt(&self, entry_id: &str, audience: &[String])
    -> Result<String, tonic::Status>;
}

/// The current snapshot once the agent is ready (it has a bundle), waiting
/// up to `limit` for that; after the limit, whatever is current.
pub async fn ready_snapshot(rx: &SnapshotRx, limit: std::time::Duration) -> Arc<Snapshot> {
    let mut waiter = rx.clone();
    let ready = match tokio::time::timeout(limit, waiter.wait_for(|s| s.bundle.is_some())).await {
        Ok(Ok(s)) => Some(s.clone()),
        _ => None,
    };
    ready.unwrap_or_else(|| rx.borrow().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(selectors: &[(&str, &str)]) -> Entry {
        Entry {
            id: "e".into(),
            spiffe_id: SpiffeId::parse("spiffe://example.org/w").unwrap(),
            selectors: selectors
                .iter()
                .map(|(k, v)| Selector::new(*k, *v))
                .collect(),
            ttl_seconds: 0,
            dns_names: vec![],
            revision: 1,
            federates_with: vec![],
        }
    }

    #[test]
    fn a_path_alone_never_selects_a_caller() {
        let caller = [
            Selector::new("unix", "uid:0"),
            Selector::new("unix", "path:/usr/bin/sleep"),
        ];
        let table: [(&[(&str, &str)], bool); 5] = [
            (&[("unix", "path:/usr/bin/sleep")], false),
            (
                &[
                    ("unix", "path:/usr/bin/sleep"),
                    ("unix", "path:/usr/bin/sleep"),
                ],
                false,
            ),
            (&[("unix", "path:/usr/bin/sleep"), ("unix", "uid:0")], true),
            (&[("unix", "uid:0")], true),
            (&[], false),
        ];
        for (selectors, matches) in table {
            assert_eq!(entry(selectors).matches(&caller), matches, "{selectors:?}");
        }
    }
}
