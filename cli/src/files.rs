//! Writing credentials to disk so that a reader never sees half a file and a
//! private key is never readable by anyone else, not even for a moment.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of a private key file.
pub const MODE_SECRET: u32 = 0o600;
/// Mode of certificates and bundles.
pub const MODE_PUBLIC: u32 = 0o644;

/// Replaces `path` with `contents`: a temporary file in the same directory is
/// created with `mode`, written, synced, and renamed over `path`; then the
/// directory is synced so the rename survives a crash.
///
/// # Errors
/// Any I/O failure; the temporary file is removed when a step after its
/// creation fails.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // Left over by an earlier run that died with the same pid; create_new
    // below must not trip over it.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    let written = (|| {
        // The umask may have narrowed the mode at creation; say it exactly.
        file.set_permissions(Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

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
