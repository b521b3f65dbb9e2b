//! The pods behind ztunnel's impersonation check: which service accounts
//! have an unfinished pod on which node. One list of every pod, then a watch
//! from its resourceVersion (with bookmarks) keeps the cache current; a
//! watch that expires (410 Gone) or fails leads to a new list. A call of the
//! mesh API reads the cache and never waits on the API server.
//!
//! Until the cache holds a complete list, and again from a watch failure
//! until the next list, lookups fail (UNAVAILABLE): partial knowledge could
//! allow a pod that is gone or refuse one that exists.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use signet_k8s::k8s_openapi::api::core::v1::Pod;
use signet_k8s::{KubeApi, PodEvent};
use tokio::sync::watch;

use super::review::{BoxFuture, PodLookup, ReviewError};

/// Most pods the cache holds (about 200 bytes each): a cluster with more
/// makes the cache refuse to sync rather than grow without bound.
pub const MAX_CACHED_PODS: usize = 200_000;
/// First and longest wait before listing again after a failure.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Where a pod runs and as whom.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Placement {
    namespace: String,
    service_account: String,
    node: String,
}

impl Placement {
    /// `None` for a pod that cannot be acted for: not scheduled, or
    /// finished (Succeeded, Failed).
    fn of(pod: &Pod) -> Option<Self> {
        let finished = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        let spec = pod.spec.as_ref()?;
        let node = spec.node_name.clone().filter(|n| !n.is_empty())?;
        if finished {
            return None;
        }
        Some(Self {
            namespace: pod.metadata.namespace.clone()?,
            // The API server defaults an unset account to "default".
            service_account: spec
                .service_account_name
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_owned()),
            node,
        })
    }
}

/// (namespace, pod name).
type PodKey = (String, String);

fn key_of(pod: &Pod) -> Option<PodKey> {
    Some((pod.metadata.namespace.clone()?, pod.metadata.name.clone()?))
}

#[derive(Debug, Default)]
struct Pods {
    synced: bool,
    by_name: HashMap<PodKey, Placement>,
    /// How many pods each placement has.
    counts: HashMap<Placement, usize>,
}

impl Pods {
    fn remove(&mut self, key: &PodKey) {
        if let Some(old) = self.by_name.remove(key)
            && let Some(n) = self.counts.get_mut(&old)
        {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&old);
            }
        }
    }

    fn insert(&mut self, key: PodKey, placement: Placement) {
        *self.counts.entry(placement.clone()).or_default() += 1;
        self.by_name.insert(key, placement);
    }
}

/// Why the cache cannot be filled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PodCacheError {
    #[error("the cluster has more than {MAX_CACHED_PODS} scheduled pods")]
    TooMany,
}

/// The pod cache: one writer ([`run_pod_watch`]), readers on every call.
#[derive(Debug, Default)]
pub struct PodCache {
    pods: RwLock<Pods>,
}

impl PodCache {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Pods> {
        // Plain data: a panic elsewhere while holding the lock leaves it
        // consistent enough to keep serving.
        self.pods.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Pods> {
        self.pods.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the cache holds a complete, current view.
    #[must_use]
    pub fn is_synced(&self) -> bool {
        self.read().synced
    }

    /// How many pods are cached.
    #[must_use]
    pub fn len(&self) -> usize {
        self.read().by_name.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces everything with a complete list; the cache is then synced.
    ///
    /// # Errors
    /// [`PodCacheError::TooMany`]: the cache is emptied and not synced.
    pub fn replace(&self, pods: &[Pod]) -> Result<(), PodCacheError> {
        let mut next = Pods::default();
        for pod in pods {
            if let (Some(key), Some(p)) = (key_of(pod), Placement::of(pod)) {
                if next.by_name.len() == MAX_CACHED_PODS && !next.by_name.contains_key(&key) {
                    *self.write() = Pods::default();
                    return Err(PodCacheError::TooMany);
                }
                next.remove(&key);
                next.insert(key, p);
            }
        }
        next.synced = true;
        *self.write() = next;
        Ok(())
    }

    /// A pod added or changed.
    ///
    /// # Errors
    /// [`PodCacheError::TooMany`]: the cache is emptied and not synced.
    pub fn apply(&self, pod: &Pod) -> Result<(), PodCacheError> {
        let Some(key) = key_of(pod) else {
            return Ok(());
        };
        let mut pods = self.write();
        pods.remove(&key);
        if let Some(p) = Placement::of(pod) {
            if pods.by_name.len() >= MAX_CACHED_PODS {
                *pods = Pods::default();
                return Err(PodCacheError::TooMany);
            }
            pods.insert(key, p);
        }
        Ok(())
    }

    /// A pod deleted.
    pub fn delete(&self, pod: &Pod) {
        if let Some(key) = key_of(pod) {
            self.write().remove(&key);
        }
    }

    /// The view may have missed changes: refuse lookups until the next list.
    pub fn unsync(&self) {
        self.write().synced = false;
    }

    /// Whether `namespace`/`service_account` has an unfinished pod on `node`.
    ///
    /// # Errors
    /// [`ReviewError::PodsNotSynced`] while the cache is not synced.
    pub fn has_pod(
        &self,
        namespace: &str,
        service_account: &str,
        node: &str,
    ) -> Result<bool, ReviewError> {
        let pods = self.read();
        if !pods.synced {
            return Err(ReviewError::PodsNotSynced);
        }
        let key = Placement {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            node: node.to_owned(),
        };
        Ok(pods.counts.get(&key).is_some_and(|n| *n > 0))
    }
}

impl PodLookup for PodCache {
    fn has_pod_on_node<'a>(
        &'a self,
        namespace: &'a str,
        service_account: &'a str,
        node: &'a str,
    ) -> BoxFuture<'a, Result<bool, ReviewError>> {
        let answer = self.has_pod(namespace, service_account, node);
        Box::pin(async move { answer })
    }
}

/// How one watch ended.
enum WatchEnd {
    /// The server closed it (its timeout): resume from the last version.
    Closed,
    /// List again: expired (410), failed, or the cache overflowed.
    Relist(String),
    Shutdown,
}

/// Keeps `cache` in step with the API server's pods until `shutdown` fires.
pub async fn run_pod_watch(
    api: KubeApi,
    cache: Arc<PodCache>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut retry = RETRY_MIN;
    loop {
        let listed = tokio::select! {
            r = api.list_pods(None) => r,
            _ = shutdown.changed() => return,
        };
        let listed = listed.map_err(|e| e.to_string()).and_then(|list| {
            cache
                .replace(&list.pods)
                .map(|()| list.resource_version)
                .map_err(|e| e.to_string())
        });
        let mut version = match listed {
            Ok(v) => {
                tracing::debug!(pods = cache.len(), resource_version = %v, "listed pods");
                v
            }
            Err(e) => {
                cache.unsync();
                tracing::warn!(error = %e, retry_in = ?retry, "could not list pods; impersonation is refused until a list succeeds");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = shutdown.changed() => return,
                }
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
        };
        loop {
            match watch_once(&api, &cache, &mut version, &mut shutdown).await {
                // A watch that ran its course: the API server is healthy.
                WatchEnd::Closed => retry = RETRY_MIN,
                WatchEnd::Shutdown => return,
                WatchEnd::Relist(why) => {
                    cache.unsync();
                    tracing::info!(reason = %why, retry_in = ?retry, "listing pods again");
                    // Paced too, so that a watch refused at once does not
                    // turn into a loop of lists.
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = shutdown.changed() => return,
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                    break;
                }
            }
        }
    }
}

async fn watch_once(
    api: &KubeApi,
    cache: &PodCache,
    version: &mut String,
    shutdown: &mut watch::Receiver<bool>,
) -> WatchEnd {
    let started = tokio::select! {
        r = api.watch_pods(None, version) => r,
        _ = shutdown.changed() => return WatchEnd::Shutdown,
    };
    let stream = match started {
        Ok(s) => s,
        Err(e) => return WatchEnd::Relist(e.to_string()),
    };
    let mut stream = pin!(stream);
    loop {
        let event = tokio::select! {
            ev = stream.next() => ev,
            _ = shutdown.changed() => return WatchEnd::Shutdown,
        };
        let applied = match event {
            None => return WatchEnd::Closed,
            // 410 Gone (K8sError::Expired) and every other failure alike.
            Some(Err(e)) => return WatchEnd::Relist(e.to_string()),
            Some(Ok(PodEvent::Bookmark(v))) => {
                *version = v;
                continue;
            }
            Some(Ok(PodEvent::Applied(pod))) => {
                let v = pod.metadata.resource_version.clone();
                cache.apply(&pod).map(|()| v)
            }
            Some(Ok(PodEvent::Deleted(pod))) => {
                cache.delete(&pod);
                Ok(pod.metadata.resource_version.clone())
            }
        };
        match applied {
            Ok(Some(v)) => *version = v,
            Ok(None) => {}
            Err(e) => return WatchEnd::Relist(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signet_k8s::k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use signet_k8s::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(ns: &str, name: &str, sa: Option<&str>, node: Option<&str>, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(Into::into),
                service_account_name: sa.map(Into::into),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..PodStatus::default()
            }),
        }
    }

    /// A watch from a version the server has compacted away (410 Gone)
    /// ends in a new list; one from the current version follows changes.
    #[tokio::test]
    async fn an_expired_watch_leads_to_a_relist() {
        let fake = signet_k8s::fake::FakeApiServer::start().await.unwrap();
        let api = fake.client().await.unwrap();
        let cache = PodCache::new();
        let (_stop, mut shutdown) = watch::channel(false);
        let mut old = fake.resource_version().to_string();
        fake.apply_pod(pod("default", "web-1", Some("web"), Some("a"), "Running"));
        fake.compact();
        match watch_once(&api, &cache, &mut old, &mut shutdown).await {
            WatchEnd::Relist(why) => assert!(why.contains("expired"), "{why}"),
            WatchEnd::Closed => panic!("closed instead of relisting"),
            WatchEnd::Shutdown => panic!("shut down"),
        }
        let list = api.list_pods(None).await.unwrap();
        cache.replace(&list.pods).unwrap();
        assert!(cache.has_pod("default", "web", "a").unwrap());
    }

    #[test]
    fn lookups_follow_lists_and_changes() {
        let cache = PodCache::new();
        assert!(matches!(
            cache.has_pod("default", "web", "a"),
            Err(ReviewError::PodsNotSynced)
        ));
        cache
            .replace(&[
                pod("default", "web-1", Some("web"), Some("a"), "Running"),
                pod("default", "web-2", Some("web"), Some("a"), "Running"),
                pod("default", "job", Some("batch"), Some("a"), "Succeeded"),
                pod("default", "pending", Some("db"), None, "Pending"),
                pod("default", "plain", None, Some("b"), "Running"),
            ])
            .unwrap();
        assert_eq!(cache.len(), 3);
        let has = |ns, sa, node| cache.has_pod(ns, sa, node).unwrap();
        assert!(has("default", "web", "a"));
        assert!(!has("default", "web", "b"));
        assert!(!has("default", "batch", "a"), "a finished pod");
        assert!(!has("default", "db", "a"), "an unscheduled pod");
        assert!(has("default", "default", "b"), "the default account");
        // Two pods of one account: it stays until both are gone.
        cache.delete(&pod("default", "web-1", None, None, "Running"));
        assert!(has("default", "web", "a"));
        cache
            .apply(&pod("default", "web-2", Some("web"), Some("a"), "Failed"))
            .unwrap();
        assert!(!has("default", "web", "a"));
        // Scheduled later.
        cache
            .apply(&pod("default", "pending", Some("db"), Some("c"), "Pending"))
            .unwrap();
        assert!(has("default", "db", "c"));
        // Moved to another account (a replaced pod of the same name).
        cache
            .apply(&pod(
                "default",
                "pending",
                Some("other"),
                Some("c"),
                "Running",
            ))
            .unwrap();
        assert!(!has("default", "db", "c"));
        assert!(has("default", "other", "c"));
        cache.unsync();
        assert!(cache.has_pod("default", "other", "c").is_err());
    }
}
