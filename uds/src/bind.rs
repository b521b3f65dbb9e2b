//! Binding a unix socket safely, and removing it afterwards only if it is
//! still the one we created.

use std::io;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

/// Directories created for a socket: every user may traverse them; the
/// socket's own mode decides who may connect.
pub const DIR_MODE: u32 = 0o755;

/// Why a socket could not be bound.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    #[error("another server is listening on {0}")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BindError {
    let path = path.to_owned();
    move |source| BindError::Io { what, path, source }
}

/// A bound, listening unix socket. Dropping it removes the socket file, but
/// only if the file at the path is still the one bound here (same device and
/// inode): a socket another server put in its place meanwhile stays.
#[derive(Debug)]
pub struct BoundSocket {
    listener: Option<UnixListener>,
    guard: SocketGuard,
}

impl BoundSocket {
    /// The socket's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.guard.path
    }

    /// The listener, once; the file stays owned by this value.
    pub(crate) fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }

    /// The listener, for a test that accepts by hand.
    #[must_use]
    pub fn listener(&self) -> Option<&UnixListener> {
        self.listener.as_ref()
    }
}

#[derive(Debug)]
struct SocketGuard {
    path: PathBuf,
    identity: Option<(u64, u64)>,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let now = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if now.is_some()
            && now == self.identity
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            tracing::warn!(socket = %self.path.display(), error = %e, "cannot remove the socket");
        }
    }
}

/// Binds `socket` with permission bits `mode`.
///
/// Missing parent directories are created with [`DIR_MODE`] whatever the
/// umask (existing ones are left alone). A socket left by an earlier run that
/// nobody answers on any more is replaced; a live one, or a path that is not
/// a socket, is refused.
///
/// # Errors
/// [`BindError::InUse`], [`BindError::NotASocket`], or a failing system call.
pub async fn bind(socket: &Path, mode: u32) -> Result<BoundSocket, BindError> {
    if let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs(parent)?;
    }
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            // A socket someone still answers on belongs to a live server;
            // replacing it would steal its clients.
            if UnixStream::connect(socket).await.is_ok() {
                return Err(BindError::InUse(socket.to_owned()));
            }
            std::fs::remove_file(socket).map_err(io_error("removing stale socket", socket))?;
        }
        Ok(_) => return Err(BindError::NotASocket(socket.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("inspecting", socket)(e)),
    }
    let listener = UnixListener::bind(socket).map_err(io_error("binding", socket))?;
    // From here on the file is ours: removed on drop, also on error below.
    let guard = SocketGuard {
        path: socket.to_owned(),
        identity: std::fs::symlink_metadata(socket)
            .map(|m| (m.dev(), m.ino()))
            .ok(),
    };
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))
        .map_err(io_error("setting the mode of", socket))?;
    Ok(BoundSocket {
        listener: Some(listener),
        guard,
    })
}

/// Creates `dir` and its missing ancestors with [`DIR_MODE`].
fn create_dirs(dir: &Path) -> Result<(), BindError> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    std::fs::create_dir_all(dir).map_err(io_error("creating", dir))?;
    for d in missing {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(DIR_MODE))
            .map_err(io_error("setting the mode of", d))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binding_replaces_a_stale_socket_but_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");

        // A socket nobody listens on any more is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let live = bind(&path, 0o666).await.unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o666
        );

        // A socket a server still answers on is not.
        let err = bind(&path, 0o666).await.unwrap_err();
        assert!(matches!(err, BindError::InUse(_)), "{err}");
        assert!(err.to_string().contains("another server"), "{err}");
        drop(live);
        assert!(!path.exists(), "dropping the bound socket removes it");

        // Nor is a file that is not a socket.
        let file = dir.path().join("file");
        std::fs::write(&file, b"keep me").unwrap();
        let err = bind(&file, 0o666).await.unwrap_err();
        assert!(matches!(err, BindError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }

    #[tokio::test]
    async fn missing_directories_are_created_reachable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/agent.sock");
        let _bound = bind(&path, 0o600).await.unwrap();
        for d in [dir.path().join("a"), dir.path().join("a/b")] {
            assert_eq!(
                std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
                DIR_MODE,
                "{}",
                d.display()
            );
        }
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[tokio::test]
    async fn a_socket_replaced_by_someone_else_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.sock");
        let bound = bind(&path, 0o600).await.unwrap();
        // Another server takes the path over.
        std::fs::remove_file(&path).unwrap();
        let _theirs = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(bound);
        assert!(path.exists(), "someone else's socket must survive our exit");
    }
}
