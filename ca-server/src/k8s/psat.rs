//! k8s_psat: TokenReview of the agent's projected token (audience checked), the
//! allow-list of service accounts, then the pod the token is bound to (its UID must
//! match) and that pod's node (its UID must be non-empty and match the token's). The
//! node's name is `<cluster>/<node-uid>`.

use signet_k8s::{K8sError, KubeApi, TokenReviewer};

use super::K8sConfig;
use crate::ca::CaError;

/// Longest token accepted (projected tokens are about 1 KiB).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Checks projected service-account tokens of agents against the API server.
pub struct PsatAttestor {
    api: KubeApi,
    config: K8sConfig,
}

impl std::fmt::Debug for PsatAttestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PsatAttestor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: K8sError) -> CaError {
    CaError::Unavailable(format!("kubernetes api: {e}"))
}

impl PsatAttestor {
    pub fn new(api: KubeApi, config: K8sConfig) -> Self {
        Self { api, config }
    }

    /// The node name (`<cluster>/<node-uid>`) `token` proves, or why not.
    ///
    /// # Errors
    /// InvalidArgument for an oversized token; Unauthenticated when TokenReview refuses
    /// it or answers for another audience; PermissionDenied for a service account not
    /// on the allow-list, a token bound to no pod, a pod that is gone, has another UID
    /// or sits on another node, a node that is gone or has no or another UID;
    /// Unavailable when the API server cannot be asked.
    pub async fn attest(&self, token: &[u8]) -> Result<String, CaError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(CaError::InvalidArgument(format!(
                "k8s_psat token is longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        let token = std::str::from_utf8(token)
            .map_err(|_| CaError::InvalidArgument("k8s_psat token is not UTF-8".into()))?
            .trim();
        let audiences = [self.config.psat_audience.clone()];
        let reviewed = match self.api.review(token, &audiences).await {
            Ok(r) => r,
            Err(e @ (K8sError::Unauthenticated(_) | K8sError::Audience { .. })) => {
                return Err(CaError::Unauthenticated(format!(
                    "k8s_psat token refused: {e}"
                )));
            }
            Err(e @ K8sError::Malformed(_)) => {
                return Err(CaError::PermissionDenied(format!(
                    "k8s_psat token refused: {e}"
                )));
            }
            Err(e) => return Err(unavailable(e)),
        };
        let account = (reviewed.namespace.clone(), reviewed.service_account.clone());
        if !self.config.psat_allowed.contains(&account) {
            return Err(CaError::PermissionDenied(format!(
                "service account {}:{} may not attest nodes",
                account.0, account.1
            )));
        }
        if reviewed.pod_name.is_empty() || reviewed.pod_uid.is_empty() {
            return Err(CaError::PermissionDenied(
                "k8s_psat token is not bound to a pod (use a projected token)".into(),
            ));
        }
        let pod = self
            .api
            .get_pod(&reviewed.namespace, &reviewed.pod_name)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| {
                CaError::PermissionDenied(format!(
                    "pod {}/{} of the token no longer exists",
                    reviewed.namespace, reviewed.pod_name
                ))
            })?;
        let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
        if pod_uid != reviewed.pod_uid {
            return Err(CaError::PermissionDenied(format!(
                "pod {}/{} has UID {pod_uid:?}, the token was issued for {:?}",
                reviewed.namespace, reviewed.pod_name, reviewed.pod_uid
            )));
        }
        let node_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                CaError::PermissionDenied(format!(
                    "pod {}/{} is not scheduled on a node",
                    reviewed.namespace, reviewed.pod_name
                ))
            })?;
        if !reviewed.node_name.is_empty() && reviewed.node_name != node_name {
            return Err(CaError::PermissionDenied(format!(
                "the token was issued on node {:?}, its pod is on node {node_name:?}",
                reviewed.node_name
            )));
        }
        let node = self
            .api
            .get_node(&node_name)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| {
                CaError::PermissionDenied(format!("node {node_name:?} does not exist"))
            })?;
        let node_uid = node.metadata.uid.clone().unwrap_or_default();
        if node_uid.is_empty() {
            return Err(CaError::PermissionDenied(format!(
                "node {node_name:?} has no UID"
            )));
        }
        if !reviewed.node_uid.is_empty() && reviewed.node_uid != node_uid {
            return Err(CaError::PermissionDenied(format!(
                "node {node_name:?} has UID {node_uid:?}, the token was issued for {:?}",
                reviewed.node_uid
            )));
        }
        tracing::debug!(
            pod = %format!("{}/{}", reviewed.namespace, reviewed.pod_name),
            node = %node_name,
            "k8s_psat token checked"
        );
        Ok(format!("{}/{node_uid}", self.config.cluster))
    }
}
