//! gRPC servers on unix sockets, done once for every Signet socket (the
//! agent's Workload API and SDS, the CA's admin socket):
//!
//! - [`bind`](bind::bind): create the directory, refuse a live socket or a
//!   non-socket, replace a stale socket, set the mode; remove the file on
//!   exit only if it is still ours.
//! - [`authority`]: an HTTP/2 frame rewriter that gives every request the
//!   `:authority` `localhost`, so that clients which send the socket path
//!   (grpc-core, grpc-java) are not refused by h2.
//! - [`serve`](serve::serve): tonic on the socket with the rewriter, caps on
//!   connections and streams per peer uid, a handshake timeout, HTTP/2
//!   keepalive and backed-off accept errors.

pub mod authority;

#[cfg(feature = "serve")]
pub mod bind;
#[cfg(feature = "serve")]
pub mod limits;
#[cfg(feature = "serve")]
pub mod peer;
#[cfg(feature = "serve")]
pub mod serve;
#[cfg(feature = "serve")]
pub mod stream;

#[cfg(feature = "serve")]
pub use bind::{BindError, BoundSocket, bind};
#[cfg(feature = "serve")]
pub use http::Extensions;
#[cfg(feature = "serve")]
pub use peer::{AcceptHook, UdsPeer};
#[cfg(feature = "serve")]
pub use serve::{ServeError, ServeOptions, serve};
#[cfg(feature = "serve")]
pub use stream::NormalizedStream;

/// Why a socket could not be served: it could not be bound, or the server
/// failed.
#[cfg(feature = "serve")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    /// Binding failed (see [`BindError`]).
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The gRPC server failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
}
