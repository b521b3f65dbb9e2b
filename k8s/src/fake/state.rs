//! The fake API server's objects, resourceVersions and pod event history.

use std::collections::{BTreeMap, HashMap, VecDeque};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// How many pod events are kept for watches that resume from an old resourceVersion.
const HISTORY: usize = 4096;

/// What TokenReview knows about one token (its JWT claims, in effect).
#[derive(Debug, Clone, Default)]
pub struct FakeToken {
    pub namespace: String,
    pub service_account: String,
    /// The `aud` claim.
    pub audiences: Vec<String>,
    /// Bound pod (name, uid), if any.
    pub pod: Option<(String, String)>,
    /// Node of the bound pod (name, uid), if any.
    pub node: Option<(String, String)>,
    pub expired: bool,
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
}

impl Request {
    /// The RBAC (api group, resource, verb) this request needs, as kube-apiserver's
    /// request-info resolver derives it; `None` for paths outside the API.
    #[must_use]
    pub fn rbac(&self) -> Option<(String, String, String)> {
        let parts: Vec<&str> = self.path.trim_matches('/').split('/').collect();
        let (group, rest) = match parts.as_slice() {
            ["api", "v1", rest @ ..] => (String::new(), rest),
            ["apis", group, _version, rest @ ..] => ((*group).to_owned(), rest),
            _ => return None,
        };
        let (resource, named) = match rest {
            ["namespaces", _, resource] => (*resource, false),
            ["namespaces", _, resource, _name] => (*resource, true),
            [resource] => (*resource, false),
            [resource, _name] => (*resource, true),
            _ => return None,
        };
        let watch = self
            .query
            .split('&')
            .any(|kv| kv == "watch=true" || kv == "watch=1");
        let verb = match (self.method.as_str(), named) {
            ("GET", true) => "get",
            ("GET", false) if watch => "watch",
            ("GET", false) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            _ => return None,
        };
        Some((group, resource.to_owned(), verb.to_owned()))
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Event {
    Pod {
        kind: &'static str,
        rv: u64,
        pod: Box<Pod>,
    },
    /// An IdentityPolicy object (signet.dev/v1alpha1) changed.
    Policy {
        kind: &'static str,
        rv: u64,
        obj: serde_json::Value,
    },
    Bookmark(u64),
    /// Ends every open watch (the server went away).
    Close,
}

impl Event {
    /// The resourceVersion an object event was recorded at.
    pub(crate) fn rv(&self) -> Option<u64> {
        match self {
            Event::Pod { rv, .. } | Event::Policy { rv, .. } => Some(*rv),
            _ => None,
        }
    }
}

pub(crate) struct State {
    /// The last resourceVersion handed out; shared by all kinds, as etcd's revision is.
    pub rv: u64,
    uid_seq: u64,
    pub tokens: HashMap<String, FakeToken>,
    pub check_bound_objects: bool,
    pub ignore_requested_audiences: bool,
    /// Every request is answered 503 (an outage).
    pub unavailable: bool,
    /// Pod list and watch answer 500, as a server that lost etcd does.
    pub pods_unavailable: bool,
    pub pods: BTreeMap<(String, String), Pod>,
    pub pod_events: VecDeque<Event>,
    /// Watches from a resourceVersion below this get 410.
    pub compacted_to: u64,
    pub nodes: BTreeMap<String, Node>,
    pub namespaces: BTreeMap<String, Namespace>,
    pub config_maps: BTreeMap<(String, String), ConfigMap>,
    /// IdentityPolicy objects by name, as stored (with metadata).
    pub identity_policies: BTreeMap<String, serde_json::Value>,
    pub interfere: HashMap<(String, String), usize>,
    pub requests: Vec<Request>,
}

impl State {
    pub fn new() -> Self {
        let mut st = Self {
            rv: 1000,
            uid_seq: 0,
            tokens: HashMap::new(),
            check_bound_objects: true,
            ignore_requested_audiences: false,
            unavailable: false,
            pods_unavailable: false,
            pods: BTreeMap::new(),
            pod_events: VecDeque::new(),
            compacted_to: 0,
            nodes: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            config_maps: BTreeMap::new(),
            identity_policies: BTreeMap::new(),
            interfere: HashMap::new(),
            requests: Vec::new(),
        };
        // Namespaces every cluster has.
        st.add_namespace("default");
        st.add_namespace("kube-system");
        st
    }

    pub fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    pub fn new_uid(&mut self) -> String {
        self.uid_seq += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.uid_seq)
    }

    fn stamp(&mut self, meta: &mut ObjectMeta) -> u64 {
        if meta.uid.as_deref().unwrap_or("").is_empty() {
            meta.uid = Some(self.new_uid());
        }
        let rv = self.next_rv();
        meta.resource_version = Some(rv.to_string());
        rv
    }

    pub fn apply_pod(&mut self, mut pod: Pod) -> (Pod, Event) {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        pod.metadata.namespace = Some(ns.clone());
        self.add_namespace(&ns);
        let key = (ns, name);
        let kind = if self.pods.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        if let (Some(old), true) = (self.pods.get(&key), pod.metadata.uid.is_none()) {
            pod.metadata.uid = old.metadata.uid.clone();
        }
        let rv = self.stamp(&mut pod.metadata);
        self.pods.insert(key, pod.clone());
        let ev = Event::Pod {
            kind,
            rv,
            pod: Box::new(pod.clone()),
        };
        self.record(ev.clone());
        (pod, ev)
    }

    pub fn delete_pod(&mut self, namespace: &str, name: &str) -> Option<(Pod, Event)> {
        let mut pod = self
            .pods
            .remove(&(namespace.to_string(), name.to_string()))?;
        let rv = self.next_rv();
        pod.metadata.resource_version = Some(rv.to_string());
        let ev = Event::Pod {
            kind: "DELETED",
            rv,
            pod: Box::new(pod.clone()),
        };
        self.record(ev.clone());
        Some((pod, ev))
    }

    fn record(&mut self, ev: Event) {
        if self.pod_events.len() == HISTORY
            && let Some(Event::Pod { rv, .. } | Event::Policy { rv, .. }) =
                self.pod_events.pop_front()
        {
            self.compacted_to = rv;
        }
        self.pod_events.push_back(ev);
    }

    /// Creates or replaces IdentityPolicy `name` with `spec`; returns the stored object.
    pub fn apply_identity_policy(
        &mut self,
        name: &str,
        spec: serde_json::Value,
    ) -> (serde_json::Value, Event) {
        let kind = if self.identity_policies.contains_key(name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let uid = match self.identity_policies.get(name) {
            Some(old) => old["metadata"]["uid"].clone(),
            None => serde_json::Value::from(self.new_uid()),
        };
        let rv = self.next_rv();
        let obj = serde_json::json!({
            "apiVersion": "signet.dev/v1alpha1",
            "kind": "IdentityPolicy",
            "metadata": {"name": name, "uid": uid, "resourceVersion": rv.to_string()},
            "spec": spec,
        });
        self.identity_policies.insert(name.to_owned(), obj.clone());
        let ev = Event::Policy {
            kind,
            rv,
            obj: obj.clone(),
        };
        self.record(ev.clone());
        (obj, ev)
    }

    /// Deletes IdentityPolicy `name`.
    pub fn delete_identity_policy(&mut self, name: &str) -> Option<Event> {
        let mut obj = self.identity_policies.remove(name)?;
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = serde_json::Value::from(rv.to_string());
        let ev = Event::Policy {
            kind: "DELETED",
            rv,
            obj,
        };
        self.record(ev.clone());
        Some(ev)
    }

    pub fn apply_node(&mut self, mut node: Node) -> Node {
        let name = node.metadata.name.clone().unwrap_or_default();
        if let (Some(old), true) = (self.nodes.get(&name), node.metadata.uid.is_none()) {
            node.metadata.uid = old.metadata.uid.clone();
        }
        self.stamp(&mut node.metadata);
        self.nodes.insert(name, node.clone());
        node
    }

    pub fn add_namespace(&mut self, name: &str) {
        if self.namespaces.contains_key(name) {
            return;
        }
        let mut ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        self.stamp(&mut ns.metadata);
        self.namespaces.insert(name.to_string(), ns);
    }
}
