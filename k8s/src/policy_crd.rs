//! Signet's `IdentityPolicy` custom resource (`signet.dev/v1alpha1`, cluster-scoped):
//! the CA lists and watches it. Objects come back as their name and their `spec` as
//! JSON; checking the spec is the CA's business, so that one bad object is refused on
//! its own.

use futures::{Stream, TryStreamExt};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, WatchEvent, WatchParams};

use crate::{K8sError, KubeApi};

pub const GROUP: &str = "signet.dev";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "IdentityPolicy";
pub const PLURAL: &str = "identitypolicies";
/// Largest `spec` (as JSON) of one object that is read; larger ones are refused.
pub const MAX_SPEC_BYTES: usize = 16 * 1024;
/// Server-side timeout of one watch request.
const WATCH_TIMEOUT_SECS: u32 = 290;

/// One IdentityPolicy object.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyObject {
    pub name: String,
    /// The object's `spec`; `Err` when it was too large to read.
    pub spec: Result<serde_json::Value, String>,
}

/// One change to the set of IdentityPolicy objects.
#[derive(Debug, Clone)]
pub enum PolicyEvent {
    Applied(PolicyObject),
    Deleted(PolicyObject),
    /// Nothing changed up to this resourceVersion (resume point).
    Bookmark(String),
}

/// Every IdentityPolicy object and the resourceVersion to watch from.
#[derive(Debug, Clone)]
pub struct PolicyList {
    pub items: Vec<PolicyObject>,
    pub resource_version: String,
}

fn resource() -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: KIND.into(),
        plural: PLURAL.into(),
    }
}

fn object(o: DynamicObject) -> PolicyObject {
    let name = o.metadata.name.unwrap_or_default();
    let spec = o
        .data
        .get("spec")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let len = serde_json::to_vec(&spec).map_or(usize::MAX, |v| v.len());
    let spec = if len > MAX_SPEC_BYTES {
        Err(format!(
            "spec of {len} bytes is larger than {MAX_SPEC_BYTES}"
        ))
    } else {
        Ok(spec)
    };
    PolicyObject { name, spec }
}

impl KubeApi {
    fn identity_policies(&self) -> Api<DynamicObject> {
        Api::all_with(self.client.clone(), &resource())
    }

    /// Every IdentityPolicy object.
    ///
    /// # Errors
    /// Transport and API errors (404 when the CRD is not installed).
    pub async fn list_identity_policies(&self) -> Result<PolicyList, K8sError> {
        let list = self
            .identity_policies()
            .list(&ListParams::default())
            .await?;
        Ok(PolicyList {
            resource_version: list.metadata.resource_version.unwrap_or_default(),
            items: list.items.into_iter().map(object).collect(),
        })
    }

    /// Changes to IdentityPolicy objects after `resource_version`, with bookmarks.
    /// [`K8sError::Expired`] means: list again.
    ///
    /// # Errors
    /// Transport and API errors, at the start or as stream items.
    pub async fn watch_identity_policies(
        &self,
        resource_version: &str,
    ) -> Result<impl Stream<Item = Result<PolicyEvent, K8sError>> + Send + use<>, K8sError> {
        let wp = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
        let stream = crate::bounded::watch::<DynamicObject>(
            &self.client,
            kube::core::Request::new(format!("/apis/{GROUP}/{VERSION}/{PLURAL}")),
            &wp,
            resource_version,
            crate::bounded::MAX_WATCH_EVENT_BYTES,
        )
        .await?;
        Ok(stream.and_then(|ev| async move {
            match ev {
                WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                    Ok(PolicyEvent::Applied(object(o)))
                }
                WatchEvent::Deleted(o) => Ok(PolicyEvent::Deleted(object(o))),
                WatchEvent::Bookmark(b) => Ok(PolicyEvent::Bookmark(b.metadata.resource_version)),
                WatchEvent::Error(s) if s.code == 410 => Err(K8sError::Expired(s.message)),
                WatchEvent::Error(s) => Err(K8sError::Api {
                    code: s.code,
                    reason: s.reason,
                    message: s.message,
                }),
            }
        }))
    }
}
