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

/// Istio's certificate service (`istio.v1.auth`), served by the CA's mesh API.
pub mod istio {
    pub mod v1 {
        pub mod auth {
            tonic::include_proto!("istio.v1.auth");
        }
    }
}

/// Linkerd's identity service (`io.linkerd.proxy.identity`), served by the
/// CA's mesh API.
pub mod linkerd {
    pub mod identity {
        tonic::include_proto!("io.linkerd.proxy.identity");
    }
}

/// Conversions between these messages and the identity crate's types.
#[warn(clippy::all)]
pub mod convert;

/// Counting a request body's size and batch items on the wire.
#[warn(clippy::all)]
pub mod wire_scan;
