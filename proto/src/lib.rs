//! Signet's gRPC contracts, generated at build time from `proto/`.

#![allow(clippy::all, missing_docs)]

/// `signet.ca.v1`: node and admin APIs of signet-ca.
pub mod ca {
    pub mod v1 {
        tonic::include_proto!("signet.ca.v1");

        /// The trailer with which a draining CA ends the node API's streams
        /// (status UNAVAILABLE): "move to another replica now".
        pub const DRAIN_TRAILER: &str = "signet-drain";

        /// Whether `status` is a draining CA's "move now".
        pub fn is_drain(status: &tonic::Status) -> bool {
            status.code() == tonic::Code::Unavailable
                && status.metadata().get(DRAIN_TRAILER).is_some()
        }

        /// The status a draining CA ends a stream with.
        pub fn drain_status() -> tonic::Status {
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert(
                DRAIN_TRAILER,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            tonic::Status::with_metadata(
                tonic::Code::Unavailable,
                "the CA is draining: reconnect to another replica",
                metadata,
            )
        }
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
