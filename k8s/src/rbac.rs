//! The Kubernetes permissions Signet's binaries use, kept beside the code that makes the
//! calls so that the chart's RBAC can be checked against them.

/// One RBAC rule: API group ("" for core), resource, verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub api_group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
}

/// What signet-ca calls: TokenReview (k8s_psat, mesh APIs), pods (get for k8s_psat;
/// list and watch for the pod policy and mesh impersonation checks), nodes (get, for
/// k8s_psat), IdentityPolicy objects (pod policies from the CRD, when enabled),
/// namespaces and ConfigMaps (publishing the root in every namespace).
pub const CA_RBAC: &[Rule] = &[
    Rule {
        api_group: "authentication.k8s.io",
        resource: "tokenreviews",
        verbs: &["create"],
    },
    Rule {
        api_group: "",
        resource: "pods",
        verbs: &["get", "list", "watch"],
    },
    Rule {
        api_group: "",
        resource: "nodes",
        verbs: &["get", "list", "watch"],
    },
    Rule {
        api_group: "signet.dev",
        resource: "identitypolicies",
        verbs: &["list", "watch"],
    },
    Rule {
        api_group: "",
        resource: "namespaces",
        verbs: &["list"],
    },
    Rule {
        api_group: "",
        resource: "configmaps",
        verbs: &["get", "create", "update"],
    },
];

/// What signet-agent calls: the kubelet's `/pods` (the pod attestor's
/// default `kubelet` source), which the kubelet authorizes as `get` on the
/// `nodes/proxy` subresource; with the `api` source, a list and watch of its
/// node's pods (`fieldSelector=spec.nodeName=<node>`, which RBAC cannot
/// narrow further: the grant covers every pod).
pub const AGENT_RBAC: &[Rule] = &[
    Rule {
        api_group: "",
        resource: "nodes/proxy",
        verbs: &["get"],
    },
    Rule {
        api_group: "",
        resource: "pods",
        verbs: &["list", "watch"],
    },
];

impl Rule {
    /// Whether this rule allows `verb` on `api_group`/`resource`.
    #[must_use]
    pub fn allows(&self, api_group: &str, resource: &str, verb: &str) -> bool {
        self.api_group == api_group && self.resource == resource && self.verbs.contains(&verb)
    }
}

/// Whether `rules` allow `verb` on `api_group`/`resource`.
#[must_use]
pub fn allowed(rules: &[Rule], api_group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| r.allows(api_group, resource, verb))
}
