//! The bootstrap of a test Envoy: its role, its SDS cluster on the agent's
//! socket, and its listeners and clusters.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::netns::Net;

use super::{
    LISTENER_STATS, SDS_ALL, SDS_CLUSTER, SDS_DEFAULT, SDS_ROOTCA, SERVER_BODY, UPSTREAM_CLUSTER,
};

/// How an Envoy validates its peer's certificate; both ways also require
/// the peer's URI SAN to be exactly the expected SPIFFE ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// The `ROOTCA` secret: the trust domain's roots as `trusted_ca`.
    RootCa,
    /// The `ALL` secret: Envoy's SPIFFE certificate validator with every
    /// bundle the agent knows.
    SpiffeAll,
}

impl Validation {
    fn secret_name(self) -> &'static str {
        match self {
            Self::RootCa => SDS_ROOTCA,
            Self::SpiffeAll => SDS_ALL,
        }
    }
}

/// What the Envoy does with traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// An mTLS listener that requires a client certificate for `peer_id`
    /// and answers [`SERVER_BODY`] itself.
    Server {
        /// The only SPIFFE ID a client may have.
        peer_id: String,
        validation: Validation,
    },
    /// A plain HTTP listener forwarding every request over mTLS to
    /// `upstream_ip:upstream_port`, whose certificate must be for `peer_id`.
    Client {
        upstream_ip: IpAddr,
        upstream_port: u16,
        /// The only SPIFFE ID the server may have.
        peer_id: String,
        validation: Validation,
    },
}

/// How to start an Envoy.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// The bootstrap's `node.id`, also used in messages and file names.
    pub name: String,
    /// The uid (and gid) it runs under: what the agent attests.
    pub uid: u32,
    /// The agent's SDS socket.
    pub sds_socket: PathBuf,
    pub role: Role,
    /// Where it runs (the host, or a network namespace).
    pub net: Net,
    /// The address its listener binds (127.0.0.1 unless a peer in another
    /// network namespace must reach it).
    pub listen_ip: IpAddr,
}

impl EnvoyOptions {
    /// A [`Role::Server`] accepting only clients with `client_id`, validating
    /// against `ROOTCA`.
    #[must_use]
    pub fn server(name: &str, uid: u32, sds_socket: &Path, client_id: &str) -> Self {
        Self {
            name: name.to_owned(),
            uid,
            sds_socket: sds_socket.to_owned(),
            role: Role::Server {
                peer_id: client_id.to_owned(),
                validation: Validation::RootCa,
            },
            net: Net::Host,
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// A [`Role::Client`] of the server on `server_port`, which must present
    /// `server_id`, validating against `ROOTCA`.
    #[must_use]
    pub fn client(
        name: &str,
        uid: u32,
        sds_socket: &Path,
        server_port: u16,
        server_id: &str,
    ) -> Self {
        Self {
            name: name.to_owned(),
            uid,
            sds_socket: sds_socket.to_owned(),
            role: Role::Client {
                upstream_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                upstream_port: server_port,
                peer_id: server_id.to_owned(),
                validation: Validation::RootCa,
            },
            net: Net::Host,
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// Validates the peer with `validation` instead.
    #[must_use]
    pub fn validation(mut self, validation: Validation) -> Self {
        match &mut self.role {
            Role::Server { validation: v, .. } | Role::Client { validation: v, .. } => {
                *v = validation;
            }
        }
        self
    }

    /// Runs it in `net`; its listener binds `listen_ip` there.
    #[must_use]
    pub fn in_net(mut self, net: Net, listen_ip: IpAddr) -> Self {
        self.net = net;
        self.listen_ip = listen_ip;
        self
    }

    /// A [`Role::Client`] forwards to `ip` instead of 127.0.0.1.
    #[must_use]
    pub fn upstream_ip(mut self, ip: IpAddr) -> Self {
        if let Role::Client { upstream_ip, .. } = &mut self.role {
            *upstream_ip = ip;
        }
        self
    }

    /// The SDS secrets this Envoy asks for.
    #[must_use]
    pub fn secret_names(&self) -> [&'static str; 2] {
        let validation = match &self.role {
            Role::Server { validation, .. } | Role::Client { validation, .. } => *validation,
        };
        [SDS_DEFAULT, validation.secret_name()]
    }

    /// The bootstrap: static listener and clusters, every secret from SDS.
    ///
    /// Built as a JSON value rather than a YAML template so that paths and
    /// SPIFFE IDs need no quoting rules; Envoy reads it as YAML, of which
    /// JSON is a subset.
    #[must_use]
    pub fn bootstrap(&self) -> Value {
        let mut clusters = vec![sds_cluster(&self.sds_socket)];
        let listener = match &self.role {
            Role::Server {
                peer_id,
                validation,
            } => {
                let tls = json!({
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "require_client_certificate": true,
                        "common_tls_context": common_tls_context(peer_id, *validation),
                    }
                });
                let route = json!({
                    "match": { "prefix": "/" },
                    "direct_response": { "status": 200, "body": { "inline_string": SERVER_BODY } }
                });
                listener(self.listen_ip, http_filter_chain(route, Some(tls)))
            }
            Role::Client {
                upstream_ip,
                upstream_port,
                peer_id,
                validation,
            } => {
                clusters.push(upstream_cluster(
                    *upstream_ip,
                    *upstream_port,
                    peer_id,
                    *validation,
                ));
                let route = json!({
                    "match": { "prefix": "/" },
                    "route": { "cluster": UPSTREAM_CLUSTER, "timeout": "5s" }
                });
                listener(self.listen_ip, http_filter_chain(route, None))
            }
        };
        json!({
            "node": { "id": self.name, "cluster": "signet-tests" },
            "admin": {
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } }
            },
            "static_resources": {
                "listeners": [listener],
                "clusters": clusters,
            }
        })
    }
}

/// Where every secret comes from: the agent, over gRPC on its unix socket.
fn sds_config() -> Value {
    json!({
        "resource_api_version": "V3",
        // Wait for the agent however long it takes: a listener that went
        // live without its certificate would only reset connections, and a
        // workload the agent refuses should stay visibly not ready.
        "initial_fetch_timeout": "0s",
        "api_config_source": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{
                "envoy_grpc": {
                    "cluster_name": SDS_CLUSTER,
                    // Envoy's default reconnection backoff grows to 30 s; an
                    // agent restart should be followed within a second.
                    "retry_policy": {
                        "retry_back_off": { "base_interval": "0.1s", "max_interval": "0.5s" }
                    }
                }
            }]
        }
    })
}

/// The SDS cluster: HTTP/2 (gRPC) to a unix socket.
fn sds_cluster(socket: &Path) -> Value {
    json!({
        "name": SDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} }
            }
        },
        "load_assignment": {
            "cluster_name": SDS_CLUSTER,
            "endpoints": [{
                "lb_endpoints": [{
                    "endpoint": { "address": { "pipe": { "path": socket.to_string_lossy() } } }
                }]
            }]
        }
    })
}

/// Own certificate from `default`; the peer validated against the
/// `validation` secret and required to carry exactly `peer_id`.
fn common_tls_context(peer_id: &str, validation: Validation) -> Value {
    json!({
        "tls_certificate_sds_secret_configs": [
            { "name": SDS_DEFAULT, "sds_config": sds_config() }
        ],
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": [
                    { "san_type": "URI", "matcher": { "exact": peer_id } }
                ]
            },
            "validation_context_sds_secret_config": {
                "name": validation.secret_name(),
                "sds_config": sds_config()
            }
        }
    })
}

/// The client's way to the server Envoy.
fn upstream_cluster(ip: IpAddr, port: u16, peer_id: &str, validation: Validation) -> Value {
    json!({
        "name": UPSTREAM_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "2s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                // One request per connection: every request is a new mTLS
                // handshake with the certificates loaded at that moment, so
                // a rotation that breaks anything fails a request. (An open
                // connection is never re-verified, expired or not.)
                "common_http_protocol_options": { "max_requests_per_connection": 1 },
                "explicit_http_config": { "http_protocol_options": {} }
            }
        },
        "load_assignment": {
            "cluster_name": UPSTREAM_CLUSTER,
            "endpoints": [{
                "lb_endpoints": [{
                    "endpoint": {
                        "address": { "socket_address": { "address": ip.to_string(), "port_value": port } }
                    }
                }]
            }]
        },
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": common_tls_context(peer_id, validation),
            }
        }
    })
}

/// An HTTP connection manager with one route, behind TLS when given.
fn http_filter_chain(route: Value, transport_socket: Option<Value>) -> Value {
    let mut chain = json!({
        "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": LISTENER_STATS,
                "route_config": {
                    "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": [route] }]
                },
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    }
                }]
            }
        }]
    });
    if let (Some(tls), Some(obj)) = (transport_socket, chain.as_object_mut()) {
        obj.insert("transport_socket".to_owned(), tls);
    }
    chain
}

/// The one listener, on a port the kernel picks (read back from `/listeners`).
fn listener(ip: IpAddr, filter_chain: Value) -> Value {
    json!({
        "name": LISTENER_STATS,
        "stat_prefix": LISTENER_STATS,
        "address": { "socket_address": { "address": ip.to_string(), "port_value": 0 } },
        "filter_chains": [filter_chain]
    })
}
