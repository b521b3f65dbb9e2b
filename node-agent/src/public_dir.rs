//! The directory the agent's sockets live in. It must be reachable by every
//! local user (the sockets are 0666 and attestation decides what a caller
//! gets), so it cannot be inside the private data directory; and since
//! workloads trust whatever answers there, nobody but the agent's user (or
//! root) may be able to replace the sockets: every directory on the way must
//! be owned by one of them and not writable by others, unless sticky (as
//! /tmp is, where others may add entries but not replace ours).

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Mode of directories created for the sockets.
const DIR_MODE: u32 = 0o755;
const STICKY: u32 = 0o1000;

/// Why a socket directory is refused.
#[derive(Debug, thiserror::Error)]
pub enum PublicDirError {
    /// It cannot be created or inspected.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Someone else could replace the sockets.
    #[error(
        "refusing to serve in {path}: {dir} is {why}; another user could replace the agent's sockets"
    )]
    Unsafe {
        path: PathBuf,
        dir: PathBuf,
        why: String,
    },
}

/// Creates the directory of `socket` (missing parts with mode 0755,
/// whatever the umask) and checks that nobody but this user or root
/// controls any directory on its path.
///
/// # Errors
/// See [`PublicDirError`].
pub fn prepare(socket: &Path) -> Result<(), PublicDirError> {
    let Some(dir) = socket.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PublicDirError::Io { path, source }
    };
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for d in missing.iter().rev() {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(DIR_MODE)).map_err(io(d))?;
    }
    let me = std::fs::metadata("/proc/self")
        .map_err(io(Path::new("/proc/self")))?
        .uid();
    let absolute = std::path::absolute(dir).map_err(io(dir))?;
    for d in absolute.ancestors() {
        let meta = std::fs::metadata(d).map_err(io(d))?;
        let unsafe_because = if meta.uid() != me && meta.uid() != 0 {
            Some(format!("owned by uid {}", meta.uid()))
        } else if meta.mode() & 0o022 != 0 && meta.mode() & STICKY == 0 {
            Some(format!(
                "writable by group or others (mode {:o})",
                meta.mode() & 0o7777
            ))
        } else {
            None
        };
        if let Some(why) = unsafe_because {
            return Err(PublicDirError::Unsafe {
                path: dir.to_path_buf(),
                dir: d.to_path_buf(),
                why,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_reachable_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let socket = tmp.path().join("a/public/api.sock");
        prepare(&socket).unwrap();
        for d in [tmp.path().join("a"), tmp.path().join("a/public")] {
            assert_eq!(
                std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
                0o755
            );
        }
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = prepare(&open.join("public/api.sock")).unwrap_err();
        assert!(matches!(err, PublicDirError::Unsafe { .. }), "{err}");
        // Sticky, like /tmp: others may add entries but not replace ours.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        prepare(&open.join("public/api.sock")).unwrap();
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        let me = std::fs::metadata("/proc/self").unwrap().uid();
        if me != 0 {
            // Only root can give a directory away.
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let theirs = tmp.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let err = prepare(&theirs.join("api.sock")).unwrap_err();
        assert!(err.to_string().contains("owned by uid 65534"), "{err}");
    }
}
