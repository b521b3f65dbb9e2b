//! Durable file writes, shared by the CA and the agent: temp file in the same directory, fsync, rename,
//! fsync of the directory. Secrets are created 0600 from the first byte.
//!
//! The directory may be writable by someone less privileged than the writer
//! (an `--svid-dir` shared with the workload). The temporary file is
//! therefore created exclusively (`O_CREAT|O_EXCL|O_NOFOLLOW`) under a name
//! nobody can predict: a symlink or file planted in advance is never opened,
//! so its target is never truncated, filled or re-moded. The rename replaces
//! the directory entry itself and does not follow a symlink at `path`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Attempts at finding a free temporary name before giving up; with 128
/// random bits a collision means someone is guessing, not bad luck.
const TMP_ATTEMPTS: usize = 8;

fn random_suffix() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| std::io::Error::other("no randomness for a temporary file name"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Creates a new temporary file beside `name` in `dir`, never an existing
/// one and never through a symlink.
fn create_temp(dir: &Path, name: &str, mode: u32) -> std::io::Result<(PathBuf, fs::File)> {
    let mut last = None;
    for _ in 0..TMP_ATTEMPTS {
        let tmp = dir.join(format!(".{name}.tmp-{}", random_suffix()?));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(mode)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary file name")))
}

/// Atomically replaces `path` with `contents`, created with `mode`.
///
/// # Errors
/// I/O errors; on error the old file (if any) is untouched.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name")
        })?
        .to_string_lossy()
        .into_owned();
    let (tmp, mut f) = create_temp(dir, &name, mode)?;
    let result = (|| {
        // The mode given to open() is filtered by the umask; set it exactly
        // (on the open file, never by path).
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` (and parents) and restricts it to its owner.
///
/// # Errors
/// I/O errors.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_with_the_exact_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left behind"
        );
    }

    #[test]
    fn temporary_names_cannot_be_predicted() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = create_temp(dir.path(), "k.pem", 0o600).unwrap();
        let (b, _) = create_temp(dir.path(), "k.pem", 0o600).unwrap();
        assert_ne!(a, b);
        assert!(
            !a.to_string_lossy()
                .contains(&std::process::id().to_string())
        );
    }

    #[test]
    fn planted_symlinks_and_files_are_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim_dir = tempfile::tempdir().unwrap();
        let victim = victim_dir.path().join("shadow");
        fs::write(&victim, b"root secret").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
        let p = dir.path().join("svid_key.pem");
        // What the old predictable name was, and what a guesser would try.
        let old_name = dir
            .path()
            .join(format!(".svid_key.pem.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &old_name).unwrap();
        let planted_file = dir.path().join(".svid_key.pem.tmp-0");
        fs::write(&planted_file, b"planted").unwrap();
        // A symlink at the destination itself is replaced, not followed.
        std::os::unix::fs::symlink(&victim, &p).unwrap();

        write_atomic(&p, b"new key", 0o600).unwrap();

        assert_eq!(fs::read(&victim).unwrap(), b"root secret");
        assert_eq!(
            fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(&p).unwrap(), b"new key");
        assert_eq!(fs::read(&planted_file).unwrap(), b"planted");
        assert!(
            fs::symlink_metadata(&old_name)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}
