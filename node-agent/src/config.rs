//! signet-agent's configuration: TOML file, every setting also a flag, and
//! defaults that work next to a default signet-ca on the same machine.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use signet_identity::{SpiffeIdError, TrustDomain};

use crate::attest::audit::{AuditSettings, MIN_MAX_BYTES};
use crate::attest::k8s::apiserver::ApiSettings;
use crate::attest::k8s::kubelet::KubeletSettings;
use crate::attest::k8s::{K8sSettings, SourceSettings};
use crate::node::addresses::{AddressList, MAX_CONFIGURED};

/// Why a configuration is refused.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read or parsed (unknown keys included), or
    /// `log_format` is neither text nor json.
    #[error(transparent)]
    Settings(#[from] signet_service::SettingsError),
    /// `node_attestation` is neither join_token nor k8s_psat.
    #[error("node_attestation must be join_token or k8s_psat, not {0:?}")]
    NodeAttestation(String),
    /// `ca_address` is not `host:port`.
    #[error("ca_address must be host:port with a port from 1 to 65535, not {0:?}")]
    CaAddress(String),
    /// `ca_address` lists no address, or more than it may.
    #[error("ca_address must list from 1 to {max} addresses, not {count}")]
    CaAddressCount { count: usize, max: usize },
    /// `ca_server_name` is neither a DNS name nor an IP address.
    #[error("ca_server_name must be a DNS name or an IP address, not {0:?}")]
    CaServerName(String),
    /// An invalid trust domain.
    #[error("invalid trust_domain {value:?}: {source}")]
    TrustDomain {
        value: String,
        #[source]
        source: SpiffeIdError,
    },
    /// More than one first-start trust source.
    #[error("give only one of trust_bundle, ca_root_hash and insecure_bootstrap")]
    BootstrapConflict,
    /// `svid_dir` without the ID to write there.
    #[error("svid_dir needs svid_dir_spiffe_id")]
    SvidDirWithoutId,
    /// An invalid `svid_dir_spiffe_id`.
    #[error("invalid svid_dir_spiffe_id {value:?}: {source}")]
    SvidDirId {
        value: String,
        #[source]
        source: SpiffeIdError,
    },
    /// A root hash that is not `sha256:` and 64 hex digits.
    #[error("ca_root_hash {0:?} must be sha256: and 64 hex digits")]
    RootHash(String),
    /// `[k8s_workload]` without a node name, in the file or `NODE_NAME`.
    #[error("[k8s_workload] needs node_name (or the NODE_NAME environment variable)")]
    K8sNodeName,
    /// A `[k8s_workload]` duration that humantime cannot read, or zero.
    #[error("[k8s_workload] {key} = {value:?} is not a duration such as \"500ms\" or \"5s\"")]
    K8sDuration { key: &'static str, value: String },
    /// `[k8s_workload] source` is neither kubelet nor api.
    #[error("[k8s_workload] source must be kubelet or api, not {0:?}")]
    K8sSource(String),
    /// `audit_log_max_bytes` too small for a record.
    #[error("audit_log_max_bytes must be at least {MIN_MAX_BYTES}, not {0}")]
    AuditMaxBytes(u64),
    /// `[k8s_workload] api_max_pods = 0`.
    #[error("[k8s_workload] api_max_pods must be at least 1")]
    K8sMaxPods,
}

/// Settings as they may appear in the file or as flags.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Trust domain [default: signet.local].
    #[arg(long)]
    pub trust_domain: Option<String>,
    /// Address of signet-ca's node API, host:port; several replicas as a
    /// comma-separated list (a TOML array in the file), and a name may
    /// resolve to several [default: 127.0.0.1:8443].
    #[arg(long, env = "SIGNET_CA_ADDRESS")]
    pub ca_address: Option<AddressList>,
    /// DNS name in the CA's server certificate [default: localhost].
    #[arg(long)]
    pub ca_server_name: Option<String>,
    /// Agent state: node SVID, its key, the bundle [default: ./signet-agent-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Join token for the first start (also SIGNET_JOIN_TOKEN).
    #[arg(long, env = "SIGNET_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// How the node attests: join_token (default) or k8s_psat (the pod's projected
    /// service-account token, read from --k8s-psat-token-file).
    #[arg(long)]
    pub node_attestation: Option<String>,
    /// k8s_psat: the projected token file [default: /var/run/secrets/tokens/signet-agent].
    #[arg(long)]
    pub k8s_psat_token_file: Option<PathBuf>,
    /// First-start trust: a PEM bundle file of the CA's roots.
    #[arg(long)]
    pub trust_bundle: Option<PathBuf>,
    /// First-start trust: sha256:<hex> of the CA's root certificate (DER).
    #[arg(long)]
    pub ca_root_hash: Option<String>,
    /// First-start trust: accept whatever CA answers (trust on first use). Unsafe.
    #[arg(long)]
    #[serde(default)]
    pub insecure_bootstrap: bool,
    /// SPIFFE Workload API socket [default: /tmp/signet-agent/public/api.sock].
    #[arg(long)]
    pub workload_api_socket: Option<PathBuf>,
    /// Envoy SDS socket [default: /tmp/signet-agent/public/sds.sock].
    #[arg(long)]
    pub sds_socket: Option<PathBuf>,
    /// Write svid.pem, svid_key.pem, bundle.pem here on every rotation.
    #[arg(long)]
    pub svid_dir: Option<PathBuf>,
    /// The SPIFFE ID whose SVID goes to --svid-dir.
    #[arg(long)]
    pub svid_dir_spiffe_id: Option<String>,
    /// A command run (by /bin/sh -c) after each write to --svid-dir.
    #[arg(long)]
    pub svid_dir_command: Option<String>,
    /// Log format: text or json.
    #[arg(long)]
    pub log_format: Option<String>,
    /// Serve Prometheus metrics on http://ADDR/metrics [default: off].
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Audit log of refused workloads (JSON lines, 0600) [default: DATA_DIR/audit.jsonl].
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// Size at which the audit log is rotated to <audit_log>.1 [default: 16 MiB].
    #[arg(long)]
    pub audit_log_max_bytes: Option<u64>,
    /// The Kubernetes pod attestor (file only: a `[k8s_workload]` table
    /// turns it on).
    #[arg(skip)]
    #[serde(default)]
    pub k8s_workload: Option<K8sWorkloadSettings>,
}

/// `[k8s_workload]`: the pod attestor and how it reaches the kubelet.
/// Every key is optional; the defaults suit a DaemonSet with
/// `hostNetwork`, `hostPID` and `NODE_NAME` from the downward API.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sWorkloadSettings {
    /// Where pod metadata comes from: `kubelet` (its `/pods`) or `api` (a
    /// watch of this node's pods on the API server) [default: kubelet].
    pub source: Option<String>,
    /// `api`: a kubeconfig file [default: the in-cluster service account].
    pub kubeconfig: Option<PathBuf>,
    /// `api`: most pods kept in the index [default: 1024].
    pub api_max_pods: Option<usize>,
    /// `api`: how long known pods are still served while the API server
    /// cannot be reached [default: 60s].
    pub api_max_staleness: Option<String>,
    /// `api`: longest wait between two attempts to list or watch [default: 30s].
    pub api_max_backoff: Option<String>,
    /// The kubelet's pod list [default: https://127.0.0.1:10250/pods].
    pub kubelet_url: Option<String>,
    /// Roots for the kubelet's certificate [default: the service account's
    /// ca.crt].
    pub kubelet_ca_file: Option<PathBuf>,
    /// Bearer token sent to the kubelet, re-read on each request [default
    /// for https: the service account's token].
    pub kubelet_token_file: Option<PathBuf>,
    /// Accept any kubelet certificate (self-signed kubelet certificates).
    #[serde(default)]
    pub kubelet_skip_verify: bool,
    /// Timeout of one `/pods` request [default: 5s].
    pub kubelet_timeout: Option<String>,
    /// Largest `/pods` answer [default: 32 MiB].
    pub kubelet_max_response_bytes: Option<usize>,
    /// This node's name [default: $NODE_NAME].
    pub node_name: Option<String>,
    /// Where processes' cgroup files are read [default: /proc].
    pub proc_root: Option<PathBuf>,
    /// How long a pod list is reused [default: 5s].
    pub cache_ttl: Option<String>,
    /// Lookups of a caller's pod before it is refused [default: 20].
    pub poll_attempts: Option<u32>,
    /// Sleep between two lookups [default: 500ms].
    pub poll_interval: Option<String>,
}

/// Where a pod's service-account credentials are mounted.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl K8sWorkloadSettings {
    /// Fills the defaults; `env_node_name` is `NODE_NAME` from the
    /// environment.
    ///
    /// # Errors
    /// No node name, a bad duration.
    pub fn check(&self, env_node_name: Option<String>) -> Result<K8sSettings, ConfigError> {
        let duration = |key: &'static str, value: &Option<String>, default: Duration| {
            let Some(v) = value else {
                return Ok(default);
            };
            match humantime::parse_duration(v) {
                Ok(d) if !d.is_zero() => Ok(d),
                _ => Err(ConfigError::K8sDuration {
                    key,
                    value: v.clone(),
                }),
            }
        };
        let url = self
            .kubelet_url
            .clone()
            .unwrap_or_else(|| "https://127.0.0.1:10250/pods".into());
        let https = url.starts_with("https://");
        let sa = Path::new(SERVICE_ACCOUNT_DIR);
        let ca_file = self
            .kubelet_ca_file
            .clone()
            .or_else(|| (https && !self.kubelet_skip_verify).then(|| sa.join("ca.crt")));
        let token_file = self
            .kubelet_token_file
            .clone()
            .or_else(|| https.then(|| sa.join("token")));
        let node_name = self
            .node_name
            .clone()
            .or(env_node_name)
            .filter(|n| !n.is_empty())
            .ok_or(ConfigError::K8sNodeName)?;
        let source = match self.source.as_deref() {
            None | Some("kubelet") => SourceSettings::Kubelet(KubeletSettings {
                url,
                ca_file,
                token_file,
                skip_verify: self.kubelet_skip_verify,
                timeout: duration(
                    "kubelet_timeout",
                    &self.kubelet_timeout,
                    Duration::from_secs(5),
                )?,
                max_response_bytes: self.kubelet_max_response_bytes.unwrap_or(32 << 20),
            }),
            Some("api") => SourceSettings::Api(ApiSettings {
                connect: match &self.kubeconfig {
                    Some(path) => signet_k8s::KubeConnect::Kubeconfig(path.clone()),
                    None => signet_k8s::KubeConnect::InCluster,
                },
                max_pods: match self.api_max_pods {
                    Some(0) => return Err(ConfigError::K8sMaxPods),
                    Some(n) => n,
                    None => 1024,
                },
                max_staleness: duration(
                    "api_max_staleness",
                    &self.api_max_staleness,
                    Duration::from_secs(60),
                )?,
                max_backoff: duration(
                    "api_max_backoff",
                    &self.api_max_backoff,
                    Duration::from_secs(30),
                )?,
            }),
            Some(other) => return Err(ConfigError::K8sSource(other.to_owned())),
        };
        Ok(K8sSettings {
            source,
            node_name,
            proc_root: self
                .proc_root
                .clone()
                .unwrap_or_else(|| PathBuf::from("/proc")),
            cache_ttl: duration("cache_ttl", &self.cache_ttl, Duration::from_secs(5))?,
            poll_attempts: self.poll_attempts.unwrap_or(20).max(1),
            poll_interval: duration(
                "poll_interval",
                &self.poll_interval,
                Duration::from_millis(500),
            )?,
        })
    }
}

/// Where the sockets go by default: outside the data directory (0700, so
/// that only the agent reads its keys), in a directory every local user can
/// reach, as SPIRE's `/tmp/spire-agent/public`. The `signet` CLI's default
/// Workload API address points here too.
pub const DEFAULT_PUBLIC_DIR: &str = "/tmp/signet-agent/public";

/// Where the agent's projected service-account token is mounted by default.
pub const DEFAULT_K8S_PSAT_TOKEN_FILE: &str = "/var/run/secrets/tokens/signet-agent";

/// Where first-start trust comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// A PEM file of roots.
    BundleFile(PathBuf),
    /// SHA-256 of a root certificate's DER.
    RootHash([u8; 32]),
    /// Trust on first use (explicitly asked for).
    Insecure,
    /// Nothing given: only possible when the agent already has state.
    None,
}

/// File delivery settings.
#[derive(Debug, Clone)]
pub struct FileDelivery {
    pub dir: PathBuf,
    pub spiffe_id: signet_identity::SpiffeId,
    pub command: Option<String>,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub trust_domain: TrustDomain,
    /// Every replica's `host:port`, checked; the same server name for all.
    pub ca_addresses: Vec<String>,
    pub ca_server_name: String,
    pub data_dir: PathBuf,
    pub join_token: Option<String>,
    /// k8s_psat: the projected token file, read at every attestation (the kubelet
    /// rotates it).
    pub k8s_psat_token_file: Option<PathBuf>,
    pub bootstrap: Bootstrap,
    pub workload_api_socket: PathBuf,
    pub sds_socket: PathBuf,
    pub files: Option<FileDelivery>,
    pub log_json: bool,
    pub max_backoff: Duration,
    /// Where to serve Prometheus metrics; `None`: not served.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The pod attestor, when `[k8s_workload]` is present.
    pub k8s_workload: Option<K8sSettings>,
    /// The audit log of refused workloads.
    pub audit: AuditSettings,
}

impl Config {
    /// Layers flags over the file over the defaults and checks the result.
    ///
    /// # Errors
    /// Unreadable file, unknown keys, invalid values.
    pub fn load(file: Option<&Path>, flags: Settings) -> Result<Self, ConfigError> {
        let f = signet_service::read_settings::<Settings>(file)?;
        macro_rules! pick {
            ($field:ident) => {
                flags.$field.clone().or(f.$field.clone())
            };
        }
        let td = pick!(trust_domain).unwrap_or_else(|| signet_service::DEFAULT_TRUST_DOMAIN.into());
        let trust_domain = TrustDomain::new(&td).map_err(|source| ConfigError::TrustDomain {
            value: td.clone(),
            source,
        })?;
        let data_dir = pick!(data_dir).unwrap_or_else(|| PathBuf::from("signet-agent-data"));
        let bootstrap = match (
            pick!(trust_bundle),
            pick!(ca_root_hash),
            flags.insecure_bootstrap || f.insecure_bootstrap,
        ) {
            (Some(p), None, false) => Bootstrap::BundleFile(p),
            (None, Some(h), false) => Bootstrap::RootHash(parse_hash(&h)?),
            (None, None, true) => Bootstrap::Insecure,
            (None, None, false) => Bootstrap::None,
            _ => return Err(ConfigError::BootstrapConflict),
        };
        let log_json = signet_service::LogFormat::parse(pick!(log_format).as_deref())?
            == signet_service::LogFormat::Json;
        let ca_addresses = pick!(ca_address)
            .map_or_else(|| vec![signet_service::DEFAULT_CA_ADDRESS.into()], |l| l.0);
        if ca_addresses.is_empty() || ca_addresses.len() > MAX_CONFIGURED {
            return Err(ConfigError::CaAddressCount {
                count: ca_addresses.len(),
                max: MAX_CONFIGURED,
            });
        }
        for a in &ca_addresses {
            check_ca_address(a)?;
        }
        let ca_server_name =
            pick!(ca_server_name).unwrap_or_else(|| signet_service::DEFAULT_CA_SERVER_NAME.into());
        if rustls_pki_types::ServerName::try_from(ca_server_name.as_str()).is_err() {
            return Err(ConfigError::CaServerName(ca_server_name));
        }
        let files = match pick!(svid_dir) {
            None => None,
            Some(dir) => {
                let id = pick!(svid_dir_spiffe_id).ok_or(ConfigError::SvidDirWithoutId)?;
                Some(FileDelivery {
                    dir,
                    spiffe_id: signet_identity::SpiffeId::parse(&id).map_err(|source| {
                        ConfigError::SvidDirId {
                            value: id.clone(),
                            source,
                        }
                    })?,
                    command: pick!(svid_dir_command),
                })
            }
        };
        let k8s_workload = match flags.k8s_workload.as_ref().or(f.k8s_workload.as_ref()) {
            Some(k) => Some(k.check(std::env::var("NODE_NAME").ok())?),
            None => None,
        };
        let k8s_psat_token_file = match pick!(node_attestation).as_deref() {
            None | Some("join_token") => None,
            Some("k8s_psat") => Some(
                pick!(k8s_psat_token_file)
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_K8S_PSAT_TOKEN_FILE)),
            ),
            Some(other) => return Err(ConfigError::NodeAttestation(other.to_owned())),
        };
        let audit = AuditSettings {
            path: pick!(audit_log).unwrap_or_else(|| data_dir.join("audit.jsonl")),
            max_bytes: match pick!(audit_log_max_bytes) {
                Some(n) if n < MIN_MAX_BYTES => return Err(ConfigError::AuditMaxBytes(n)),
                Some(n) => n,
                None => 16 << 20,
            },
        };
        Ok(Self {
            k8s_workload,
            audit,
            trust_domain,
            ca_addresses,
            k8s_psat_token_file,
            ca_server_name,
            workload_api_socket: pick!(workload_api_socket)
                .unwrap_or_else(|| Path::new(DEFAULT_PUBLIC_DIR).join("api.sock")),
            sds_socket: pick!(sds_socket)
                .unwrap_or_else(|| Path::new(DEFAULT_PUBLIC_DIR).join("sds.sock")),
            join_token: pick!(join_token).filter(|t| !t.is_empty()),
            data_dir,
            bootstrap,
            files,
            log_json,
            max_backoff: Duration::from_secs(30),
            metrics_listen: pick!(metrics_listen),
        })
    }
}

/// Checks that `address` is `host:port` (a name, an IPv4 address, or an
/// IPv6 address in brackets) before anything tries to connect to it, so
/// that a typo is reported at start-up instead of as endless retries.
///
/// # Errors
/// [`ConfigError::CaAddress`] otherwise.
pub fn check_ca_address(address: &str) -> Result<(), ConfigError> {
    let bad = || ConfigError::CaAddress(address.to_owned());
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    match port.parse::<u16>() {
        Ok(p) if p != 0 => {}
        _ => return Err(bad()),
    }
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && !host.contains(['[', ']', ':', '/', ' '])
            && rustls_pki_types::ServerName::try_from(host).is_ok()
    };
    if host_ok { Ok(()) } else { Err(bad()) }
}

/// Parses `sha256:<64 hex>` (the prefix is optional).
///
/// # Errors
/// Anything else.
pub fn parse_hash(s: &str) -> Result<[u8; 32], ConfigError> {
    let hex_part = s.strip_prefix("sha256:").unwrap_or(s);
    hex::decode(hex_part)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ConfigError::RootHash(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_sit_next_to_a_default_ca() {
        let c = Config::load(None, Settings::default()).unwrap();
        assert_eq!(c.ca_addresses, ["127.0.0.1:8443"]);
        assert_eq!(c.trust_domain.as_str(), "signet.local");
        assert_eq!(c.bootstrap, Bootstrap::None);
        assert_eq!(c.metrics_listen, None, "metrics are off by default");
        assert_eq!(
            c.workload_api_socket,
            PathBuf::from("/tmp/signet-agent/public/api.sock")
        );
        assert_eq!(
            c.sds_socket,
            PathBuf::from("/tmp/signet-agent/public/sds.sock")
        );
        assert_eq!(c.data_dir, PathBuf::from("signet-agent-data"));
    }

    #[test]
    fn one_bootstrap_source_only() {
        let both = Settings {
            trust_bundle: Some("b.pem".into()),
            insecure_bootstrap: true,
            ..Settings::default()
        };
        assert!(Config::load(None, both).is_err());
        let hash = Settings {
            ca_root_hash: Some(format!("sha256:{}", "ab".repeat(32))),
            ..Settings::default()
        };
        assert_eq!(
            Config::load(None, hash).unwrap().bootstrap,
            Bootstrap::RootHash([0xab; 32])
        );
        assert!(parse_hash("sha256:abcd").is_err());
    }

    #[test]
    fn metrics_listen_comes_from_the_file_or_the_flag() {
        let s: Settings = toml::from_str("metrics_listen = \"127.0.0.1:9091\"").unwrap();
        assert_eq!(s.metrics_listen, Some("127.0.0.1:9091".parse().unwrap()));
        assert!(toml::from_str::<Settings>("metrics_listen = \"nowhere\"").is_err());
    }

    #[test]
    fn the_audit_log_defaults_to_the_data_directory() {
        let flags = Settings {
            data_dir: Some("/var/lib/agent".into()),
            ..Settings::default()
        };
        let c = Config::load(None, flags).unwrap();
        assert_eq!(c.audit.path, PathBuf::from("/var/lib/agent/audit.jsonl"));
        assert_eq!(c.audit.max_bytes, 16 << 20);
        let s: Settings =
            toml::from_str("audit_log = \"/var/log/a.jsonl\"\naudit_log_max_bytes = 65536")
                .unwrap();
        let c = Config::load(None, s).unwrap();
        assert_eq!(c.audit.path, PathBuf::from("/var/log/a.jsonl"));
        assert_eq!(c.audit.max_bytes, 65536);
        let tiny = Settings {
            audit_log_max_bytes: Some(10),
            ..Settings::default()
        };
        assert!(matches!(
            Config::load(None, tiny),
            Err(ConfigError::AuditMaxBytes(10))
        ));
    }

    #[test]
    fn k8s_workload_defaults_and_errors() {
        let s: Settings = toml::from_str("[k8s_workload]\nproc_root = \"/host/proc\"\n").unwrap();
        let k = s.k8s_workload.unwrap();
        assert!(matches!(k.check(None), Err(ConfigError::K8sNodeName)));
        let c = k.check(Some("node-a".into())).unwrap();
        assert_eq!(c.node_name, "node-a");
        assert_eq!(c.proc_root, PathBuf::from("/host/proc"));
        let SourceSettings::Kubelet(kubelet) = &c.source else {
            panic!("the kubelet is the default source: {:?}", c.source)
        };
        assert_eq!(kubelet.url, "https://127.0.0.1:10250/pods");
        assert!(
            !kubelet.skip_verify,
            "kubelet certificates are verified by default"
        );
        assert_eq!(
            kubelet.ca_file,
            Some(PathBuf::from(
                "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
            ))
        );
        assert_eq!(c.poll_attempts, 20);

        let s: Settings = toml::from_str(
            "[k8s_workload]\nnode_name = \"n1\"\nkubelet_url = \"http://127.0.0.1:10255/pods\"\npoll_interval = \"50ms\"\n",
        )
        .unwrap();
        let c = s
            .k8s_workload
            .unwrap()
            .check(Some("ignored".into()))
            .unwrap();
        assert_eq!(c.node_name, "n1", "the file wins over NODE_NAME");
        let SourceSettings::Kubelet(kubelet) = &c.source else {
            panic!("{:?}", c.source)
        };
        assert_eq!(kubelet.token_file, None, "no token to the read-only port");
        assert_eq!(kubelet.ca_file, None);
        assert_eq!(c.poll_interval, Duration::from_millis(50));

        let s: Settings = toml::from_str("[k8s_workload]\ncache_ttl = \"soon\"\n").unwrap();
        assert!(matches!(
            s.k8s_workload.unwrap().check(Some("n".into())),
            Err(ConfigError::K8sDuration {
                key: "cache_ttl",
                ..
            })
        ));
        assert!(toml::from_str::<Settings>("[k8s_workload]\nkubelet = 1\n").is_err());

        // The API source: in-cluster by default, or a kubeconfig.
        let s: Settings = toml::from_str("[k8s_workload]\nsource = \"api\"\n").unwrap();
        let c = s.k8s_workload.unwrap().check(Some("n".into())).unwrap();
        assert_eq!(c.source.clone().name(), "api", "{:?}", c.source);
        let SourceSettings::Api(api) = c.source else {
            unreachable!()
        };
        assert_eq!(api.connect, signet_k8s::KubeConnect::InCluster);
        assert_eq!(api.max_pods, 1024);
        assert_eq!(api.max_staleness, Duration::from_secs(60));
        let s: Settings = toml::from_str(
            "[k8s_workload]\nsource = \"api\"\nkubeconfig = \"/etc/kc\"\napi_max_pods = 7\napi_max_staleness = \"5s\"\n",
        )
        .unwrap();
        let c = s.k8s_workload.unwrap().check(Some("n".into())).unwrap();
        let SourceSettings::Api(api) = c.source else {
            panic!("{:?}", c.source)
        };
        assert_eq!(
            api.connect,
            signet_k8s::KubeConnect::Kubeconfig("/etc/kc".into())
        );
        assert_eq!(
            (api.max_pods, api.max_staleness),
            (7, Duration::from_secs(5))
        );
        for (text, want) in [
            ("source = \"etcd\"", "source"),
            ("source = \"api\"\napi_max_pods = 0", "api_max_pods"),
            (
                "source = \"api\"\napi_max_backoff = \"0s\"",
                "api_max_backoff",
            ),
        ] {
            let s: Settings = toml::from_str(&format!("[k8s_workload]\n{text}\n")).unwrap();
            let e = s.k8s_workload.unwrap().check(Some("n".into())).unwrap_err();
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
        assert!(
            Config::load(None, Settings::default())
                .unwrap()
                .k8s_workload
                .is_none()
        );
    }

    #[test]
    fn ca_addresses_are_checked_before_use() {
        for (address, ok) in [
            ("127.0.0.1:8443", true),
            ("signet-ca.signet.svc:8443", true),
            ("[::1]:8443", true),
            ("localhost", false),
            ("localhost:0", false),
            ("localhost:99999", false),
            (":8443", false),
            ("::1:8443", false),
            ("https://ca:8443", false),
            ("ca host:8443", false),
        ] {
            assert_eq!(check_ca_address(address).is_ok(), ok, "{address}");
        }
        let flags = Settings {
            ca_address: Some("nowhere".parse().unwrap()),
            ..Settings::default()
        };
        assert!(matches!(
            Config::load(None, flags),
            Err(ConfigError::CaAddress(_))
        ));
        // Several replicas: each one checked, the count bounded.
        let list = |text: &str| {
            Config::load(
                None,
                Settings {
                    ca_address: Some(text.parse().unwrap()),
                    ..Settings::default()
                },
            )
        };
        assert_eq!(
            list("ca-0:8443, ca-1:8443").unwrap().ca_addresses,
            ["ca-0:8443", "ca-1:8443"]
        );
        assert!(
            matches!(list("ca-0:8443,nowhere"), Err(ConfigError::CaAddress(a)) if a == "nowhere")
        );
        assert!(matches!(
            list(" , "),
            Err(ConfigError::CaAddressCount { count: 0, .. })
        ));
        let many: Vec<String> = (1..=17).map(|i| format!("ca-{i}:8443")).collect();
        assert!(matches!(
            list(&many.join(",")),
            Err(ConfigError::CaAddressCount { count: 17, .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "ca_address = [\"ca-0:8443\", \"[::1]:8443\"]\n").unwrap();
        let c = Config::load(Some(&file), Settings::default()).unwrap();
        assert_eq!(c.ca_addresses, ["ca-0:8443", "[::1]:8443"]);
        let flags = Settings {
            log_format: Some("xml".into()),
            ..Settings::default()
        };
        assert!(matches!(
            Config::load(None, flags),
            Err(ConfigError::Settings(_))
        ));
    }
}
