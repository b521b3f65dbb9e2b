//! Signet's gRPC contracts, generated at build time from `proto/`.

#![allow(clippy::all, missing_docs)]

/// `signet.ca.v1`: node and admin APIs of signet-ca.
pub mod ca {
    pub mod v1 {
        tonic::include_proto!("signet.ca.v1");
    }
}
