//! The `[mesh_api]` settings: where the Istio and Linkerd CA APIs listen,
//! under which names, and how callers are authenticated.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::review::{is_dns_label, is_dns_subdomain};

/// Audience Istio proxies request for their CA token.
pub const DEFAULT_ISTIO_AUDIENCE: &str = "istio-ca";
/// Audience of the token linkerd-identity reviews.
pub const DEFAULT_LINKERD_AUDIENCE: &str = "identity.l5d.io";
/// Linkerd's control-plane namespace.
pub const DEFAULT_LINKERD_CONTROL_NAMESPACE: &str = "linkerd";
/// Linkerd's identity trust domain name.
pub const DEFAULT_LINKERD_TRUST_DOMAIN: &str = "cluster.local";
/// Longest token accepted from a caller: projected tokens are about 1 KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Largest request message on the mesh API (a CSR and a small Struct).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Open mesh connections, all proxies together, by default: one per
/// sidecar or node proxy, which keep theirs open.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// The most `max_connections` may be set to.
pub const MAX_MAX_CONNECTIONS: usize = 65_536;
/// Open mesh connections from one address by default (node proxies and
/// host-network pods share their node's).
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 64;
/// How long a proxy's connection lives before the CA asks it to reconnect
/// (HTTP/2 GOAWAY) by default, as istiod's 30 minutes: connections spread
/// over CA replicas again, and a proxy re-resolves the CA's address.
pub const DEFAULT_MAX_CONNECTION_AGE: Duration = Duration::from_secs(30 * 60);
/// Bounds of `max_connection_age`.
pub const MIN_MAX_CONNECTION_AGE: Duration = Duration::from_secs(1);
pub const MAX_MAX_CONNECTION_AGE: Duration = Duration::from_secs(24 * 3600);

/// `[mesh_api]` as written in the file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshApiSettings {
    /// Address of the mesh API's TLS listener [default: off].
    pub listen: Option<SocketAddr>,
    /// Serve `istio.v1.auth.IstioCertificateService` [default: true].
    pub istio: Option<bool>,
    /// Serve `io.linkerd.proxy.identity.Identity` [default: false].
    pub linkerd: Option<bool>,
    /// DNS names of the serving certificate, e.g. `istiod.istio-system.svc`.
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Audience required of Istio tokens [default: istio-ca].
    pub istio_audience: Option<String>,
    /// Audience required of Linkerd tokens [default: identity.l5d.io].
    pub linkerd_audience: Option<String>,
    /// When set, Istio callers' `clusterid` header must equal it.
    pub cluster_id: Option<String>,
    /// `NS:SA` of node proxies (ztunnel) allowed to ask for the identity of
    /// a service account that has a pod on their node.
    #[serde(default)]
    pub node_accounts: Vec<String>,
    /// Linkerd's control-plane namespace [default: linkerd].
    pub linkerd_control_namespace: Option<String>,
    /// Linkerd's identity trust domain name [default: cluster.local].
    pub linkerd_trust_domain: Option<String>,
    /// Put the SPIFFE ID in Linkerd leaves as a URI SAN besides the DNS
    /// identity [default: false, the DNS SAN only, as linkerd-identity].
    pub linkerd_spiffe_uri: Option<bool>,
    /// The API server for TokenReview and pods: a kubeconfig file
    /// [default: the pod's in-cluster service account].
    pub kubeconfig: Option<PathBuf>,
    /// Publish the root to ConfigMap `istio-ca-root-cert` in every
    /// namespace, as istiod does [default: false].
    pub publish_root_configmap: Option<bool>,
    /// Most open mesh connections (counted apart from the node API's)
    /// [default: 4096, at most 65536].
    pub max_connections: Option<usize>,
    /// Most open mesh connections from one address [default: 64].
    pub max_connections_per_ip: Option<usize>,
    /// Age at which a connection is asked to go (HTTP/2 GOAWAY: calls in
    /// flight finish, the proxy reconnects), e.g. "30m" [default: 30m,
    /// between 1s and 24h].
    pub max_connection_age: Option<String>,
}

/// The checked `[mesh_api]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    pub listen: SocketAddr,
    pub istio: bool,
    pub linkerd: bool,
    pub server_names: Vec<String>,
    pub istio_audience: String,
    pub linkerd_audience: String,
    pub cluster_id: Option<String>,
    /// `NS:SA` keys.
    pub node_accounts: Vec<String>,
    pub linkerd_control_namespace: String,
    pub linkerd_trust_domain: String,
    pub linkerd_spiffe_uri: bool,
    /// `None`: in-cluster.
    pub kubeconfig: Option<PathBuf>,
    pub publish_root_configmap: bool,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_connection_age: Duration,
}

/// Why `[mesh_api]` cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshConfigError {
    #[error("mesh_api: {0} must not be empty")]
    Empty(&'static str),
    #[error("mesh_api: invalid server_names: {0}")]
    ServerName(#[source] signet_identity::x509::IssueError),
    #[error("mesh_api: node_accounts entry {0:?} is not NAMESPACE:SERVICEACCOUNT")]
    NodeAccount(String),
    #[error("mesh_api: {name} {value:?} is not a DNS name")]
    DnsName { name: &'static str, value: String },
    #[error("mesh_api: neither istio nor linkerd is enabled")]
    NothingServed,
    #[error("mesh_api: {name} = {value} is outside 1..={max}")]
    Count {
        name: &'static str,
        value: usize,
        max: usize,
    },
    #[error("mesh_api: max_connection_age {0:?} is not a duration between 1s and 24h")]
    Age(String),
}

impl MeshApiSettings {
    /// Checks the settings; `None` when no listener is configured.
    ///
    /// # Errors
    /// One [`MeshConfigError`] per rule.
    pub fn check(&self) -> Result<Option<MeshConfig>, MeshConfigError> {
        let Some(listen) = self.listen else {
            return Ok(None);
        };
        let istio = self.istio.unwrap_or(true);
        let linkerd = self.linkerd.unwrap_or(false);
        if !istio && !linkerd {
            return Err(MeshConfigError::NothingServed);
        }
        if self.server_names.is_empty() {
            return Err(MeshConfigError::Empty("server_names"));
        }
        for name in &self.server_names {
            signet_identity::x509::issue::validate_dns_name(name)
                .map_err(MeshConfigError::ServerName)?;
        }
        for key in &self.node_accounts {
            let ok = key
                .split_once(':')
                .is_some_and(|(ns, sa)| is_dns_label(ns) && is_dns_subdomain(sa));
            if !ok {
                return Err(MeshConfigError::NodeAccount(key.clone()));
            }
        }
        let non_empty = |v: &Option<String>, name, default: &str| match v {
            Some(s) if s.is_empty() => Err(MeshConfigError::Empty(name)),
            Some(s) => Ok(s.clone()),
            None => Ok(default.to_owned()),
        };
        let control_ns = non_empty(
            &self.linkerd_control_namespace,
            "linkerd_control_namespace",
            DEFAULT_LINKERD_CONTROL_NAMESPACE,
        )?;
        if !is_dns_label(&control_ns) {
            return Err(MeshConfigError::DnsName {
                name: "linkerd_control_namespace",
                value: control_ns,
            });
        }
        let linkerd_td = non_empty(
            &self.linkerd_trust_domain,
            "linkerd_trust_domain",
            DEFAULT_LINKERD_TRUST_DOMAIN,
        )?;
        if !is_dns_subdomain(&linkerd_td) {
            return Err(MeshConfigError::DnsName {
                name: "linkerd_trust_domain",
                value: linkerd_td,
            });
        }
        let max_connections = self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        let per_ip = self
            .max_connections_per_ip
            .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_IP.min(max_connections));
        for (name, value, max) in [
            ("max_connections", max_connections, MAX_MAX_CONNECTIONS),
            ("max_connections_per_ip", per_ip, max_connections),
        ] {
            if value == 0 || value > max {
                return Err(MeshConfigError::Count { name, value, max });
            }
        }
        let max_connection_age = match &self.max_connection_age {
            None => DEFAULT_MAX_CONNECTION_AGE,
            Some(text) => humantime::parse_duration(text)
                .ok()
                .filter(|d| (MIN_MAX_CONNECTION_AGE..=MAX_MAX_CONNECTION_AGE).contains(d))
                .ok_or_else(|| MeshConfigError::Age(text.clone()))?,
        };
        Ok(Some(MeshConfig {
            listen,
            istio,
            linkerd,
            server_names: self.server_names.clone(),
            istio_audience: non_empty(
                &self.istio_audience,
                "istio_audience",
                DEFAULT_ISTIO_AUDIENCE,
            )?,
            linkerd_audience: non_empty(
                &self.linkerd_audience,
                "linkerd_audience",
                DEFAULT_LINKERD_AUDIENCE,
            )?,
            cluster_id: self.cluster_id.clone().filter(|c| !c.is_empty()),
            node_accounts: self.node_accounts.clone(),
            linkerd_control_namespace: control_ns,
            linkerd_trust_domain: linkerd_td,
            linkerd_spiffe_uri: self.linkerd_spiffe_uri.unwrap_or(false),
            kubeconfig: self.kubeconfig.clone(),
            publish_root_configmap: self.publish_root_configmap.unwrap_or(false),
            max_connections,
            max_connections_per_ip: per_ip,
            max_connection_age,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml_text: &str) -> MeshApiSettings {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn off_unless_listen_is_set() {
        assert_eq!(settings("istio = true").check().unwrap(), None);
    }

    #[test]
    fn defaults() {
        let c =
            settings("listen = \"127.0.0.1:15012\"\nserver_names = [\"istiod.istio-system.svc\"]")
                .check()
                .unwrap()
                .unwrap();
        assert!(c.istio && !c.linkerd);
        assert_eq!(c.istio_audience, "istio-ca");
        assert_eq!(c.linkerd_audience, "identity.l5d.io");
        assert_eq!(c.linkerd_control_namespace, "linkerd");
        assert_eq!(c.linkerd_trust_domain, "cluster.local");
        assert_eq!(c.cluster_id, None);
        assert!(!c.linkerd_spiffe_uri);
        assert_eq!(c.max_connections, 4096);
        assert_eq!(c.max_connections_per_ip, 64);
        assert_eq!(c.max_connection_age, Duration::from_secs(1800));
    }

    #[test]
    fn refusals() {
        let base = "listen = \"127.0.0.1:15012\"\n";
        for (extra, want) in [
            ("", "server_names must not be empty"),
            ("server_names = [\"a b\"]", "invalid server_names"),
            (
                "server_names = [\"x\"]\nnode_accounts = [\"istio-system\"]",
                "node_accounts",
            ),
            (
                "server_names = [\"x\"]\nistio = false\nlinkerd = false",
                "neither istio nor linkerd",
            ),
            (
                "server_names = [\"x\"]\nlinkerd_control_namespace = \"Linkerd\"",
                "linkerd_control_namespace",
            ),
            (
                "server_names = [\"x\"]\nistio_audience = \"\"",
                "istio_audience",
            ),
            (
                "server_names = [\"x\"]\nmax_connections = 0",
                "max_connections = 0",
            ),
            (
                "server_names = [\"x\"]\nmax_connections = 100000",
                "max_connections = 100000",
            ),
            (
                "server_names = [\"x\"]\nmax_connections = 10\nmax_connections_per_ip = 11",
                "max_connections_per_ip = 11",
            ),
            (
                "server_names = [\"x\"]\nmax_connection_age = \"0s\"",
                "max_connection_age",
            ),
            (
                "server_names = [\"x\"]\nmax_connection_age = \"2d\"",
                "max_connection_age",
            ),
            (
                "server_names = [\"x\"]\nmax_connection_age = \"soon\"",
                "max_connection_age",
            ),
        ] {
            let err = settings(&format!("{base}{extra}")).check().unwrap_err();
            assert!(err.to_string().contains(want), "{extra}: {err}");
        }
        assert!(toml::from_str::<MeshApiSettings>("lisen = \"x\"").is_err());
    }
}
