//! Writing credentials to disk so that a reader never sees half a file and a
//! private key is never readable by anyone else, not even for a moment.

use std::io;
use std::path::Path;

/// Mode of a private key file.
pub const MODE_SECRET: u32 = 0o600;
/// Mode of certificates and bundles.
pub const MODE_PUBLIC: u32 = 0o644;

/// Replaces `path` with `contents`: a temporary file in the same directory
/// (created exclusively under a random name, never through a symlink) is
/// written with `mode`, synced, and renamed over `path`; then the directory
/// is synced so the rename survives a crash. The same helper as the agent's
/// and the CA's ([`signet_identity::fsutil::write_atomic`]).
///
/// # Errors
/// Any I/O failure; the temporary file is removed when a step after its
/// creation fails.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    signet_identity::fsutil::write_atomic(path, contents, mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn writes_with_the_exact_mode_and_replaces_old_contents() {
        let dir = std::env::temp_dir().join(format!("signet-cli-files-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key.pem");
        fs::write(&path, "old").unwrap();
        write_atomic(&path, b"new secret", MODE_SECRET).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new secret");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        write_atomic(&dir.join("cert.pem"), b"cert", MODE_PUBLIC).unwrap();
        let mode = fs::metadata(dir.join("cert.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o644);
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
