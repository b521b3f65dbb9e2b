//! The `api` pod source: this node's pods as the API server knows them,
//! listed and then watched with `fieldSelector=spec.nodeName=<node>`
//! through signet-k8s, kept in a bounded index by pod UID.
//!
//! One task owns the index and publishes it on a `watch` channel; the
//! attestor only reads it. The task lists, watches from the list's
//! resourceVersion (bookmarks move it on), lists again on 410 Gone, and
//! retries a failed list or watch with a doubling backoff. While the API
//! server cannot be reached the index is kept, marked down since the first
//! failure: pods already known are served for `max_staleness`, after which
//! every caller is refused as unavailable, since a pod may have changed or
//! gone in between.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use signet_k8s::k8s_openapi::api::core::v1 as core;
use signet_k8s::{KubeApi, KubeConnect, PodEvent};
use tokio::sync::watch;

use super::kubelet::{Container, ContainerStatus, ObjectMeta, Pod, PodSpec, PodStatus};

/// First wait after a failed list or watch; doubled up to the maximum.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// How the agent reaches the API server and how much it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSettings {
    /// A kubeconfig file, or the pod's in-cluster service account.
    pub connect: KubeConnect,
    /// Most pods kept; more are counted and left out (a node runs about
    /// 110 by default).
    pub max_pods: usize,
    /// How long pods already known are served while the API server cannot
    /// be reached.
    pub max_staleness: Duration,
    /// Longest wait between two attempts to list or watch.
    pub max_backoff: Duration,
}

/// Whether the index can be trusted now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Not listed yet.
    Starting,
    /// Listed, and the watch is open or being reopened.
    Live,
    /// The last list or watch failed; the index is as it was at `since`.
    Down { since: Instant, reason: String },
}

/// This node's pods by UID, bounded.
#[derive(Debug, Clone)]
pub struct PodIndex {
    node_name: String,
    max_pods: usize,
    pods: HashMap<String, Pod>,
    /// Pods left out because the index was full.
    pub overflow: u64,
    pub health: Health,
}

impl PodIndex {
    #[must_use]
    pub fn new(node_name: &str, max_pods: usize) -> Self {
        Self {
            node_name: node_name.to_owned(),
            max_pods,
            pods: HashMap::new(),
            overflow: 0,
            health: Health::Starting,
        }
    }

    /// The pod whose UID is `uid`.
    #[must_use]
    pub fn get(&self, uid: &str) -> Option<&Pod> {
        self.pods.get(uid)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// Replaces the index with a fresh list.
    pub fn replace(&mut self, pods: &[core::Pod]) {
        self.pods.clear();
        for p in pods {
            self.upsert(p);
        }
    }

    /// Applies one watch event.
    pub fn apply(&mut self, event: &PodEvent) {
        match event {
            PodEvent::Applied(p) => self.upsert(p),
            PodEvent::Deleted(p) => {
                if let Some(uid) = p.metadata.uid.as_deref() {
                    self.pods.remove(uid);
                }
            }
            PodEvent::Bookmark(_) => {}
        }
    }

    fn upsert(&mut self, p: &core::Pod) {
        let Some(pod) = from_api(p) else {
            return;
        };
        // The field selector should keep other nodes' pods out; a pod moved
        // away (or not scheduled yet) is not this node's.
        if pod.spec.node_name != self.node_name {
            self.pods.remove(&pod.metadata.uid);
            return;
        }
        if !self.pods.contains_key(&pod.metadata.uid) && self.pods.len() >= self.max_pods {
            self.overflow += 1;
            tracing::warn!(
                max_pods = self.max_pods,
                pod_uid = %pod.metadata.uid,
                "pod index full; leaving a pod out"
            );
            return;
        }
        self.pods.insert(pod.metadata.uid.clone(), pod);
    }
}

/// The parts of an API pod the attestor reads, as the kubelet source
/// gives them; `None` for a pod without a UID.
#[must_use]
pub fn from_api(p: &core::Pod) -> Option<Pod> {
    let m = &p.metadata;
    let uid = m.uid.clone().filter(|u| !u.is_empty())?;
    let spec = p.spec.as_ref();
    let containers = |c: &[core::Container]| -> Vec<Container> {
        c.iter()
            .map(|c| Container {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
            })
            .collect()
    };
    let statuses = |s: Option<&Vec<core::ContainerStatus>>| -> Vec<ContainerStatus> {
        s.map(|s| {
            s.iter()
                .map(|c| ContainerStatus {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    container_id: c.container_id.clone().unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
    };
    let status = p.status.as_ref();
    Some(Pod {
        metadata: ObjectMeta {
            name: m.name.clone().unwrap_or_default(),
            namespace: m.namespace.clone().unwrap_or_default(),
            uid,
            labels: m.labels.clone().unwrap_or_default(),
        },
        spec: PodSpec {
            service_account_name: spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_default(),
            node_name: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            containers: spec.map(|s| containers(&s.containers)).unwrap_or_default(),
            init_containers: spec
                .and_then(|s| s.init_containers.as_deref())
                .map(containers)
                .unwrap_or_default(),
            ephemeral_containers: spec
                .and_then(|s| s.ephemeral_containers.as_ref())
                .map(|e| {
                    e.iter()
                        .map(|c| Container {
                            name: c.name.clone(),
                            image: c.image.clone().unwrap_or_default(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        },
        status: PodStatus {
            container_statuses: statuses(status.and_then(|s| s.container_statuses.as_ref())),
            init_container_statuses: statuses(
                status.and_then(|s| s.init_container_statuses.as_ref()),
            ),
            ephemeral_container_statuses: statuses(
                status.and_then(|s| s.ephemeral_container_statuses.as_ref()),
            ),
        },
    })
}

/// The running source: the index's receiver, and the task that fills it
/// (stopped when this is dropped).
pub struct ApiPodSource {
    index: watch::Receiver<PodIndex>,
    max_staleness: Duration,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ApiPodSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiPodSource").finish_non_exhaustive()
    }
}

impl Drop for ApiPodSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a lookup in the index found.
#[derive(Debug)]
pub enum Lookup {
    Found(Box<Pod>),
    /// The index is usable and does not hold the pod.
    Missing,
    /// The index cannot be trusted now.
    Unavailable(String),
}

impl ApiPodSource {
    /// Builds the client (no request yet) and starts following the pods of
    /// `node_name`.
    ///
    /// # Errors
    /// The kubeconfig or in-cluster settings cannot be read.
    pub async fn start(
        settings: &ApiSettings,
        node_name: &str,
    ) -> Result<Self, signet_k8s::K8sError> {
        let api = KubeApi::connect(&settings.connect).await?;
        Ok(Self::with_client(api, settings, node_name))
    }

    /// Starts following the pods of `node_name` with `api`.
    #[must_use]
    pub fn with_client(api: KubeApi, settings: &ApiSettings, node_name: &str) -> Self {
        let (tx, index) = watch::channel(PodIndex::new(node_name, settings.max_pods));
        let task = tokio::spawn(follow(api, node_name.to_owned(), settings.max_backoff, tx));
        Self {
            index,
            max_staleness: settings.max_staleness,
            task,
        }
    }

    /// A receiver of the index, to wait for changes on.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<PodIndex> {
        self.index.clone()
    }

    /// Looks `pod_uid` up in `index` as of now.
    #[must_use]
    pub fn lookup(&self, index: &PodIndex, pod_uid: &str) -> Lookup {
        match &index.health {
            Health::Starting => {
                return Lookup::Unavailable("the API server's pod list is not loaded yet".into());
            }
            Health::Down { since, reason } if since.elapsed() >= self.max_staleness => {
                return Lookup::Unavailable(format!(
                    "the API server has been unreachable for {:?}: {reason}",
                    since.elapsed()
                ));
            }
            _ => {}
        }
        match (index.get(pod_uid), &index.health) {
            (Some(p), _) => Lookup::Found(Box::new(p.clone())),
            // Down but not yet stale: a pod added in the meantime cannot be
            // known, which is not the caller's fault.
            (None, Health::Down { reason, .. }) => {
                Lookup::Unavailable(format!("the API server is unreachable: {reason}"))
            }
            (None, _) => Lookup::Missing,
        }
    }
}

/// Lists, watches, lists again: the one writer of the index.
async fn follow(api: KubeApi, node: String, max_backoff: Duration, tx: watch::Sender<PodIndex>) {
    let mut backoff = FIRST_BACKOFF;
    let down = |tx: &watch::Sender<PodIndex>, reason: String| {
        tx.send_modify(|ix| {
            if !matches!(ix.health, Health::Down { .. }) {
                ix.health = Health::Down {
                    since: Instant::now(),
                    reason,
                };
            }
        });
    };
    loop {
        let list = match api.list_pods(Some(&node)).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot list this node's pods");
                down(&tx, e.to_string());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max_backoff);
                continue;
            }
        };
        backoff = FIRST_BACKOFF;
        tx.send_modify(|ix| {
            ix.replace(&list.pods);
            ix.health = Health::Live;
        });
        tracing::debug!(
            pods = list.pods.len(),
            resource_version = %list.resource_version,
            "listed this node's pods"
        );
        let mut version = list.resource_version;
        // Watch until the version expires (410): then list again.
        'watch: loop {
            let mut stream = match api.watch_pods(Some(&node), &version).await {
                Ok(s) => Box::pin(s),
                Err(signet_k8s::K8sError::Expired(m)) => {
                    tracing::info!(reason = %m, "pod watch expired; listing again");
                    break 'watch;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot watch this node's pods");
                    down(&tx, e.to_string());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(max_backoff);
                    continue 'watch;
                }
            };
            while let Some(item) = stream.next().await {
                match item {
                    Ok(ev) => {
                        backoff = FIRST_BACKOFF;
                        if let Some(v) = event_version(&ev) {
                            version = v;
                        }
                        tx.send_modify(|ix| {
                            ix.apply(&ev);
                            ix.health = Health::Live;
                        });
                    }
                    Err(signet_k8s::K8sError::Expired(m)) => {
                        tracing::info!(reason = %m, "pod watch expired; listing again");
                        break 'watch;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "pod watch failed; watching again");
                        down(&tx, e.to_string());
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(max_backoff);
                        continue 'watch;
                    }
                }
            }
            // The server closed the watch (its timeout): resume at once.
            tracing::debug!(resource_version = %version, "pod watch ended; watching again");
        }
    }
}

fn event_version(ev: &PodEvent) -> Option<String> {
    match ev {
        PodEvent::Applied(p) | PodEvent::Deleted(p) => p.metadata.resource_version.clone(),
        PodEvent::Bookmark(v) => Some(v.clone()),
    }
    .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_pod(uid: &str, node: &str, container_id: Option<&str>) -> core::Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("p-{uid}"), "namespace": "shop", "uid": uid,
                         "resourceVersion": "7", "labels": {"app": "web"}},
            "spec": {"serviceAccountName": "web", "nodeName": node,
                     "containers": [{"name": "app", "image": "web:1"}],
                     "ephemeralContainers": [{"name": "debug", "image": "busybox"}]},
            "status": {"containerStatuses": container_id.map(|id| vec![serde_json::json!(
                {"name": "app", "image": "docker.io/web:1", "imageID": "", "ready": true,
                 "restartCount": 0, "containerID": format!("containerd://{id}")})])}
        }))
        .unwrap()
    }

    #[test]
    fn an_api_pod_converts_to_what_the_selectors_read() {
        let pod = from_api(&api_pod("u1", "n1", Some("abc"))).unwrap();
        assert_eq!(pod.metadata.uid, "u1");
        assert_eq!(pod.metadata.namespace, "shop");
        assert_eq!(pod.spec.service_account_name, "web");
        assert_eq!(pod.spec.ephemeral_containers[0].name, "debug");
        let (status, spec) = pod.container("abc").unwrap();
        assert_eq!(status.name, "app");
        assert_eq!(spec.unwrap().image, "web:1");
        // No UID: not indexable.
        let mut no_uid = api_pod("u1", "n1", None);
        no_uid.metadata.uid = None;
        assert!(from_api(&no_uid).is_none());
        // A pod with no spec or status at all still converts.
        let bare: core::Pod =
            serde_json::from_value(serde_json::json!({"metadata": {"uid": "u2"}})).unwrap();
        assert_eq!(from_api(&bare).unwrap().spec.node_name, "");
    }

    #[test]
    fn the_index_follows_events_keeps_to_its_node_and_its_bound() {
        let mut ix = PodIndex::new("n1", 2);
        ix.replace(&[api_pod("a", "n1", None), api_pod("x", "n2", None)]);
        assert_eq!(ix.len(), 1, "another node's pod is left out");
        ix.apply(&PodEvent::Applied(Box::new(api_pod("a", "n1", Some("c1")))));
        assert!(ix.get("a").unwrap().container("c1").is_some(), "modified");
        ix.apply(&PodEvent::Applied(Box::new(api_pod("b", "n1", None))));
        ix.apply(&PodEvent::Applied(Box::new(api_pod("c", "n1", None))));
        assert_eq!(ix.len(), 2);
        assert!(ix.get("c").is_none());
        assert_eq!(ix.overflow, 1);
        ix.apply(&PodEvent::Deleted(Box::new(api_pod("a", "n1", None))));
        assert!(ix.get("a").is_none());
        ix.apply(&PodEvent::Applied(Box::new(api_pod("c", "n1", None))));
        assert!(ix.get("c").is_some(), "room again after a delete");
        // A pod that moves away is dropped.
        ix.apply(&PodEvent::Applied(Box::new(api_pod("c", "n9", None))));
        assert!(ix.get("c").is_none());
        ix.apply(&PodEvent::Bookmark("99".into()));
        assert_eq!(ix.len(), 1);
        // A fresh list replaces everything.
        ix.replace(&[]);
        assert!(ix.is_empty());
    }
}
