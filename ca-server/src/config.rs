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
    /// The bundle endpoint, when one is served.
    pub bundle_endpoint: Option<crate::federation::config::BundleEndpoint>,
    /// Federation relationships from the configuration file.
    pub federations: Vec<crate::federation::Relationship>,
    /// See [`Settings::federation_min_refresh`].
    pub federation_min_refresh: Duration,
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
        Ok(Self {
            trust_domain,
            listen,
            data_dir,
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
            bundle_endpoint,
            federations,
            federation_min_refresh,
            defaulted,
        })
    }
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
            toml::from_str("trust_domain = \"file.org\"\nintermediate_ttl = \"2d\"\nmetrics_listen = \"127.0.0.1:9090\"\n").unwrap();
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
