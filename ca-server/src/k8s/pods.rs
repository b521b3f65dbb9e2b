//! The CA's watch of pods for the pod policies: lists and watches the pods of every
//! namespace, keeps a bounded cache of what the policies read from them, and keeps
//! [`super::derived::DerivedEntries`] equal to what the policies derive from that
//! cache. A 410 (expired resourceVersion) lists again; an unreachable API server is
//! retried with backoff while the cache and the entries stay as they were, until a
//! list succeeds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use signet_identity::TrustDomain;
use signet_k8s::k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use signet_k8s::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use signet_k8s::{K8sError, KubeApi, PodEvent};
use tokio::sync::watch;

use super::derived::{Derived, EntryView};
use super::policy::Policy;
use crate::ca::{Ca, CaError};
use crate::store::EntryRow;

/// Most pods the CA follows; pods beyond it get no derived entry (and a warning).
pub const MAX_PODS: usize = 100_000;
/// Most nodes whose UIDs are remembered.
pub const MAX_NODES: usize = 20_000;
/// How often node UIDs are read again (a node recreated under its name has a new UID,
/// and so a new k8s_psat identity).
pub const NODE_REFRESH: Duration = Duration::from_secs(60);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Caller name in the audit records of refused derivations.
const AUDIT_CALLER: &str = "k8s-pod-policy";

/// The pod watch and the policies it applies.
pub struct PodWatch {
    api: KubeApi,
    ca: Arc<Ca>,
    td: TrustDomain,
    cluster: String,
    policies: watch::Receiver<Arc<Vec<Policy>>>,
    /// Pod UID -> the fields the policies read.
    pods: HashMap<String, Pod>,
    /// Node name -> UID.
    nodes: HashMap<String, String>,
    node_refresh: Duration,
}

/// Only what the policies read: names, labels, node, service account, phase.
fn trim(pod: Pod) -> Pod {
    let spec = pod.spec.map(|s| PodSpec {
        node_name: s.node_name,
        service_account_name: s.service_account_name,
        ..PodSpec::default()
    });
    let status = pod.status.map(|s| PodStatus {
        phase: s.phase,
        ..PodStatus::default()
    });
    Pod {
        metadata: ObjectMeta {
            namespace: pod.metadata.namespace,
            name: pod.metadata.name,
            uid: pod.metadata.uid,
            labels: pod.metadata.labels,
            creation_timestamp: pod.metadata.creation_timestamp,
            ..ObjectMeta::default()
        },
        spec,
        status,
    }
}

/// A derived entry's id: stable for one policy and one pod, in the form of stored ids.
fn derived_id(origin: &str, pod_uid: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{origin}\n{pod_uid}").as_bytes(),
    );
    hex::encode(&digest.as_ref()[..16])
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

impl PodWatch {
    pub fn new(
        api: KubeApi,
        ca: Arc<Ca>,
        cluster: String,
        policies: watch::Receiver<Arc<Vec<Policy>>>,
    ) -> Self {
        let td = ca.config().trust_domain.clone();
        Self {
            api,
            ca,
            td,
            cluster,
            policies,
            pods: HashMap::new(),
            nodes: HashMap::new(),
            node_refresh: NODE_REFRESH,
        }
    }

    /// Reads node UIDs this often instead of [`NODE_REFRESH`].
    #[must_use]
    pub fn node_refresh(mut self, every: Duration) -> Self {
        self.node_refresh = every;
        self
    }

    /// Follows pods until `shutdown`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_MIN;
        let mut node_tick = tokio::time::interval(self.node_refresh);
        node_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        node_tick.reset();
        'list: loop {
            let mut rv = match self.relist().await {
                Ok(rv) => {
                    backoff = BACKOFF_MIN;
                    rv
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "listing pods failed; derived entries stay as they are");
                    if pause(&mut shutdown, &mut backoff).await {
                        return;
                    }
                    continue 'list;
                }
            };
            loop {
                let stream = match self.api.watch_pods(None, &rv).await {
                    Ok(s) => s,
                    Err(K8sError::Expired(_)) => continue 'list,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "watching pods failed");
                        if pause(&mut shutdown, &mut backoff).await {
                            return;
                        }
                        continue;
                    }
                };
                let mut stream = std::pin::pin!(stream);
                loop {
                    let next = tokio::select! {
                        _ = shutdown.changed() => return,
                        changed = self.policies.changed() => {
                            // Their writer only stops at shutdown.
                            if changed.is_err() {
                                return;
                            }
                            self.rederive_all().await;
                            continue;
                        }
                        _ = node_tick.tick() => {
                            self.refresh_nodes().await;
                            continue;
                        }
                        next = stream.next() => next,
                    };
                    match next {
                        // The server closed the watch (timeout): resume where it ended.
                        None => break,
                        Some(Ok(ev)) => {
                            backoff = BACKOFF_MIN;
                            if let Some(v) = self.apply(ev).await {
                                rv = v;
                            }
                        }
                        Some(Err(K8sError::Expired(m))) => {
                            tracing::info!(reason = %m, "pod watch expired; listing again");
                            continue 'list;
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, retry_in = ?backoff, "pod watch failed");
                            if pause(&mut shutdown, &mut backoff).await {
                                return;
                            }
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Lists nodes and pods, replaces the cache and the derived entries; returns the
    /// resourceVersion to watch from.
    async fn relist(&mut self) -> Result<String, K8sError> {
        let nodes = self.api.list_nodes().await?;
        let list = self.api.list_pods(None).await?;
        self.nodes = nodes.into_iter().take(MAX_NODES).collect();
        if list.pods.len() > MAX_PODS {
            tracing::warn!(
                pods = list.pods.len(),
                max = MAX_PODS,
                "more pods than the CA follows; the rest get no derived entry"
            );
        }
        self.pods = list
            .pods
            .into_iter()
            .filter_map(|p| Some((p.metadata.uid.clone()?, trim(p))))
            .take(MAX_PODS)
            .collect();
        let pods = &self.pods;
        let mut changed = self.ca.derived().retain_pods(&|uid| pods.contains_key(uid));
        changed |= self.derive_all();
        if changed {
            self.announce().await;
        }
        tracing::info!(
            pods = self.pods.len(),
            nodes = self.nodes.len(),
            entries = self.ca.derived().len(),
            "pods listed"
        );
        Ok(list.resource_version)
    }

    /// Reads node UIDs again; re-derives every pod when one changed.
    async fn refresh_nodes(&mut self) {
        match self.api.list_nodes().await {
            Ok(nodes) => {
                let nodes: HashMap<String, String> = nodes.into_iter().take(MAX_NODES).collect();
                if nodes != self.nodes {
                    self.nodes = nodes;
                    if self.derive_all() {
                        self.announce().await;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading nodes failed; their UIDs stay as they were")
            }
        }
    }

    async fn rederive_all(&mut self) {
        tracing::info!(
            policies = self.policies.borrow().len(),
            "pod policies changed"
        );
        if self.derive_all() {
            self.announce().await;
        }
    }

    fn derive_all(&self) -> bool {
        let mut changed = false;
        for (uid, pod) in &self.pods {
            changed |= self.ca.derived().set_pod(uid, self.derive(uid, pod));
        }
        changed
    }

    /// Applies one watch event; returns the resourceVersion it brings.
    async fn apply(&mut self, ev: PodEvent) -> Option<String> {
        let (rv, changed) = match ev {
            PodEvent::Bookmark(rv) => return Some(rv),
            PodEvent::Applied(pod) => {
                let rv = pod.metadata.resource_version.clone();
                let uid = pod.metadata.uid.clone()?;
                if !self.pods.contains_key(&uid) && self.pods.len() >= MAX_PODS {
                    tracing::warn!(max = MAX_PODS, pod = %uid, "pod cache full; no entry for this pod");
                    return rv;
                }
                let pod = trim(*pod);
                if let Some(node) = node_of(&pod).map(str::to_owned) {
                    self.learn_node(&node).await;
                }
                let entries = self.derive(&uid, &pod);
                self.pods.insert(uid.clone(), pod);
                (rv, self.ca.derived().set_pod(&uid, entries))
            }
            PodEvent::Deleted(pod) => {
                let rv = pod.metadata.resource_version.clone();
                let uid = pod.metadata.uid.clone()?;
                self.pods.remove(&uid);
                (rv, self.ca.derived().set_pod(&uid, Vec::new()))
            }
        };
        if changed {
            self.announce().await;
        }
        rv
    }

    /// Gets the UID of a node not seen yet (a new node joined since the list).
    async fn learn_node(&mut self, name: &str) {
        if self.nodes.contains_key(name) || self.nodes.len() >= MAX_NODES {
            return;
        }
        match self.api.get_node(name).await {
            Ok(Some(node)) => {
                if let Some(uid) = node.metadata.uid {
                    self.nodes.insert(name.to_owned(), uid);
                }
            }
            Ok(None) => tracing::debug!(node = name, "pod on a node that does not exist"),
            Err(e) => tracing::warn!(node = name, error = %e, "could not read a pod's node"),
        }
    }

    /// What every policy derives from `pod`. A policy that selects the pod but whose
    /// templates give an unusable ID or DNS name gives nothing; the refusal is logged
    /// and audited.
    fn derive(&self, uid: &str, pod: &Pod) -> Vec<Derived> {
        let policies = self.policies.borrow().clone();
        let name = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or(""),
            pod.metadata.name.as_deref().unwrap_or("")
        );
        let created_at = pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second());
        let mut out = Vec::new();
        for policy in policies.iter() {
            let derived = policy
                .derive(pod, &self.td, &self.cluster, |n| self.nodes.get(n).cloned())
                .map_err(CaError::InvalidArgument)
                .and_then(|d| match d {
                    Some(d) => self
                        .ca
                        .check_claimable(&d.spiffe_id, &d.dns_names)
                        .map(|()| Some(d)),
                    None => Ok(None),
                });
            match derived {
                Ok(Some(d)) => out.push(Derived {
                    entry: EntryView {
                        row: EntryRow {
                            id: derived_id(&d.origin.to_string(), uid),
                            spiffe_id: d.spiffe_id.to_string(),
                            parent_id: d.parent.to_string(),
                            selectors: d.selectors,
                            ttl_seconds: 0,
                            dns_names: d.dns_names,
                            created_at,
                            revision: 0,
                            federates_with: Vec::new(),
                        },
                        origin: d.origin,
                    },
                    pod: name.clone(),
                }),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(policy = %policy.origin, pod = %name, error = %e, "policy gives this pod no identity");
                    self.ca.audit_rejection(
                        AUDIT_CALLER,
                        "derive_entry",
                        "",
                        &CaError::InvalidArgument(format!("pod {name}: {e}")),
                    );
                }
            }
        }
        out
    }

    /// Tells the entry streams (reads the store revision: off the async threads).
    async fn announce(&self) {
        let ca = self.ca.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || ca.entries_changed()).await {
            tracing::error!(error = %e, "announcing derived entries failed");
        }
    }
}

/// Waits `backoff` (doubling it) unless shut down first; true when shut down.
async fn pause(shutdown: &mut watch::Receiver<bool>, backoff: &mut Duration) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    tokio::select! {
        _ = shutdown.changed() => true,
        () = tokio::time::sleep(wait) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use signet_k8s::fake::FakeApiServer;
    use signet_k8s::k8s_openapi::api::core::v1::Node;

    use super::*;
    use crate::ca::testing::{self, TestClock};
    use crate::config::Settings;
    use crate::k8s::policy::PolicySettings;

    fn pod(name: &str, node: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some("shop".into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                service_account_name: Some(name.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn until(what: &str, ok: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ok() {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn ids(ca: &Ca) -> Vec<String> {
        let mut v: Vec<String> = ca
            .derived()
            .list(None)
            .into_iter()
            .map(|e| e.row.spiffe_id)
            .collect();
        v.sort();
        v
    }

    /// An outage keeps the entries; when the API server is back, a watch from the
    /// compacted resourceVersion gets 410, the CA lists again and catches up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outage_keeps_the_entries_and_410_lists_again() {
        let fake = FakeApiServer::start().await.unwrap();
        fake.apply_node(Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                ..Default::default()
            },
            ..Default::default()
        });
        fake.apply_pod(pod("a", "n1"));
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(testing::open(
            dir.path(),
            &TestClock::new(),
            Settings::default(),
        ));
        let policy = PolicySettings {
            name: "p".into(),
            ..Default::default()
        }
        .check()
        .unwrap();
        let (_tx, policies) = watch::channel(Arc::new(vec![policy]));
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(
            PodWatch::new(
                fake.client().await.unwrap(),
                ca.clone(),
                "c1".into(),
                policies,
            )
            .node_refresh(Duration::from_millis(100))
            .run(shutdown),
        );
        until("pod a's entry", || {
            ids(&ca) == ["spiffe://test.org/ns/shop/sa/a"]
        })
        .await;
        let revision = *ca.watch_entries().borrow();

        // A new pod on n2, a node the CA has not listed: read with a get.
        fake.apply_node(Node {
            metadata: ObjectMeta {
                name: Some("n2".into()),
                ..Default::default()
            },
            ..Default::default()
        });
        fake.apply_pod(pod("b", "n2"));
        until("pod b's entry", || ids(&ca).len() == 2).await;
        assert!(*ca.watch_entries().borrow() > revision, "streams were told");

        let lists = |fake: &FakeApiServer| {
            fake.requests()
                .iter()
                .filter(|r| r.path == "/api/v1/pods" && !r.query.contains("watch=true"))
                .count()
        };
        let listed = lists(&fake);
        fake.set_unavailable(true);
        let before = fake.requests().len();
        until("retries during the outage", || {
            fake.requests().len() >= before + 2
        })
        .await;
        // Missed while away: b is deleted, c added, and the history is compacted.
        fake.delete_pod("shop", "b");
        fake.apply_pod(pod("c", "n1"));
        fake.compact();
        assert_eq!(ids(&ca).len(), 2, "the entries stay during the outage");
        fake.set_unavailable(false);
        until("caught up after the outage", || {
            ids(&ca)
                == [
                    "spiffe://test.org/ns/shop/sa/a",
                    "spiffe://test.org/ns/shop/sa/c",
                ]
        })
        .await;
        assert!(lists(&fake) > listed, "listed again after 410");

        // Node n1 recreated under its name: a new UID, so a new parent.
        let parent = |ca: &Ca| ca.derived().list(None)[0].row.parent_id.clone();
        let old = parent(&ca);
        fake.delete_node("n1");
        let n1 = fake.apply_node(Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                ..Default::default()
            },
            ..Default::default()
        });
        let new_uid = n1.metadata.uid.unwrap();
        until("the new node UID", || parent(&ca) != old).await;
        assert_eq!(
            parent(&ca),
            format!("spiffe://test.org/signet/node/c1/{new_uid}")
        );

        let _ = stop.send(true);
        task.await.unwrap();
    }
}
