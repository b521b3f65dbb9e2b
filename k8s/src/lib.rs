//! Signet's access to the Kubernetes API: TokenReview for projected service-account
//! tokens, pods and nodes (get, list, watch by node), and ConfigMaps written with
//! optimistic concurrency. Feature `fake` adds a loopback fake of the API server that is
//! faithful for exactly these calls, for tests of this crate and of the binaries.

mod api;
mod bounded;
mod error;
pub mod policy_crd;
pub mod rbac;
mod review;

#[cfg(feature = "fake")]
pub mod fake;

pub use api::{KubeApi, KubeConnect, PodEvent, PodList};
pub use error::K8sError;
pub use review::{
    EXTRA_NODE_NAME, EXTRA_NODE_UID, EXTRA_POD_NAME, EXTRA_POD_UID, ReviewedToken, TokenReviewer,
};

/// Re-exported so that users name the same versions as this crate.
pub use k8s_openapi;
pub use kube;
