//! TokenReview of projected service-account tokens.

use std::future::Future;

use k8s_openapi::api::authentication::v1::TokenReviewStatus;

use crate::K8sError;

/// `user.extra` key carrying the pod name a token is bound to.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// `user.extra` key carrying the pod UID a token is bound to.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// `user.extra` key carrying the node name of the bound pod (1.30+).
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
/// `user.extra` key carrying the node UID of the bound pod (1.30+).
pub const EXTRA_NODE_UID: &str = "authentication.kubernetes.io/node-uid";

const SA_PREFIX: &str = "system:serviceaccount:";

/// What TokenReview said about a service-account token. Pod and node fields are empty
/// when the token is not bound to a pod (or the cluster predates node claims).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReviewedToken {
    pub username: String,
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub node_name: String,
    pub node_uid: String,
    pub audiences: Vec<String>,
}

/// Something that can review a bearer token: the real API server or a test double.
pub trait TokenReviewer: Send + Sync {
    /// Reviews `token`; when `audiences` is not empty the answer must name one of them.
    ///
    /// # Errors
    /// [`K8sError::Unauthenticated`] when the API server refuses the token,
    /// [`K8sError::Audience`] when it accepts it for other audiences only,
    /// [`K8sError::Malformed`] when the user is not a service account, and transport or
    /// API errors.
    fn review(
        &self,
        token: &str,
        audiences: &[String],
    ) -> impl Future<Output = Result<ReviewedToken, K8sError>> + Send;
}

impl ReviewedToken {
    /// Reads a TokenReview status. When `audiences` were asked for, `status.audiences`
    /// must contain one of them: some authenticators ignore the requested audiences and
    /// answer for the API server's own, which must not pass for ours.
    ///
    /// # Errors
    /// As [`TokenReviewer::review`].
    pub fn from_status(status: &TokenReviewStatus, audiences: &[String]) -> Result<Self, K8sError> {
        if status.authenticated != Some(true) {
            let why = status
                .error
                .clone()
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "no reason given".into());
            return Err(K8sError::Unauthenticated(why));
        }
        let got = status.audiences.clone().unwrap_or_default();
        if !audiences.is_empty() && !got.iter().any(|a| audiences.contains(a)) {
            return Err(K8sError::Audience {
                wanted: audiences.to_vec(),
                got,
            });
        }
        let user = status
            .user
            .as_ref()
            .ok_or_else(|| K8sError::Malformed("no user in status".into()))?;
        let username = user.username.clone().unwrap_or_default();
        let rest = username.strip_prefix(SA_PREFIX).ok_or_else(|| {
            K8sError::Malformed(format!("user {username:?} is not a service account"))
        })?;
        let (namespace, service_account) = rest
            .split_once(':')
            .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
            .ok_or_else(|| {
                K8sError::Malformed(format!("user {username:?} is not a service account"))
            })?;
        let extra = |key: &str| -> Result<String, K8sError> {
            match user.extra.as_ref().and_then(|m| m.get(key)) {
                None => Ok(String::new()),
                Some(v) if v.len() == 1 => Ok(v[0].clone()),
                Some(v) => Err(K8sError::Malformed(format!(
                    "extra {key} has {} values",
                    v.len()
                ))),
            }
        };
        Ok(Self {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            pod_name: extra(EXTRA_POD_NAME)?,
            pod_uid: extra(EXTRA_POD_UID)?,
            node_name: extra(EXTRA_NODE_NAME)?,
            node_uid: extra(EXTRA_NODE_UID)?,
            audiences: got,
            username,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    fn status(user: &str, auds: &[&str], extra: &[(&str, &[&str])]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(auds.iter().map(|s| s.to_string()).collect()),
            error: None,
            user: Some(UserInfo {
                username: Some(user.into()),
                uid: Some("u1".into()),
                groups: None,
                extra: Some(
                    extra
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                        .collect::<BTreeMap<_, _>>(),
                ),
            }),
        }
    }

    #[test]
    fn parses_a_pod_bound_service_account() {
        let s = status(
            "system:serviceaccount:signet:agent",
            &["signet-ca"],
            &[
                (EXTRA_POD_NAME, &["a-1"]),
                (EXTRA_POD_UID, &["p-uid"]),
                (EXTRA_NODE_NAME, &["n1"]),
                (EXTRA_NODE_UID, &["n-uid"]),
            ],
        );
        let r = ReviewedToken::from_status(&s, &["signet-ca".into()]).unwrap();
        assert_eq!(
            (r.namespace.as_str(), r.service_account.as_str()),
            ("signet", "agent")
        );
        assert_eq!((r.pod_name.as_str(), r.pod_uid.as_str()), ("a-1", "p-uid"));
        assert_eq!((r.node_name.as_str(), r.node_uid.as_str()), ("n1", "n-uid"));
    }

    #[test]
    fn refusals() {
        let mut unauth = status("system:serviceaccount:a:b", &[], &[]);
        unauth.authenticated = Some(false);
        unauth.error = Some("token has expired".into());
        assert!(
            matches!(ReviewedToken::from_status(&unauth, &[]), Err(K8sError::Unauthenticated(e)) if e.contains("expired"))
        );
        let other = status(
            "system:serviceaccount:a:b",
            &["https://kubernetes.default.svc"],
            &[],
        );
        assert!(matches!(
            ReviewedToken::from_status(&other, &["signet-ca".into()]),
            Err(K8sError::Audience { .. })
        ));
        assert!(ReviewedToken::from_status(&other, &[]).is_ok());
        for user in [
            "alice",
            "system:serviceaccount:a",
            "system:serviceaccount::b",
            "system:serviceaccount:a:b:c",
        ] {
            let s = status(user, &[], &[]);
            assert!(
                matches!(
                    ReviewedToken::from_status(&s, &[]),
                    Err(K8sError::Malformed(_))
                ),
                "{user}"
            );
        }
        let two = status(
            "system:serviceaccount:a:b",
            &[],
            &[(EXTRA_POD_UID, &["x", "y"])],
        );
        assert!(matches!(
            ReviewedToken::from_status(&two, &[]),
            Err(K8sError::Malformed(_))
        ));
    }
}
