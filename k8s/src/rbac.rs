//! The Kubernetes permissions Signet's binaries use, kept beside the code that makes the
//! calls so that the chart's RBAC can be checked against them.

/// One RBAC rule: API group ("" for core), resource, verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub api_group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
}

/// What signet-ca calls: TokenReview (k8s_psat, mesh APIs), pods and nodes (attestation
/// and the pod policy's watch), ConfigMaps it publishes the root in.
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

/// What signet-agent calls: the pods of its own node (workload attestation).
pub const AGENT_RBAC: &[Rule] = &[
    Rule {
        api_group: "",
        resource: "pods",
        verbs: &["get", "list", "watch"],
    },
    Rule {
        api_group: "",
        resource: "nodes",
        verbs: &["get"],
    },
];
