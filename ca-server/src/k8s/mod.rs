//! Kubernetes on the CA: the `[k8s]` settings and k8s_psat node attestation, where an
//! agent proves which node it runs on with its pod's projected service-account token.

pub mod crd;
pub mod derived;
pub mod pods;
pub mod policy;
mod psat;

use std::path::PathBuf;

use serde::Deserialize;
use signet_k8s::KubeConnect;

pub use psat::{MAX_TOKEN_LEN, PsatAttestor};

/// Most pod policies (config tables plus IdentityPolicy objects).
pub const MAX_POLICIES: usize = 64;

/// Audience the agent's projected token must carry unless configured otherwise.
pub const DEFAULT_PSAT_AUDIENCE: &str = "signet-ca";

/// The `[k8s]` table as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sSettings {
    /// Kubeconfig file of the API server; absent: the pod's in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// Cluster name, a segment of node SPIFFE IDs (`/signet/node/<cluster>/<node-uid>`).
    pub cluster: Option<String>,
    /// Audience the agent's projected token must carry [default: signet-ca].
    pub psat_audience: Option<String>,
    /// `namespace:serviceaccount` pairs allowed to attest nodes (the agent's).
    #[serde(default)]
    pub psat_allowed_service_accounts: Vec<String>,
    /// Identities from a pod policy (`[[k8s.policy]]`).
    #[serde(default)]
    pub policy: Vec<policy::PolicySettings>,
    /// Also read pod policies from IdentityPolicy objects (signet.dev/v1alpha1).
    #[serde(default)]
    pub policy_crd: bool,
}

/// The checked `[k8s]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sConfig {
    pub connect: KubeConnect,
    pub cluster: String,
    pub psat_audience: String,
    /// (namespace, service account) pairs.
    pub psat_allowed: Vec<(String, String)>,
    pub policies: Vec<policy::Policy>,
    pub policy_crd: bool,
}

fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        && s != "."
        && s != ".."
}

impl K8sSettings {
    /// Checks the table.
    ///
    /// # Errors
    /// A message naming the setting that is wrong.
    pub fn check(&self) -> Result<K8sConfig, String> {
        let cluster = self.cluster.clone().unwrap_or_default();
        if !is_segment(&cluster) {
            return Err(format!(
                "[k8s] cluster must be set to a name of letters, digits, '-', '.', '_' (it is part of node SPIFFE IDs), not {cluster:?}"
            ));
        }
        let psat_audience = self
            .psat_audience
            .clone()
            .unwrap_or_else(|| DEFAULT_PSAT_AUDIENCE.to_owned());
        if psat_audience.is_empty() {
            return Err("[k8s] psat_audience must not be empty".into());
        }
        let mut psat_allowed = Vec::new();
        for pair in &self.psat_allowed_service_accounts {
            match pair.split_once(':') {
                Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains(':') => {
                    psat_allowed.push((ns.to_owned(), sa.to_owned()));
                }
                _ => {
                    return Err(format!(
                        "[k8s] psat_allowed_service_accounts: {pair:?} is not namespace:serviceaccount"
                    ));
                }
            }
        }
        if psat_allowed.is_empty() {
            return Err(
                "[k8s] psat_allowed_service_accounts must name the agent's namespace:serviceaccount"
                    .into(),
            );
        }
        let connect = match &self.kubeconfig {
            Some(p) => KubeConnect::Kubeconfig(p.clone()),
            None => KubeConnect::InCluster,
        };
        if self.policy.len() > MAX_POLICIES {
            return Err(format!(
                "[k8s] at most {MAX_POLICIES} [[k8s.policy]] tables"
            ));
        }
        let policies = self
            .policy
            .iter()
            .map(policy::PolicySettings::check)
            .collect::<Result<Vec<_>, _>>()?;
        let mut names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!(
                "[k8s] two [[k8s.policy]] tables are named {:?}",
                w[0]
            ));
        }
        Ok(K8sConfig {
            connect,
            cluster,
            psat_audience,
            psat_allowed,
            policies,
            policy_crd: self.policy_crd,
        })
    }
}

/// Starts the pod watch when `[k8s]` has pod policies: their entries are then derived
/// from the pods the API server reports.
pub fn start_pod_policies(
    ca: &std::sync::Arc<crate::ca::Ca>,
    api: &signet_k8s::KubeApi,
    k: &K8sConfig,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use tracing::Instrument as _;
    if k.policies.is_empty() && !k.policy_crd {
        return;
    }
    tracing::info!(
        policies = ?k.policies.iter().map(|p| p.origin.to_string()).collect::<Vec<_>>(),
        policy_crd = k.policy_crd,
        "deriving entries from pod policies"
    );
    let (policies_tx, policies) =
        tokio::sync::watch::channel(std::sync::Arc::new(k.policies.clone()));
    let watch = pods::PodWatch::new(api.clone(), ca.clone(), k.cluster.clone(), policies);
    if k.policy_crd {
        let crds = crd::CrdPolicies::new(api.clone(), ca.clone(), k.policies.clone(), policies_tx);
        tokio::spawn(
            crds.run(shutdown.clone())
                .instrument(tracing::info_span!("identity-policies")),
        );
        tokio::spawn(
            watch
                .run(shutdown)
                .instrument(tracing::info_span!("pod-policies")),
        );
    } else {
        tokio::spawn(
            async move {
                // Config policies do not change while the CA runs.
                let _keep = policies_tx;
                watch.run(shutdown).await;
            }
            .instrument(tracing::info_span!("pod-policies")),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(cluster: &str, allowed: &[&str]) -> K8sSettings {
        K8sSettings {
            kubeconfig: None,
            cluster: Some(cluster.into()),
            psat_audience: None,
            psat_allowed_service_accounts: allowed.iter().map(|s| s.to_string()).collect(),
            policy: Vec::new(),
            policy_crd: false,
        }
    }

    #[test]
    fn checks() {
        let ok = settings("prod", &["signet:agent"]).check().unwrap();
        assert_eq!(ok.psat_audience, DEFAULT_PSAT_AUDIENCE);
        assert_eq!(ok.psat_allowed, vec![("signet".into(), "agent".into())]);
        assert_eq!(ok.connect, KubeConnect::InCluster);
        for (cluster, allowed) in [
            ("", &["a:b"][..]),
            ("a/b", &["a:b"][..]),
            ("..", &["a:b"][..]),
            ("prod", &[][..]),
            ("prod", &["ab"][..]),
            ("prod", &[":b"][..]),
            ("prod", &["a:b:c"][..]),
        ] {
            assert!(
                settings(cluster, allowed).check().is_err(),
                "{cluster} {allowed:?}"
            );
        }
    }
}
