//! The CA's gRPC surface: the node API over TLS, the admin API on a unix
//! socket, and the standard gRPC health service on both.

pub mod admin;
pub mod admin_nodes;
pub mod conns;
pub mod convert;
pub mod guard;
pub mod node;
pub mod overview;
pub mod revocation;
pub mod status;
pub mod store_health;
pub mod tls;
