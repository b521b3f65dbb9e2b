//! Envoy SDS v3 server.
