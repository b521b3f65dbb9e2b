//! Who a mesh proxy is: its service-account token, reviewed by the API
//! server (TokenReview), and the pods that tell whether a node proxy may
//! act for another account.
//!
//! The two traits have the shape of `signet_k8s::TokenReviewer` and its pod
//! lookup; the Kubernetes client implements them, tests use stubs.

use std::future::Future;
use std::pin::Pin;

/// `status.user.extra` key carrying the node of a pod-bound token.
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";

/// What a TokenReview answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenReview {
    /// `status.authenticated`.
    pub authenticated: bool,
    /// `status.user.username`, e.g. `system:serviceaccount:NS:SA`.
    pub username: String,
    /// `status.audiences`: the audiences the token was found valid for.
    pub audiences: Vec<String>,
    /// `status.user.extra` (`authentication.kubernetes.io/...`).
    pub extra: Vec<(String, Vec<String>)>,
    /// `status.error`, when the API server gave one.
    pub error: Option<String>,
}

impl TokenReview {
    /// The single value of `extra[key]`, if it holds exactly one.
    #[must_use]
    pub fn extra_value(&self, key: &str) -> Option<&str> {
        match self.extra.iter().find(|(k, _)| k == key) {
            Some((_, v)) if v.len() == 1 => v.first().map(String::as_str),
            _ => None,
        }
    }
}

/// Why a review could not be made (not: why a token was refused).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReviewError {
    /// The API server could not be reached or answered an error.
    #[error("token review failed: {0}")]
    Unavailable(String),
    /// The pod cache has no complete view of the cluster's pods yet (or
    /// lost it): nothing can be said about a node's pods.
    #[error("the CA's watch of pods has not synced with the API server; try again")]
    PodsNotSynced,
}

/// A boxed future, so that the traits stay object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Reviews service-account tokens (TokenReview).
pub trait TokenReviewer: Send + Sync {
    /// Reviews `token` for `audiences`.
    fn review<'a>(
        &'a self,
        token: &'a str,
        audiences: &'a [String],
    ) -> BoxFuture<'a, Result<TokenReview, ReviewError>>;
}

/// Finds pods: whether a service account has a pod on a node.
pub trait PodLookup: Send + Sync {
    /// Whether a pod of `namespace`/`service_account` runs on `node`.
    fn has_pod_on_node<'a>(
        &'a self,
        namespace: &'a str,
        service_account: &'a str,
        node: &'a str,
    ) -> BoxFuture<'a, Result<bool, ReviewError>>;
}

/// A Kubernetes service account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccount {
    /// Parses `system:serviceaccount:NS:SA`; `None` for any other user
    /// (a person, a node, a malformed name).
    #[must_use]
    pub fn from_username(username: &str) -> Option<Self> {
        let rest = username.strip_prefix("system:serviceaccount:")?;
        let (ns, sa) = rest.split_once(':')?;
        if !is_dns_label(ns) || !is_dns_subdomain(sa) {
            return None;
        }
        Some(Self {
            namespace: ns.into(),
            name: sa.into(),
        })
    }

    /// `NS:SA`, as the node-account list spells it.
    #[must_use]
    pub fn key(&self) -> String {
        format!("{}:{}", self.namespace, self.name)
    }
}

/// A Kubernetes namespace name (RFC 1123 label).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A service-account name (RFC 1123 subdomain).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_accounts_from_usernames() {
        for (user, want) in [
            (
                "system:serviceaccount:default:web",
                Some(("default", "web")),
            ),
            (
                "system:serviceaccount:istio-system:ztunnel",
                Some(("istio-system", "ztunnel")),
            ),
            ("system:serviceaccount:a:b.c", Some(("a", "b.c"))),
            ("system:serviceaccount:default", None),
            ("system:serviceaccount:Default:web", None),
            ("system:serviceaccount:default:web:x", None),
            ("system:serviceaccount::web", None),
            ("system:node:worker-1", None),
            ("alice", None),
        ] {
            let got = ServiceAccount::from_username(user);
            assert_eq!(
                got.as_ref()
                    .map(|s| (s.namespace.as_str(), s.name.as_str())),
                want,
                "{user}"
            );
        }
    }
}
