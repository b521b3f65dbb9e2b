//! signet-ca: the control-plane certificate authority of a Signet trust domain.

pub mod api;
pub mod ca;
pub mod config;
pub mod federation;
pub mod k8s;
pub mod mesh;
pub mod metrics;
pub mod server;
pub mod store;
