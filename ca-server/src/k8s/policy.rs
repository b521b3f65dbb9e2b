//! Identities from a pod policy (`[[k8s.policy]]`): which pods get which SPIFFE ID,
//! DNS names and selectors, derived from the pod object alone. A derived entry's
//! parent is the k8s_psat identity of the node the pod is scheduled on, so a node is
//! authorized only for the pods the API server says run on it.
//!
//! This module is the derivation; [`super::pods`] follows pods through a watch and
//! keeps the derived entries (in memory, never in the store).

use std::collections::BTreeMap;

use serde::Deserialize;
use signet_identity::{SpiffeId, TrustDomain, reserved};
use signet_k8s::k8s_openapi::api::core::v1::Pod;

pub use super::derived::Origin;

/// The default ID template.
pub const DEFAULT_ID_TEMPLATE: &str = "spiffe://{{td}}/ns/{{ns}}/sa/{{sa}}";
const PLACEHOLDERS: &[&str] = &["td", "ns", "sa", "pod", "node"];
/// Longest template, and longest rendered SPIFFE ID (the SPIFFE spec's URI limit).
pub const MAX_TEMPLATE_LEN: usize = 512;
pub const MAX_ID_LEN: usize = 2048;
/// Most DNS-name templates, namespaces and labels one policy may name.
pub const MAX_DNS_TEMPLATES: usize = 16;
pub const MAX_NAMESPACES: usize = 256;
pub const MAX_POD_LABELS: usize = 32;
/// Longest policy name (a Kubernetes object name).
pub const MAX_NAME_LEN: usize = 253;

/// One `[[k8s.policy]]` table as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    pub name: String,
    /// SPIFFE ID template [default: spiffe://{{td}}/ns/{{ns}}/sa/{{sa}}].
    pub id_template: Option<String>,
    /// Namespaces the policy applies to; empty: all.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Labels a pod must carry (all of them).
    #[serde(default)]
    pub pod_labels: BTreeMap<String, String>,
    /// DNS name templates.
    #[serde(default)]
    pub dns_name_templates: Vec<String>,
}

/// A checked policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    /// Where it was read: the CA config or an IdentityPolicy object.
    pub origin: Origin,
    id_template: String,
    namespaces: Vec<String>,
    pod_labels: BTreeMap<String, String>,
    dns_name_templates: Vec<String>,
}

/// An entry derived from a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedEntry {
    pub spiffe_id: SpiffeId,
    pub parent: SpiffeId,
    /// (type, value) pairs as the agent's pod attestor produces them.
    pub selectors: Vec<(String, String)>,
    pub dns_names: Vec<String>,
    /// `policy:<name>` or `crd:<name>`.
    pub origin: Origin,
}

fn check_template(t: &str) -> Result<(), String> {
    if t.len() > MAX_TEMPLATE_LEN {
        return Err(format!(
            "template of {} bytes is longer than {MAX_TEMPLATE_LEN}",
            t.len()
        ));
    }
    let mut rest = t;
    while let Some(i) = rest.find("{{") {
        let after = &rest[i + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed {{{{ in template {t:?}"))?;
        let key = after[..end].trim();
        if !PLACEHOLDERS.contains(&key) {
            return Err(format!(
                "unknown placeholder {{{{{key}}}}} in template {t:?} (known: {PLACEHOLDERS:?})"
            ));
        }
        rest = &after[end + 2..];
    }
    Ok(())
}

fn render(t: &str, values: &[(&str, &str)]) -> String {
    let mut out = t.to_owned();
    for (k, v) in values {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    out
}

impl PolicySettings {
    /// Checks one policy table.
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn check(&self) -> Result<Policy, String> {
        if self.name.is_empty() {
            return Err("[[k8s.policy]] needs a name".into());
        }
        self.check_as(Origin::Policy(self.name.clone()))
    }

    /// Checks the policy read from `origin` (a config table or an IdentityPolicy).
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn check_as(&self, origin: Origin) -> Result<Policy, String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_NAME_LEN
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !name_ok {
            return Err(format!(
                "{origin}: the name must be 1 to {MAX_NAME_LEN} of a-z, 0-9, '-', '.'"
            ));
        }
        if self.dns_name_templates.len() > MAX_DNS_TEMPLATES
            || self.namespaces.len() > MAX_NAMESPACES
            || self.pod_labels.len() > MAX_POD_LABELS
        {
            return Err(format!(
                "{origin}: at most {MAX_DNS_TEMPLATES} DNS name templates, {MAX_NAMESPACES} namespaces and {MAX_POD_LABELS} pod labels"
            ));
        }
        let id_template = self
            .id_template
            .clone()
            .unwrap_or_else(|| DEFAULT_ID_TEMPLATE.to_owned());
        check_template(&id_template).map_err(|e| format!("{origin}: {e}"))?;
        for t in &self.dns_name_templates {
            check_template(t).map_err(|e| format!("{origin}: {e}"))?;
        }
        Ok(Policy {
            name: self.name.clone(),
            origin,
            id_template,
            namespaces: self.namespaces.clone(),
            pod_labels: self.pod_labels.clone(),
            dns_name_templates: self.dns_name_templates.clone(),
        })
    }
}

impl Policy {
    /// The entry `pod` gets under this policy, when the policy selects it and the pod
    /// is scheduled. `None` when it does not apply; an error when it applies but the
    /// rendered ID is not usable (reserved, other trust domain, invalid).
    ///
    /// # Errors
    /// A message saying why the rendered ID or DNS name is refused.
    pub fn derive(
        &self,
        pod: &Pod,
        td: &TrustDomain,
        cluster: &str,
        node_uid_of: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<DerivedEntry>, String> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let node = spec.and_then(|s| s.node_name.clone()).unwrap_or_default();
        let sa = spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        if ns.is_empty() || uid.is_empty() || node.is_empty() {
            return Ok(None);
        }
        // A finished pod runs nothing that needs an identity.
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return Ok(None);
        }
        if !self.namespaces.is_empty() && !self.namespaces.contains(&ns) {
            return Ok(None);
        }
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        if !self
            .pod_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
        {
            return Ok(None);
        }
        let Some(node_uid) = node_uid_of(&node) else {
            return Ok(None);
        };
        let parent = reserved::k8s_node_id(td, cluster, &node_uid)
            .map_err(|e| format!("node {node:?}: {e}"))?;
        let values = [
            ("td", td.as_str()),
            ("ns", ns.as_str()),
            ("sa", sa.as_str()),
            ("pod", name.as_str()),
            ("node", node.as_str()),
        ];
        let rendered = render(&self.id_template, &values);
        if rendered.len() > MAX_ID_LEN {
            return Err(format!(
                "{}: the rendered ID is longer than {MAX_ID_LEN} bytes",
                self.origin
            ));
        }
        let spiffe_id = SpiffeId::parse(&rendered)
            .map_err(|e| format!("{}: {rendered:?} is not a SPIFFE ID: {e}", self.origin))?;
        if !spiffe_id.is_member_of(td) {
            return Err(format!(
                "{}: {spiffe_id} is outside trust domain {td}",
                self.origin
            ));
        }
        if reserved::is_reserved(&spiffe_id) {
            return Err(format!(
                "{}: {spiffe_id} is reserved for Signet",
                self.origin
            ));
        }
        let mut dns_names = Vec::new();
        for t in &self.dns_name_templates {
            let d = render(t, &values);
            signet_identity::x509::issue::validate_dns_name(&d)
                .map_err(|e| format!("{}: DNS name {d:?}: {e}", self.origin))?;
            dns_names.push(d);
        }
        Ok(Some(DerivedEntry {
            spiffe_id,
            parent,
            selectors: vec![
                ("k8s".into(), format!("ns:{ns}")),
                ("k8s".into(), format!("sa:{sa}")),
                ("k8s".into(), format!("pod-uid:{uid}")),
            ],
            dns_names,
            origin: self.origin.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use signet_k8s::k8s_openapi::api::core::v1::PodSpec;
    use signet_k8s::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod(ns: &str, sa: &str, node: &str, labels: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some("web-1".into()),
                uid: Some("pod-uid-1".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                service_account_name: Some(sa.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn nodes(name: &str) -> Option<String> {
        (name == "n1").then(|| "node-uid-1".to_owned())
    }

    fn policy(t: Option<&str>, namespaces: &[&str], labels: &[(&str, &str)]) -> Policy {
        PolicySettings {
            name: "p".into(),
            id_template: t.map(str::to_owned),
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            pod_labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dns_name_templates: vec!["{{sa}}.{{ns}}.svc".into()],
        }
        .check()
        .unwrap()
    }

    #[test]
    fn the_default_template_names_namespace_and_service_account() {
        let e = policy(None, &[], &[])
            .derive(&pod("shop", "web", "n1", &[]), &td(), "c1", nodes)
            .unwrap()
            .unwrap();
        assert_eq!(e.spiffe_id.as_str(), "spiffe://example.org/ns/shop/sa/web");
        assert_eq!(
            e.parent.as_str(),
            "spiffe://example.org/signet/node/c1/node-uid-1"
        );
        assert_eq!(e.dns_names, vec!["web.shop.svc"]);
        assert_eq!(e.origin.to_string(), "policy:p");
        assert!(
            e.selectors
                .contains(&("k8s".into(), "pod-uid:pod-uid-1".into()))
        );
    }

    #[test]
    fn selection() {
        let p = policy(None, &["shop"], &[("app", "web")]);
        let d = |pod: Pod| p.derive(&pod, &td(), "c1", nodes).unwrap();
        assert!(d(pod("shop", "web", "n1", &[("app", "web")])).is_some());
        assert!(d(pod("other", "web", "n1", &[("app", "web")])).is_none());
        assert!(d(pod("shop", "web", "n1", &[("app", "db")])).is_none());
        // Not on a known (attested) node, or not scheduled: no entry.
        assert!(d(pod("shop", "web", "n9", &[("app", "web")])).is_none());
        assert!(d(pod("shop", "web", "", &[("app", "web")])).is_none());
        // Finished: no entry.
        for phase in ["Succeeded", "Failed"] {
            let mut done = pod("shop", "web", "n1", &[("app", "web")]);
            done.status = Some(signet_k8s::k8s_openapi::api::core::v1::PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            });
            assert!(d(done).is_none(), "{phase}");
        }
    }

    #[test]
    fn refused_templates_and_ids() {
        for t in ["spiffe://{{td}}/{{nope}}", "spiffe://{{td}}/{{ns"] {
            let s = PolicySettings {
                name: "p".into(),
                id_template: Some(t.into()),
                ..Default::default()
            };
            assert!(s.check().is_err(), "{t}");
        }
        let long = PolicySettings {
            name: "p".into(),
            id_template: Some(format!(
                "spiffe://{{{{td}}}}/{}",
                "a".repeat(MAX_TEMPLATE_LEN)
            )),
            ..Default::default()
        };
        assert!(long.check().is_err());
        let bad_name = PolicySettings {
            name: "Not A Name".into(),
            ..Default::default()
        };
        assert!(bad_name.check().is_err());
        let reserved = policy(Some("spiffe://{{td}}/signet/node/{{ns}}"), &[], &[]);
        assert!(
            reserved
                .derive(&pod("x", "y", "n1", &[]), &td(), "c1", nodes)
                .is_err()
        );
        let foreign = policy(Some("spiffe://other.org/ns/{{ns}}"), &[], &[]);
        assert!(
            foreign
                .derive(&pod("x", "y", "n1", &[]), &td(), "c1", nodes)
                .is_err()
        );
    }
}
