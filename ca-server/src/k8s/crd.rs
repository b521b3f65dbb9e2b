//! Pod policies from `IdentityPolicy` objects (`signet.dev/v1alpha1`, cluster-scoped,
//! the CRD in deploy/charts/signet/crds/): listed and watched when `[k8s] policy_crd =
//! true`, checked one by one (a bad object is refused, logged and audited, and the
//! others stay), and published together with the config's policies to the pod watch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use serde::Deserialize;
use signet_k8s::policy_crd::{PolicyEvent, PolicyObject};
use signet_k8s::{K8sError, KubeApi};
use tokio::sync::watch;

use super::MAX_POLICIES;
use super::policy::{Origin, Policy, PolicySettings};
use crate::ca::{Ca, CaError};

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const AUDIT_CALLER: &str = "k8s-identity-policy";

/// An IdentityPolicy's `spec`: the fields of a `[[k8s.policy]]` table, camelCase.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    id_template: Option<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    pod_labels: BTreeMap<String, String>,
    #[serde(default)]
    dns_name_templates: Vec<String>,
}

/// Checks one object into a policy.
///
/// # Errors
/// A message saying what is wrong with it.
pub fn check_object(o: &PolicyObject) -> Result<Policy, String> {
    let origin = Origin::Crd(o.name.clone());
    let spec = o.spec.as_ref().map_err(|e| format!("{origin}: {e}"))?;
    // An object without a spec takes every default.
    let spec = if spec.is_null() {
        serde_json::json!({})
    } else {
        spec.clone()
    };
    let spec: Spec =
        serde_json::from_value(spec).map_err(|e| format!("{origin}: invalid spec: {e}"))?;
    PolicySettings {
        name: o.name.clone(),
        id_template: spec.id_template,
        namespaces: spec.namespaces,
        pod_labels: spec.pod_labels,
        dns_name_templates: spec.dns_name_templates,
    }
    .check_as(origin)
}

/// Follows IdentityPolicy objects and publishes config + object policies.
pub struct CrdPolicies {
    api: KubeApi,
    ca: Arc<Ca>,
    config: Vec<Policy>,
    objects: BTreeMap<String, Policy>,
    tx: watch::Sender<Arc<Vec<Policy>>>,
}

impl CrdPolicies {
    pub fn new(
        api: KubeApi,
        ca: Arc<Ca>,
        config: Vec<Policy>,
        tx: watch::Sender<Arc<Vec<Policy>>>,
    ) -> Self {
        Self {
            api,
            ca,
            config,
            objects: BTreeMap::new(),
            tx,
        }
    }

    fn refuse(&self, name: &str, why: &str) {
        tracing::warn!(
            object = name,
            error = why,
            "IdentityPolicy refused; the other policies stay"
        );
        self.ca.audit_rejection(
            AUDIT_CALLER,
            "identity_policy",
            "",
            &CaError::InvalidArgument(why.to_owned()),
        );
    }

    /// Sets (or, for a refused object, drops) one object's policy.
    fn apply(&mut self, o: &PolicyObject) {
        match check_object(o) {
            Ok(p)
                if !self.objects.contains_key(&o.name)
                    && self.config.len() + self.objects.len() >= MAX_POLICIES =>
            {
                self.refuse(
                    &o.name,
                    &format!("{}: more than {MAX_POLICIES} policies", p.origin),
                );
            }
            Ok(p) => {
                self.objects.insert(o.name.clone(), p);
            }
            Err(e) => {
                self.objects.remove(&o.name);
                self.refuse(&o.name, &e);
            }
        }
    }

    fn publish(&self) {
        let all: Vec<Policy> = self
            .config
            .iter()
            .chain(self.objects.values())
            .cloned()
            .collect();
        self.tx.send_if_modified(|current| {
            if **current == all {
                false
            } else {
                *current = Arc::new(all);
                true
            }
        });
    }

    /// Follows the objects until `shutdown`; an unreachable API server (or a CRD
    /// not installed) is retried with backoff, keeping the last policies.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_MIN;
        'list: loop {
            let mut rv = match self.api.list_identity_policies().await {
                Ok(list) => {
                    backoff = BACKOFF_MIN;
                    self.objects.clear();
                    for o in &list.items {
                        self.apply(o);
                    }
                    self.publish();
                    tracing::info!(
                        objects = self.objects.len(),
                        "IdentityPolicy objects listed"
                    );
                    list.resource_version
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "listing IdentityPolicy objects failed");
                    if pause(&mut shutdown, &mut backoff).await {
                        return;
                    }
                    continue 'list;
                }
            };
            loop {
                let stream = match self.api.watch_identity_policies(&rv).await {
                    Ok(s) => s,
                    Err(K8sError::Expired(_)) => continue 'list,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "watching IdentityPolicy objects failed");
                        if pause(&mut shutdown, &mut backoff).await {
                            return;
                        }
                        continue;
                    }
                };
                let mut stream = std::pin::pin!(stream);
                loop {
                    let next = tokio::select! {
                        _ = shutdown.changed() => return,
                        next = stream.next() => next,
                    };
                    match next {
                        None => break,
                        Some(Ok(PolicyEvent::Bookmark(v))) => rv = v,
                        Some(Ok(PolicyEvent::Applied(o))) => {
                            self.apply(&o);
                            self.publish();
                        }
                        Some(Ok(PolicyEvent::Deleted(o))) => {
                            self.objects.remove(&o.name);
                            self.publish();
                        }
                        Some(Err(K8sError::Expired(_))) => continue 'list,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, retry_in = ?backoff, "IdentityPolicy watch failed");
                            if pause(&mut shutdown, &mut backoff).await {
                                return;
                            }
                            break;
                        }
                    }
                }
            }
        }
    }
}

async fn pause(shutdown: &mut watch::Receiver<bool>, backoff: &mut Duration) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    tokio::select! {
        _ = shutdown.changed() => true,
        () = tokio::time::sleep(wait) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str, spec: serde_json::Value) -> PolicyObject {
        PolicyObject {
            name: name.into(),
            spec: Ok(spec),
        }
    }

    #[test]
    fn objects_are_checked_like_config_tables() {
        let p = check_object(&obj(
            "web",
            serde_json::json!({"namespaces": ["shop"], "dnsNameTemplates": ["{{sa}}.svc"]}),
        ))
        .unwrap();
        assert_eq!(p.origin.to_string(), "crd:web");
        for (name, spec) in [
            (
                "web",
                serde_json::json!({"idTemplate": "spiffe://{{td}}/{{nope}}"}),
            ),
            ("web", serde_json::json!({"unknownField": 1})),
            ("web", serde_json::json!({"namespaces": "shop"})),
            ("Bad_Name", serde_json::json!({})),
        ] {
            assert!(
                check_object(&obj(name, spec.clone())).is_err(),
                "{name} {spec}"
            );
        }
        let too_big = PolicyObject {
            name: "big".into(),
            spec: Err("spec of 99999 bytes is larger than 16384".into()),
        };
        assert!(check_object(&too_big).unwrap_err().contains("larger"));
    }
}
