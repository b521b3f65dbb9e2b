//! [`KubeApi`]: the calls Signet makes, over kube's `Client`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures::{Stream, TryStreamExt};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::K8sError;
use crate::review::{ReviewedToken, TokenReviewer};

/// How many times an update that lost a race (409) is re-read and retried.
const CONFLICT_RETRIES: usize = 5;
/// Server-side timeout of one watch request; the caller resumes from the last version.
const WATCH_TIMEOUT_SECS: u32 = 290;

/// Where the API server is: a kubeconfig file, or the pod's in-cluster service account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeConnect {
    Kubeconfig(PathBuf),
    InCluster,
}

/// A client of the Kubernetes API for the calls Signet makes.
#[derive(Clone)]
pub struct KubeApi {
    pub(crate) client: Client,
}

impl std::fmt::Debug for KubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApi").finish_non_exhaustive()
    }
}

/// One change to the set of pods a watch follows.
#[derive(Debug, Clone)]
pub enum PodEvent {
    /// Added or modified: the pod as it is now.
    Applied(Box<Pod>),
    /// Deleted: the pod's last state.
    Deleted(Box<Pod>),
    /// Nothing changed up to this resourceVersion (resume point).
    Bookmark(String),
}

/// A consistent list of pods and the resourceVersion to watch from.
#[derive(Debug, Clone)]
pub struct PodList {
    pub pods: Vec<Pod>,
    pub resource_version: String,
}

impl KubeApi {
    /// A client from a kube `Config` (the fake server gives one).
    ///
    /// # Errors
    /// [`K8sError::Config`] when kube cannot build a client from it.
    pub fn from_config(config: Config) -> Result<Self, K8sError> {
        let client = Client::try_from(config).map_err(|e| K8sError::Config(e.to_string()))?;
        Ok(Self { client })
    }

    /// A client from a kubeconfig file or the in-cluster service account.
    ///
    /// # Errors
    /// [`K8sError::Config`] when the settings cannot be read.
    pub async fn connect(how: &KubeConnect) -> Result<Self, K8sError> {
        let config = match how {
            KubeConnect::InCluster => {
                Config::incluster().map_err(|e| K8sError::Config(e.to_string()))?
            }
            KubeConnect::Kubeconfig(path) => {
                let kc = Kubeconfig::read_from(path)
                    .map_err(|e| K8sError::Config(format!("{}: {e}", path.display())))?;
                Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| K8sError::Config(format!("{}: {e}", path.display())))?
            }
        };
        Self::from_config(config)
    }

    /// A pod by namespace and name; `None` when it does not exist.
    ///
    /// # Errors
    /// Transport and API errors other than 404.
    pub async fn get_pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>, K8sError> {
        Ok(Api::<Pod>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await?)
    }

    /// A node by name; `None` when it does not exist.
    ///
    /// # Errors
    /// Transport and API errors other than 404.
    pub async fn get_node(&self, name: &str) -> Result<Option<Node>, K8sError> {
        Ok(Api::<Node>::all(self.client.clone()).get_opt(name).await?)
    }

    /// Every node as (name, UID).
    ///
    /// # Errors
    /// Transport and API errors.
    pub async fn list_nodes(&self) -> Result<Vec<(String, String)>, K8sError> {
        let list = Api::<Node>::all(self.client.clone())
            .list(&ListParams::default())
            .await?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|n| Some((n.metadata.name?, n.metadata.uid?)))
            .collect())
    }

    /// Pods of every namespace, of one node when `node_name` is given.
    ///
    /// # Errors
    /// Transport and API errors.
    pub async fn list_pods(&self, node_name: Option<&str>) -> Result<PodList, K8sError> {
        let mut lp = ListParams::default();
        if let Some(node) = node_name {
            lp = lp.fields(&format!("spec.nodeName={node}"));
        }
        let list = Api::<Pod>::all(self.client.clone()).list(&lp).await?;
        Ok(PodList {
            resource_version: list.metadata.resource_version.unwrap_or_default(),
            pods: list.items,
        })
    }

    /// Changes to pods (of one node when `node_name` is given) after `resource_version`,
    /// with bookmarks. The stream ends when the server closes the watch; resume from the
    /// last version seen. [`K8sError::Expired`] means: list again.
    ///
    /// # Errors
    /// Transport and API errors, at the start or as stream items.
    pub async fn watch_pods(
        &self,
        node_name: Option<&str>,
        resource_version: &str,
    ) -> Result<impl Stream<Item = Result<PodEvent, K8sError>> + Send + use<>, K8sError> {
        let mut wp = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
        if let Some(node) = node_name {
            wp = wp.fields(&format!("spec.nodeName={node}"));
        }
        let stream = crate::bounded::watch::<Pod>(
            &self.client,
            kube::core::Request::new("/api/v1/pods"),
            &wp,
            resource_version,
            crate::bounded::MAX_WATCH_EVENT_BYTES,
        )
        .await?;
        Ok(stream.and_then(|ev| async move {
            match ev {
                WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                    Ok(PodEvent::Applied(Box::new(p)))
                }
                WatchEvent::Deleted(p) => Ok(PodEvent::Deleted(Box::new(p))),
                WatchEvent::Bookmark(b) => Ok(PodEvent::Bookmark(b.metadata.resource_version)),
                WatchEvent::Error(s) if s.code == 410 => Err(K8sError::Expired(s.message)),
                WatchEvent::Error(s) => Err(K8sError::Api {
                    code: s.code,
                    reason: s.reason,
                    message: s.message,
                }),
            }
        }))
    }

    /// Sets `data` in ConfigMap `namespace/name`, creating it if needed. A write that
    /// loses a race (409 Conflict on a stale resourceVersion, or AlreadyExists on create)
    /// re-reads the current object and tries again. Returns the stored resourceVersion.
    ///
    /// # Errors
    /// [`K8sError::Conflict`] after repeated races, transport and API errors.
    pub async fn put_config_map(
        &self,
        namespace: &str,
        name: &str,
        data: BTreeMap<String, String>,
    ) -> Result<String, K8sError> {
        let api = Api::<ConfigMap>::namespaced(self.client.clone(), namespace);
        for _ in 0..CONFLICT_RETRIES {
            let result = match api.get_opt(name).await? {
                None => {
                    let cm = ConfigMap {
                        metadata: ObjectMeta {
                            name: Some(name.to_string()),
                            namespace: Some(namespace.to_string()),
                            ..ObjectMeta::default()
                        },
                        data: Some(data.clone()),
                        ..ConfigMap::default()
                    };
                    api.create(&PostParams::default(), &cm).await
                }
                Some(current) if current.data.as_ref() == Some(&data) => {
                    return Ok(current.metadata.resource_version.unwrap_or_default());
                }
                Some(mut current) => {
                    // resourceVersion stays as read: the server refuses the write if
                    // someone else wrote in between.
                    current.data = Some(data.clone());
                    api.replace(name, &PostParams::default(), &current).await
                }
            };
            match result {
                Ok(cm) => return Ok(cm.metadata.resource_version.unwrap_or_default()),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    tracing::debug!(namespace, name, reason = %s.reason, "configmap write lost a race; re-reading");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(K8sError::Conflict(format!("configmap {namespace}/{name}")))
    }

    /// Names of every namespace (where a ConfigMap is published in each).
    ///
    /// # Errors
    /// Transport and API errors.
    pub async fn list_namespaces(&self) -> Result<Vec<String>, K8sError> {
        let list = Api::<Namespace>::all(self.client.clone())
            .list(&ListParams::default())
            .await?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect())
    }

    /// A ConfigMap's data; `None` when it does not exist.
    ///
    /// # Errors
    /// Transport and API errors other than 404.
    pub async fn get_config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ConfigMap>, K8sError> {
        Ok(Api::<ConfigMap>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await?)
    }
}

impl TokenReviewer for KubeApi {
    async fn review(&self, token: &str, audiences: &[String]) -> Result<ReviewedToken, K8sError> {
        let tr = TokenReview {
            metadata: ObjectMeta::default(),
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: if audiences.is_empty() {
                    None
                } else {
                    Some(audiences.to_vec())
                },
            },
            status: None,
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &tr)
            .await?;
        let status = answer
            .status
            .ok_or_else(|| K8sError::Malformed("tokenreview answer has no status".into()))?;
        ReviewedToken::from_status(&status, audiences)
    }
}
