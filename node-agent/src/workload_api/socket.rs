//! The Workload API's unix socket: bound, served and removed by
//! `signet-uds`, like every Signet socket.

use std::path::PathBuf;

use tokio::sync::watch;
use tonic::service::Routes;

use super::WorkloadApi;

/// Any local process may connect: what it receives is decided by its
/// attestation, not by file permissions, and one that cannot connect cannot
/// even be told it has no identity.
pub const SOCKET_MODE: u32 = 0o666;

/// Binds `socket` (creating its parent directories and replacing a stale
/// socket left by a previous run), serves the SPIFFE Workload API on it until
/// `shutdown` turns true, then removes the socket if it is still ours.
///
/// Every gRPC client's `:authority` is accepted, and the default per-uid
/// limits of [`signet_uds::ServeOptions`] apply. Open streams end cleanly on
/// shutdown, so the server drains promptly.
///
/// # Errors
/// The socket cannot be bound (another server is live on it, or the path is
/// not a socket), or the server fails.
pub async fn serve(
    socket: PathBuf,
    mut api: WorkloadApi,
    shutdown: watch::Receiver<bool>,
) -> Result<(), signet_uds::SocketError> {
    let bound = signet_uds::bind(&socket, SOCKET_MODE).await?;
    tracing::info!(socket = %socket.display(), "serving the SPIFFE Workload API");
    api.shutdown = Some(shutdown.clone());
    let result = signet_uds::serve(
        bound,
        Routes::new(super::service(api)),
        signet_uds::ServeOptions {
            on_accept: Some(crate::attest::unix::accept_hook()),
            ..signet_uds::ServeOptions::default()
        },
        shutdown,
    )
    .await;
    tracing::info!(socket = %socket.display(), "Workload API stopped");
    Ok(result?)
}
