//! The Workload API's unix socket: binding it safely, serving on it, and
//! removing it afterwards.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;

use super::WorkloadApi;

/// Any local process may connect: what it receives is decided by its
/// attestation, not by file permissions, and one that cannot connect cannot
/// even be told it has no identity.
const SOCKET_MODE: u32 = 0o666;
/// Directories created for the socket must let every workload reach it.
const DIR_MODE: u32 = 0o755;

/// Binds `socket` (creating its parent directories and replacing a stale
/// socket left by a previous run), serves the SPIFFE Workload API on it until
/// `shutdown` turns true, then removes the socket.
///
/// Open streams end cleanly on shutdown, so the server drains promptly.
///
/// # Errors
/// The socket cannot be bound (another server is live on it, or the path is
/// not a socket), or the server fails.
pub async fn serve(
    socket: PathBuf,
    mut api: WorkloadApi,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = bind(&socket).await?;
    // Remember which file we created, so that we never remove a socket that
    // another process put in its place meanwhile.
    let identity = std::fs::symlink_metadata(&socket)
        .map(|m| (m.dev(), m.ino()))
        .ok();
    tracing::info!(socket = %socket.display(), "serving the SPIFFE Workload API");

    api.shutdown = Some(shutdown.clone());
    let mut stop = shutdown;
    let result = tonic::transport::Server::builder()
        .add_service(super::service(api))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
            // A dropped sender also means the agent is going away.
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;

    let still_ours = std::fs::symlink_metadata(&socket)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    if still_ours.is_some()
        && still_ours == identity
        && let Err(e) = std::fs::remove_file(&socket)
    {
        tracing::warn!(socket = %socket.display(), error = %e, "cannot remove the Workload API socket");
    }
    tracing::info!(socket = %socket.display(), "Workload API stopped");
    result.context("serving the Workload API")
}

/// Creates the socket's directory if needed, removes a stale socket, binds
/// and opens the socket to every local user.
pub(super) async fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs(parent)?;
    }
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            // A socket someone still answers on belongs to a live server
            // (another agent); replacing it would steal its workloads.
            if UnixStream::connect(socket).await.is_ok() {
                bail!("another server is listening on {}", socket.display());
            }
            std::fs::remove_file(socket)
                .with_context(|| format!("removing stale socket {}", socket.display()))?;
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; refusing to replace it",
            socket.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", socket.display())),
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(SOCKET_MODE))
        .with_context(|| format!("setting the mode of {}", socket.display()))?;
    Ok(listener)
}

/// Creates `dir` and its missing ancestors with [`DIR_MODE`], whatever the
/// umask; directories that already exist are left as they are.
fn create_dirs(dir: &Path) -> anyhow::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for d in missing {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(DIR_MODE))
            .with_context(|| format!("setting the mode of {}", d.display()))?;
    }
    Ok(())
}
