//! signet-ca's configuration: a TOML file, every setting also a flag, and an
//! embedded default so that `signet-ca run` with nothing else works. The
//! whole configuration is read and checked before any port is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use signet_identity::TrustDomain;

/// Why a configuration cannot be used; reported before anything starts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `store` is not a store location.
    #[error(transparent)]
    Store(#[from] crate::store::LocationError),
    /// The settings file cannot be read or parsed, or `log_format` is
    /// neither text nor json.
    #[error(transparent)]
    Settings(#[from] signet_service::SettingsError),
    /// `trust_domain` is not a valid trust domain name.
    #[error("invalid trust_domain {value:?}: {source}")]
    TrustDomain {
        value: String,
        #[source]
        source: signet_identity::SpiffeIdError,
    },
    /// One of `server_names` is not a DNS name the certificate can carry.
    #[error("invalid server_names: {0}")]
    ServerName(#[source] signet_identity::x509::IssueError),
    /// `upstream_ca` is not `CERT,KEY`.
    #[error("upstream_ca must be CERT,KEY, not {0:?}")]
    UpstreamCa(String),
    /// A duration outside its allowed range.
    #[error("{name} must be between {min} and {max}")]
    DurationRange {
        name: &'static str,
        min: &'static str,
        max: &'static str,
    },
    /// A count outside its allowed range.
    #[error("{name} must be between {min} and {max}")]
    CountRange {
        name: &'static str,
        min: usize,
        max: usize,
    },
    /// An address that does not parse.
    #[error("invalid address: {0}")]
    Address(#[from] std::net::AddrParseError),
    /// Two settings that contradict each other.
    #[error("{0}")]
    Conflict(String),
    /// `[mesh_api]` is not usable.
    #[error(transparent)]
    Mesh(#[from] crate::mesh::config::MeshConfigError),
    /// `[bundle_endpoint]` or a `[[federation]]` table is not usable.
    #[error(transparent)]
    Federation(crate::federation::FederationError),
}

/// Trust domain used when none is configured (the agent's default too).
pub use signet_service::DEFAULT_TRUST_DOMAIN;
/// Listen address used when none is configured: where agents look by default.
pub const DEFAULT_LISTEN: &str = signet_service::DEFAULT_CA_ADDRESS;
/// Data directory used when none is configured (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "signet-data";

/// Settings as they may appear in the file or on the command line; every
/// field is optional so that the two can be layered.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Trust domain, e.g. example.org.
    #[arg(long)]
    pub trust_domain: Option<String>,
    /// Address of the node API (TLS).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Directory for the keys, certificates and the database.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The store: postgres://… (or postgresql://…) for PostgreSQL, or
    /// sqlite:PATH [default: sqlite:DATA_DIR/signet.db].
    #[arg(long, env = "SIGNET_CA_STORE", hide_env_values = true)]
    pub store: Option<crate::store::StoreSetting>,
    /// Unix socket of the admin API [default: DATA_DIR/admin.sock].
    #[arg(long)]
    pub admin_socket: Option<PathBuf>,
    /// DNS names in the server certificate (repeat the flag for several) [default: localhost].
    #[arg(long = "server-name")]
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Log format: text or json.
    #[arg(long)]
    pub log_format: Option<String>,
    /// Lifetime of a generated root [default: 365d].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub root_ttl: Option<Duration>,
    /// Lifetime of the intermediate signing CA [default: 7d].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub intermediate_ttl: Option<Duration>,
    /// X.509-SVID lifetime when an entry sets none [default: 1h].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub default_x509_svid_ttl: Option<Duration>,
    /// Longest X.509-SVID lifetime any entry may have [default: 24h].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub max_x509_svid_ttl: Option<Duration>,
    /// How far notBefore is backdated for clock skew [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub backdate: Option<Duration>,
    /// Join token lifetime when the admin sets none [default: 1h].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub join_token_ttl: Option<Duration>,
    /// Lifetime of node SVIDs [default: 1h].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub node_svid_ttl: Option<Duration>,
    /// Use an existing CA as the parent: CERT,KEY (PEM files; CERT may hold the
    /// CA's chain up to its root).
    #[arg(long, value_name = "CERT,KEY")]
    pub upstream_ca: Option<String>,
    /// Most CSRs in one batch request [default: 500].
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// How long SIGTERM waits for in-flight requests [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub shutdown_grace: Option<Duration>,
    /// How long audit records are kept; older ones are deleted [default: 90d].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub audit_retention: Option<Duration>,
    /// Serve Prometheus metrics on http://ADDR/metrics [default: off].
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Longest TLS handshake on the node API [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub tls_handshake_timeout: Option<Duration>,
    /// Most open node-API connections, all callers together [default: 4096].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Most connections from one source IP that are not (yet) authenticated
    /// by a node SVID: handshakes in flight and connections without a node
    /// SVID (attestation) [default: 32].
    #[arg(long)]
    pub max_connections_per_ip: Option<usize>,
    /// Most open connections per node SVID identity [default: 8].
    #[arg(long)]
    pub max_connections_per_node: Option<usize>,
    /// Most connections that finished TLS without a node SVID, all callers
    /// together [default: 256].
    #[arg(long)]
    pub max_unauthenticated_connections: Option<usize>,
    /// Lifetime of a connection without a node SVID (enough for one
    /// attestation) [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub unauthenticated_timeout: Option<Duration>,
    /// HTTP/2 keepalive PING interval on the node API [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub http2_keepalive_interval: Option<Duration>,
    /// How long a keepalive PING may stay unanswered before the connection is
    /// closed [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub http2_keepalive_timeout: Option<Duration>,
    /// Most concurrent gRPC calls (HTTP/2 streams) per connection [default: 64].
    #[arg(long)]
    pub max_concurrent_streams: Option<u32>,
    /// Lifetime of a JWT-SVID signing key [default: intermediate_ttl].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub jwt_key_ttl: Option<Duration>,
    /// Fraction of an authority's life after which its successor is
    /// prepared and published [default: 0.5].
    #[arg(long)]
    pub rotation_prepare_at: Option<f64>,
    /// Fraction of an authority's life left when its successor is activated
    /// [default: 0.1667, i.e. 1/6].
    #[arg(long)]
    pub rotation_activate_before: Option<f64>,
    /// How long activation waits for every connected agent to acknowledge
    /// the bundle carrying the new authority before the time rule applies
    /// [default: 10m].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub activation_ack_timeout: Option<Duration>,
    /// The agents' status heartbeat; after the ack timeout, activation waits
    /// at least 3 x this since publication [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub agent_sync_interval: Option<Duration>,
    /// Window over which agents spread the re-issue of SVIDs under a tainted
    /// authority [default: 5m].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub taint_reissue_window: Option<Duration>,
    /// Extra time a retired authority stays published after the last thing
    /// it signed can have expired (never past its notAfter) [default: 1h].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub prune_grace: Option<Duration>,
    /// How often the rotation schedule is checked [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub rotation_tick: Option<Duration>,
    /// Several replicas: a replica silent (no heartbeat) for this long is
    /// taken for gone, and its signing authorities are retired (they stay
    /// in the bundle until what they signed has expired) [default: 1h].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub replica_expiry: Option<Duration>,
    /// Upstream-CA mode: a PEM file of roots that forms the bundle's root
    /// set, re-read when it changes [default: the top of upstream_ca's chain].
    #[arg(long)]
    pub upstream_bundle: Option<PathBuf>,
    /// Shortest interval between two fetches of a federated bundle, whatever
    /// the remote's refresh hint says; also the first retry delay after a
    /// failed fetch [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub federation_min_refresh: Option<Duration>,
    /// Serve this trust domain's bundle to federated trust domains
    /// (`[bundle_endpoint]` table; file only).
    #[arg(skip)]
    #[serde(default)]
    pub bundle_endpoint: Option<crate::federation::config::BundleEndpointSettings>,
    /// Federation relationships (`[[federation]]` tables; file only).
    #[arg(skip)]
    #[serde(default)]
    pub federation: Vec<crate::federation::config::FederationSettings>,
    /// Kubernetes: k8s_psat node attestation (`[k8s]` table; file only).
    #[arg(skip)]
    #[serde(default)]
    pub k8s: Option<crate::k8s::K8sSettings>,
    /// The Istio and Linkerd CA APIs (`[mesh_api]` table; file only).
    #[arg(skip)]
    #[serde(default)]
    pub mesh_api: Option<crate::mesh::config::MeshApiSettings>,
}

/// When authorities rotate.
#[derive(Debug, Clone, PartialEq)]
pub struct RotationSettings {
    pub jwt_key_ttl: Duration,
    pub prepare_at: f64,
    pub activate_before: f64,
    pub activation_ack_timeout: Duration,
    pub agent_sync_interval: Duration,
    pub taint_reissue_window: Duration,
    pub prune_grace: Duration,
    pub tick: Duration,
    pub replica_expiry: Duration,
}

/// Limits of the node API's listener: what one caller, and all callers
/// together, may hold open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub tls_handshake_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_connections_per_node: usize,
    pub max_unauthenticated_connections: usize,
    pub unauthenticated_timeout: Duration,
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    pub max_concurrent_streams: u32,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub trust_domain: TrustDomain,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Where the store is (the password of a URL never prints).
    pub store: crate::store::StoreLocation,
    pub admin_socket: PathBuf,
    pub server_names: Vec<String>,
    pub log_json: bool,
    pub root_ttl: Duration,
    pub intermediate_ttl: Duration,
    pub default_x509_svid_ttl: Duration,
    pub max_x509_svid_ttl: Duration,
    pub backdate: Duration,
    pub join_token_ttl: Duration,
    pub node_svid_ttl: Duration,
    pub upstream_ca: Option<(PathBuf, PathBuf)>,
    pub max_batch: usize,
    pub shutdown_grace: Duration,
    pub audit_retention: Duration,
    /// Where to serve Prometheus metrics; `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
    pub limits: ConnectionLimits,
    pub rotation: RotationSettings,
    pub upstream_bundle: Option<PathBuf>,
    /// The bundle endpoint, when one is served.
    pub bundle_endpoint: Option<crate::federation::config::BundleEndpoint>,
    /// Federation relationships from the configuration file.
    pub federations: Vec<crate::federation::Relationship>,
    /// See [`Settings::federation_min_refresh`].
    pub federation_min_refresh: Duration,
    /// Kubernetes settings, when `[k8s]` is configured.
    pub k8s: Option<crate::k8s::K8sConfig>,
    /// The mesh CA APIs, when served.
    pub mesh_api: Option<crate::mesh::config::MeshConfig>,
    /// Which settings came from the embedded default, for the start-up log.
    pub defaulted: Vec<&'static str>,
}

impl Config {
    /// Layers `flags` over the file (if any) over the embedded defaults, and
    /// checks the result.
    ///
    /// # Errors
    /// Unreadable file, unknown keys, invalid values.
    pub fn load(file: Option<&Path>, flags: Settings) -> Result<Self, ConfigError> {
        let from_file = signet_service::read_settings::<Settings>(file)?;
        Self::resolve(from_file, flags)
    }

    fn resolve(file: Settings, flags: Settings) -> Result<Self, ConfigError> {
        let mut defaulted = Vec::new();
        macro_rules! pick {
            ($field:ident, $default:expr) => {
                match flags.$field.clone().or(file.$field.clone()) {
                    Some(v) => v,
                    None => {
                        defaulted.push(stringify!($field));
                        $default
                    }
                }
            };
        }
        let td = pick!(trust_domain, DEFAULT_TRUST_DOMAIN.to_owned());
        let trust_domain = TrustDomain::new(&td).map_err(|source| ConfigError::TrustDomain {
            value: td.clone(),
            source,
        })?;
        let listen = pick!(listen, DEFAULT_LISTEN.parse()?);
        let data_dir = pick!(data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        let admin_socket = pick!(admin_socket, data_dir.join("admin.sock"));
        let store = match flags.store.as_ref().or(file.store.as_ref()) {
            Some(s) => s.parse()?,
            None => crate::store::StoreLocation::Sqlite(data_dir.join("signet.db")),
        };
        let server_names = if !flags.server_names.is_empty() {
            flags.server_names.clone()
        } else if !file.server_names.is_empty() {
            file.server_names.clone()
        } else {
            defaulted.push("server_names");
            vec![signet_service::DEFAULT_CA_SERVER_NAME.to_owned()]
        };
        for name in &server_names {
            signet_identity::x509::issue::validate_dns_name(name)
                .map_err(ConfigError::ServerName)?;
        }
        let log_format = pick!(log_format, "text".to_owned());
        let log_json =
            signet_service::LogFormat::parse(Some(&log_format))? == signet_service::LogFormat::Json;
        let root_ttl = pick!(root_ttl, Duration::from_secs(365 * 24 * 3600));
        let intermediate_ttl = pick!(intermediate_ttl, Duration::from_secs(7 * 24 * 3600));
        let default_x509_svid_ttl = pick!(default_x509_svid_ttl, Duration::from_secs(3600));
        let max_x509_svid_ttl = pick!(max_x509_svid_ttl, Duration::from_secs(24 * 3600));
        let backdate = pick!(backdate, Duration::from_secs(30));
        let join_token_ttl = pick!(join_token_ttl, Duration::from_secs(3600));
        let node_svid_ttl = pick!(node_svid_ttl, Duration::from_secs(3600));
        let max_batch = pick!(max_batch, 500);
        let shutdown_grace = pick!(shutdown_grace, Duration::from_secs(10));
        let audit_retention = pick!(audit_retention, Duration::from_secs(90 * 24 * 3600));
        let limits = ConnectionLimits {
            tls_handshake_timeout: pick!(tls_handshake_timeout, Duration::from_secs(10)),
            max_connections: pick!(max_connections, 4096),
            max_connections_per_ip: pick!(max_connections_per_ip, 32),
            max_connections_per_node: pick!(max_connections_per_node, 8),
            max_unauthenticated_connections: pick!(max_unauthenticated_connections, 256),
            unauthenticated_timeout: pick!(unauthenticated_timeout, Duration::from_secs(30)),
            http2_keepalive_interval: pick!(http2_keepalive_interval, Duration::from_secs(30)),
            http2_keepalive_timeout: pick!(http2_keepalive_timeout, Duration::from_secs(10)),
            max_concurrent_streams: pick!(max_concurrent_streams, 64),
        };
        check_limits(&limits)?;
        let upstream_ca = match flags.upstream_ca.clone().or(file.upstream_ca.clone()) {
            None => None,
            Some(spec) => {
                let (cert, key) = spec
                    .split_once(',')
                    .ok_or_else(|| ConfigError::UpstreamCa(spec.clone()))?;
                Some((PathBuf::from(cert.trim()), PathBuf::from(key.trim())))
            }
        };
        for (name, ttl) in [
            ("root_ttl", root_ttl),
            ("intermediate_ttl", intermediate_ttl),
            ("default_x509_svid_ttl", default_x509_svid_ttl),
            ("max_x509_svid_ttl", max_x509_svid_ttl),
            ("join_token_ttl", join_token_ttl),
            ("node_svid_ttl", node_svid_ttl),
        ] {
            if ttl < Duration::from_secs(1) {
                return Err(ConfigError::DurationRange {
                    name,
                    min: "1s",
                    max: "any",
                });
            }
        }
        if default_x509_svid_ttl > max_x509_svid_ttl {
            return Err(ConfigError::Conflict(format!(
                "default_x509_svid_ttl ({}) exceeds max_x509_svid_ttl ({})",
                humantime::format_duration(default_x509_svid_ttl),
                humantime::format_duration(max_x509_svid_ttl)
            )));
        }
        if intermediate_ttl > root_ttl {
            return Err(ConfigError::Conflict(
                "intermediate_ttl must not exceed root_ttl".into(),
            ));
        }
        let rotation = RotationSettings {
            jwt_key_ttl: pick!(jwt_key_ttl, intermediate_ttl),
            prepare_at: pick!(rotation_prepare_at, 0.5),
            activate_before: pick!(rotation_activate_before, 1.0 / 6.0),
            activation_ack_timeout: pick!(activation_ack_timeout, Duration::from_secs(600)),
            agent_sync_interval: pick!(agent_sync_interval, Duration::from_secs(30)),
            taint_reissue_window: pick!(taint_reissue_window, Duration::from_secs(300)),
            prune_grace: pick!(prune_grace, Duration::from_secs(3600)),
            tick: pick!(rotation_tick, Duration::from_secs(10)),
            replica_expiry: pick!(replica_expiry, Duration::from_secs(3600)),
        };
        check_rotation(
            &rotation,
            root_ttl,
            intermediate_ttl,
            max_x509_svid_ttl.max(node_svid_ttl),
            upstream_ca.is_some(),
        )?;
        let upstream_bundle = flags
            .upstream_bundle
            .clone()
            .or(file.upstream_bundle.clone());
        if upstream_bundle.is_some() && upstream_ca.is_none() {
            return Err(ConfigError::Conflict(
                "upstream_bundle needs upstream_ca".into(),
            ));
        }
        if audit_retention < Duration::from_secs(3600) {
            return Err(ConfigError::DurationRange {
                name: "audit_retention",
                min: "1h",
                max: "any",
            });
        }
        if max_batch == 0 || max_batch > 10_000 {
            return Err(ConfigError::CountRange {
                name: "max_batch",
                min: 1,
                max: 10_000,
            });
        }
        let federation_min_refresh = pick!(federation_min_refresh, Duration::from_secs(30));
        if federation_min_refresh < Duration::from_millis(100)
            || federation_min_refresh > Duration::from_secs(3600)
        {
            return Err(ConfigError::DurationRange {
                name: "federation_min_refresh",
                min: "100ms",
                max: "1h",
            });
        }
        let bundle_endpoint = match flags
            .bundle_endpoint
            .as_ref()
            .or(file.bundle_endpoint.as_ref())
        {
            Some(b) => Some(b.check().map_err(ConfigError::Federation)?),
            None => None,
        };
        let federation_settings = if flags.federation.is_empty() {
            &file.federation
        } else {
            &flags.federation
        };
        let federations =
            crate::federation::config::relationships(federation_settings, &trust_domain)
                .map_err(ConfigError::Federation)?;
        let k8s = match flags.k8s.as_ref().or(file.k8s.as_ref()) {
            Some(k) => Some(k.check().map_err(ConfigError::Conflict)?),
            None => None,
        };
        let mesh_api = match flags.mesh_api.as_ref().or(file.mesh_api.as_ref()) {
            Some(m) => m.check()?,
            None => None,
        };
        Ok(Self {
            trust_domain,
            listen,
            data_dir,
            store,
            admin_socket,
            server_names,
            log_json,
            root_ttl,
            intermediate_ttl,
            default_x509_svid_ttl,
            max_x509_svid_ttl,
            backdate,
            join_token_ttl,
            node_svid_ttl,
            upstream_ca,
            max_batch,
            shutdown_grace,
            audit_retention,
            metrics_listen: flags.metrics_listen.or(file.metrics_listen),
            limits,
            rotation,
            upstream_bundle,
            bundle_endpoint,
            federations,
            federation_min_refresh,
            k8s,
            mesh_api,
            defaulted,
        })
    }
}

/// Refuses settings under which rotation cannot work: everything an
/// authority signs must have expired-or-been-replaced by the time it would
/// have to be retired, i.e. fit in the part of its life left at activation
/// of its successor.
fn check_rotation(
    r: &RotationSettings,
    root_ttl: Duration,
    intermediate_ttl: Duration,
    longest_x509_svid: Duration,
    upstream: bool,
) -> Result<(), ConfigError> {
    let fraction_ok = |f: f64| f.is_finite() && f > 0.0 && f < 1.0;
    if !fraction_ok(r.prepare_at) || !fraction_ok(r.activate_before) {
        return Err(ConfigError::Conflict(
            "rotation_prepare_at and rotation_activate_before must be fractions between 0 and 1"
                .into(),
        ));
    }
    if r.prepare_at + r.activate_before >= 1.0 {
        return Err(ConfigError::Conflict(format!(
            "rotation_prepare_at ({}) + rotation_activate_before ({}) must be below 1, so that a successor is published before it is activated; set rotation_prepare_at below {:.4}",
            r.prepare_at,
            r.activate_before,
            1.0 - r.activate_before
        )));
    }
    const S: fn(u64) -> Duration = Duration::from_secs;
    for (name, d, (min, min_s), (max, max_s)) in [
        (
            "activation_ack_timeout",
            r.activation_ack_timeout,
            (S(1), "1s"),
            (S(7 * 86_400), "7d"),
        ),
        (
            "agent_sync_interval",
            r.agent_sync_interval,
            (S(1), "1s"),
            (S(3600), "1h"),
        ),
        (
            "taint_reissue_window",
            r.taint_reissue_window,
            (S(0), "0s"),
            (S(86_400), "1d"),
        ),
        (
            "prune_grace",
            r.prune_grace,
            (S(0), "0s"),
            (S(30 * 86_400), "30d"),
        ),
        ("rotation_tick", r.tick, (S(1), "1s"), (S(3600), "1h")),
        // Several heartbeats (5 s) must be missed before a replica is gone.
        (
            "replica_expiry",
            r.replica_expiry,
            (S(30), "30s"),
            (S(30 * 86_400), "30d"),
        ),
    ] {
        if d < min || d > max {
            return Err(ConfigError::DurationRange {
                name,
                min: min_s,
                max: max_s,
            });
        }
    }
    if intermediate_ttl < Duration::from_secs(60) {
        return Err(ConfigError::DurationRange {
            name: "intermediate_ttl",
            min: "1m",
            max: "root_ttl",
        });
    }
    if r.jwt_key_ttl < Duration::from_secs(60) {
        return Err(ConfigError::DurationRange {
            name: "jwt_key_ttl",
            min: "1m",
            max: "any",
        });
    }
    let window = |life: Duration| life.mul_f64(r.activate_before);
    // The least lifetime that works, rounded up to a whole unit that reads
    // well in a configuration file.
    let needs = |longest: Duration| {
        let secs = (longest.as_secs_f64() / r.activate_before - 1e-6).ceil() as u64;
        match secs {
            s if s >= 86_400 => format!("{}d", s.div_ceil(86_400)),
            s if s >= 3600 => format!("{}h", s.div_ceil(3600)),
            s if s >= 60 => format!("{}m", s.div_ceil(60)),
            s => format!("{s}s"),
        }
    };
    if longest_x509_svid > window(intermediate_ttl) {
        return Err(ConfigError::Conflict(format!(
            "rotation is impossible: the longest X.509-SVID (max_x509_svid_ttl / node_svid_ttl, {}) exceeds intermediate_ttl x rotation_activate_before ({}); set intermediate_ttl to at least {} or lower max_x509_svid_ttl / node_svid_ttl",
            humantime::format_duration(longest_x509_svid),
            humantime::format_duration(window(intermediate_ttl)),
            needs(longest_x509_svid)
        )));
    }
    let jwt_max = crate::ca::MAX_JWT_TTL;
    if jwt_max > window(r.jwt_key_ttl) {
        return Err(ConfigError::Conflict(format!(
            "rotation is impossible: the longest JWT-SVID ({}) exceeds jwt_key_ttl x rotation_activate_before ({}); set jwt_key_ttl to at least {}",
            humantime::format_duration(jwt_max),
            humantime::format_duration(window(r.jwt_key_ttl)),
            needs(jwt_max)
        )));
    }
    if !upstream && intermediate_ttl > window(root_ttl) {
        return Err(ConfigError::Conflict(format!(
            "rotation is impossible: intermediate_ttl ({}) exceeds root_ttl x rotation_activate_before ({}); set root_ttl to at least {}",
            humantime::format_duration(intermediate_ttl),
            humantime::format_duration(window(root_ttl)),
            needs(intermediate_ttl)
        )));
    }
    Ok(())
}

fn check_limits(l: &ConnectionLimits) -> Result<(), ConfigError> {
    for (name, d) in [
        ("tls_handshake_timeout", l.tls_handshake_timeout),
        ("unauthenticated_timeout", l.unauthenticated_timeout),
        ("http2_keepalive_interval", l.http2_keepalive_interval),
        ("http2_keepalive_timeout", l.http2_keepalive_timeout),
    ] {
        if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
            return Err(ConfigError::DurationRange {
                name,
                min: "100ms",
                max: "1h",
            });
        }
    }
    for (name, n) in [
        ("max_connections", l.max_connections),
        ("max_connections_per_ip", l.max_connections_per_ip),
        ("max_connections_per_node", l.max_connections_per_node),
        (
            "max_unauthenticated_connections",
            l.max_unauthenticated_connections,
        ),
    ] {
        if n == 0 || n > 1_000_000 {
            return Err(ConfigError::CountRange {
                name,
                min: 1,
                max: 1_000_000,
            });
        }
    }
    if l.max_unauthenticated_connections > l.max_connections {
        return Err(ConfigError::Conflict(
            "max_unauthenticated_connections must not exceed max_connections".into(),
        ));
    }
    if l.max_concurrent_streams == 0 || l.max_concurrent_streams > 10_000 {
        return Err(ConfigError::CountRange {
            name: "max_concurrent_streams",
            min: 1,
            max: 10_000,
        });
    }
    Ok(())
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_complete_and_reported() {
        let c = Config::resolve(Settings::default(), Settings::default()).unwrap();
        assert_eq!(c.trust_domain.as_str(), DEFAULT_TRUST_DOMAIN);
        assert_eq!(c.admin_socket, PathBuf::from("signet-data/admin.sock"));
        assert_eq!(c.server_names, vec!["localhost"]);
        assert!(c.defaulted.contains(&"trust_domain"));
        assert_eq!(c.metrics_listen, None, "metrics are off by default");
        assert_eq!(c.audit_retention, Duration::from_secs(90 * 86400));
    }

    #[test]
    fn audit_retention_is_read_from_the_file() {
        let file: Settings = toml::from_str("audit_retention = \"30d\"\n").unwrap();
        let c = Config::resolve(file, Settings::default()).unwrap();
        assert_eq!(c.audit_retention, Duration::from_secs(30 * 86400));
    }

    #[test]
    fn flags_override_the_file() {
        let file: Settings =
            toml::from_str("trust_domain = \"file.org\"\nintermediate_ttl = \"2d\"\nmax_x509_svid_ttl = \"8h\"\nmetrics_listen = \"127.0.0.1:9090\"\n").unwrap();
        let flags = Settings {
            trust_domain: Some("flag.org".into()),
            ..Settings::default()
        };
        let c = Config::resolve(file, flags).unwrap();
        assert_eq!(c.trust_domain.as_str(), "flag.org");
        assert_eq!(c.intermediate_ttl, Duration::from_secs(2 * 86400));
        assert!(!c.defaulted.contains(&"intermediate_ttl"));
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9090".parse().unwrap()));
    }

    #[test]
    fn settings_that_make_rotation_impossible_are_refused_naming_the_fix() {
        let refused = |flags: Settings| {
            Config::resolve(Settings::default(), flags)
                .unwrap_err()
                .to_string()
        };
        // SVIDs of 24h need an intermediate of at least 6 x 24h = 6d.
        let e = refused(Settings {
            intermediate_ttl: Some(Duration::from_secs(2 * 86_400)),
            ..Settings::default()
        });
        assert!(e.contains("intermediate_ttl to at least 6d"), "{e}");
        let e = refused(Settings {
            node_svid_ttl: Some(Duration::from_secs(2 * 86_400)),
            ..Settings::default()
        });
        assert!(e.contains("node_svid_ttl"), "{e}");
        // JWT-SVIDs live up to 1h: a JWT key needs 6h.
        let e = refused(Settings {
            jwt_key_ttl: Some(Duration::from_secs(3 * 3600)),
            ..Settings::default()
        });
        assert!(e.contains("jwt_key_ttl to at least 6h"), "{e}");
        // An intermediate of 7d needs a root of 42d.
        let e = refused(Settings {
            root_ttl: Some(Duration::from_secs(30 * 86_400)),
            ..Settings::default()
        });
        assert!(e.contains("root_ttl to at least 42d"), "{e}");
        let e = refused(Settings {
            rotation_prepare_at: Some(0.9),
            ..Settings::default()
        });
        assert!(e.contains("rotation_prepare_at"), "{e}");
        let e = refused(Settings {
            rotation_activate_before: Some(1.5),
            ..Settings::default()
        });
        assert!(e.contains("fractions"), "{e}");
        let e = refused(Settings {
            rotation_tick: Some(Duration::ZERO),
            ..Settings::default()
        });
        assert!(e.contains("rotation_tick"), "{e}");
        let e = refused(Settings {
            upstream_bundle: Some("roots.pem".into()),
            ..Settings::default()
        });
        assert!(e.contains("upstream_ca"), "{e}");
        // The defaults are valid, and an upstream CA lifts the root rule.
        let c = Config::resolve(Settings::default(), Settings::default()).unwrap();
        assert_eq!(c.rotation.tick, Duration::from_secs(10));
        assert_eq!(c.rotation.jwt_key_ttl, c.intermediate_ttl);
        Config::resolve(
            Settings::default(),
            Settings {
                root_ttl: Some(Duration::from_secs(30 * 86_400)),
                upstream_ca: Some("ca.pem,ca.key".into()),
                ..Settings::default()
            },
        )
        .unwrap();
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(toml::from_str::<Settings>("no_such_key = 1").is_err());
        for flags in [
            Settings {
                trust_domain: Some("Upper.org".into()),
                ..Settings::default()
            },
            Settings {
                log_format: Some("xml".into()),
                ..Settings::default()
            },
            Settings {
                upstream_ca: Some("only-a-cert.pem".into()),
                ..Settings::default()
            },
            Settings {
                default_x509_svid_ttl: Some(Duration::from_secs(7200)),
                max_x509_svid_ttl: Some(Duration::from_secs(3600)),
                ..Settings::default()
            },
            Settings {
                server_names: vec!["bad name".into()],
                ..Settings::default()
            },
            Settings {
                audit_retention: Some(Duration::from_secs(60)),
                ..Settings::default()
            },
            Settings {
                max_connections: Some(100),
                max_unauthenticated_connections: Some(200),
                ..Settings::default()
            },
            Settings {
                max_connections_per_node: Some(0),
                ..Settings::default()
            },
            Settings {
                unauthenticated_timeout: Some(Duration::ZERO),
                ..Settings::default()
            },
        ] {
            assert!(
                Config::resolve(Settings::default(), flags.clone()).is_err(),
                "{flags:?}"
            );
        }
    }
}
