//! Signet's gRPC contracts, generated at build time from `proto/`.

#![allow(clippy::all, missing_docs)]

/// `signet.ca.v1`: node and admin APIs of signet-ca.
pub mod ca {
    pub mod v1 {
        tonic::include_proto!("signet.ca.v1");
    }
}

/// The SPIFFE Workload API, as the SPIFFE standard defines it. The standard's
/// proto declares no package, hence the `_` file prost generates for it.
pub mod workload {
    tonic::include_proto!("_");
}

/// Conversions between these messages and the identity crate's types.
#[warn(clippy::all)]
pub mod convert;

/// Counting a request body's size and batch items on the wire.
#[warn(clippy::all)]
pub mod wire_scan;
