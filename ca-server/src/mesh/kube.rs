//! The mesh API's view of Kubernetes through signet-k8s: TokenReview and
//! the `istio-ca-root-cert` ConfigMaps (pods: see [`super::pods`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use signet_identity::TrustBundle;
use signet_k8s::{K8sError, KubeApi};
use tokio::sync::watch;

use super::review::{BoxFuture, EXTRA_NODE_NAME, ReviewError, TokenReview, TokenReviewer};

/// The ConfigMap istio-agent reads its root from, in every namespace.
pub const ISTIO_ROOT_CONFIGMAP: &str = "istio-ca-root-cert";
/// Its key.
pub const ISTIO_ROOT_KEY: &str = "root-cert.pem";
/// How often the ConfigMaps are rewritten even when the bundle has not
/// changed: new namespaces get theirs, edited ones are put back.
const REPUBLISH_EVERY: Duration = Duration::from_secs(60);

/// [`KubeApi`] as the mesh API's token reviewer.
#[derive(Debug, Clone)]
pub struct Kube(pub KubeApi);

impl TokenReviewer for Kube {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audiences: &'a [String],
    ) -> BoxFuture<'a, Result<TokenReview, ReviewError>> {
        Box::pin(async move {
            use signet_k8s::TokenReviewer as _;
            match self.0.review(token, audiences).await {
                Ok(t) => Ok(TokenReview {
                    authenticated: true,
                    username: t.username,
                    audiences: t.audiences,
                    extra: if t.node_name.is_empty() {
                        Vec::new()
                    } else {
                        vec![(EXTRA_NODE_NAME.to_owned(), vec![t.node_name])]
                    },
                    error: None,
                }),
                // Refusals of the token, as opposed to failures to ask.
                Err(K8sError::Unauthenticated(why)) => Ok(TokenReview {
                    error: Some(why),
                    ..TokenReview::default()
                }),
                Err(e @ K8sError::Audience { .. }) => Ok(TokenReview {
                    error: Some(e.to_string()),
                    ..TokenReview::default()
                }),
                // Authenticated, but not as a service account: the caller
                // refuses an empty username as PERMISSION_DENIED.
                Err(K8sError::Malformed(why)) => Ok(TokenReview {
                    authenticated: true,
                    username: String::new(),
                    audiences: audiences.to_vec(),
                    error: Some(why),
                    ..TokenReview::default()
                }),
                Err(e) => Err(ReviewError::Unavailable(e.to_string())),
            }
        })
    }
}

/// The bundle's roots as one PEM text.
#[must_use]
pub fn roots_pem(bundle: &TrustBundle) -> String {
    bundle
        .x509_authorities()
        .iter()
        .map(|r| super::istio::pem_lf(r))
        .collect()
}

/// Writes the roots to `istio-ca-root-cert` in every namespace.
///
/// # Errors
/// The first failure; namespaces after it are tried on the next round.
pub async fn publish_roots(api: &KubeApi, bundle: &TrustBundle) -> Result<usize, K8sError> {
    let data = BTreeMap::from([(ISTIO_ROOT_KEY.to_owned(), roots_pem(bundle))]);
    let namespaces = api.list_namespaces().await?;
    for ns in &namespaces {
        api.put_config_map(ns, ISTIO_ROOT_CONFIGMAP, data.clone())
            .await?;
    }
    Ok(namespaces.len())
}

/// Keeps the ConfigMaps in step with the bundle until `shutdown` fires.
pub async fn run_root_publisher(
    api: KubeApi,
    mut bundle: watch::Receiver<Arc<TrustBundle>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let current = bundle.borrow_and_update().clone();
        match publish_roots(&api, &current).await {
            Ok(n) => tracing::debug!(
                namespaces = n,
                "published the root to {ISTIO_ROOT_CONFIGMAP}"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not publish the root to {ISTIO_ROOT_CONFIGMAP}; retrying")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(REPUBLISH_EVERY) => {}
            r = bundle.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}
