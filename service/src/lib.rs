//! What every Signet daemon (`signet-ca`, `signet-agent`) shares at its
//! edges: the embedded defaults both sides must agree on, reading a settings
//! file, the log format, the runtime, and waiting for a termination signal.
//!
//! Library code of the daemons stays free of process-wide concerns; only
//! their `main.rs` and top-level `run` call into this crate.

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use serde::de::DeserializeOwned;

/// The trust domain both the CA and the agent use when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "signet.local";

/// Where the CA's node API listens, and where the agent looks for it, when
/// neither is configured.
pub const DEFAULT_CA_ADDRESS: &str = "127.0.0.1:8443";

/// The name the CA's serving certificate carries, and the agent checks, by
/// default.
pub const DEFAULT_CA_SERVER_NAME: &str = "localhost";

/// Environment variable holding the log filter (`tracing` directives).
pub const LOG_ENV: &str = "SIGNET_LOG";

/// Largest settings file read; a real one is a few hundred bytes.
pub const MAX_SETTINGS_FILE_BYTES: u64 = 1024 * 1024;

/// Why a settings file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The file cannot be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_SETTINGS_FILE_BYTES`].
    #[error("config file {path} is larger than {MAX_SETTINGS_FILE_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: String,
    },
    /// The file is not valid TOML for these settings (unknown keys included).
    #[error("parsing config file {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said.
        source: toml::de::Error,
    },
    /// `log_format` is neither `text` nor `json`.
    #[error("log_format must be text or json, not {0:?}")]
    LogFormat(String),
}

/// Reads the settings file `file`, or returns the empty settings when there
/// is none, so that flags can be layered over it.
///
/// # Errors
/// [`SettingsError`] when the file cannot be read, is too large or does not
/// parse.
pub fn read_settings<S: DeserializeOwned + Default>(
    file: Option<&Path>,
) -> Result<S, SettingsError> {
    let Some(path) = file else {
        return Ok(S::default());
    };
    let shown = || path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| SettingsError::Read {
        path: shown(),
        source,
    })?;
    if meta.len() > MAX_SETTINGS_FILE_BYTES {
        return Err(SettingsError::TooLarge { path: shown() });
    }
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: shown(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| SettingsError::Parse {
        path: shown(),
        source,
    })
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// Parses a `log_format` setting; `None` means the default.
    ///
    /// # Errors
    /// [`SettingsError::LogFormat`] for anything but `text` and `json`.
    pub fn parse(setting: Option<&str>) -> Result<Self, SettingsError> {
        match setting {
            None | Some("text") => Ok(Self::Text),
            Some("json") => Ok(Self::Json),
            Some(other) => Err(SettingsError::LogFormat(other.to_owned())),
        }
    }
}

/// Installs the process-wide logger: stderr, in `format`, filtered by
/// `SIGNET_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs a daemon's `main`: a configuration error exits with status 2 before
/// anything starts; otherwise logging is installed, `run` is driven to
/// completion on a multi-threaded runtime, and its error (if any) is logged
/// and printed, exiting with status 1.
pub fn run_daemon<C, E, E2, F, Fut>(
    name: &str,
    config: Result<C, E>,
    log_format: impl FnOnce(&C) -> LogFormat,
    run: F,
) -> ExitCode
where
    E: std::fmt::Display,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = Result<(), E2>>,
    E2: std::fmt::Display,
{
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: configuration error: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(log_format(&config));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "{name} failed");
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves when the process is asked to stop: SIGTERM or SIGINT (Ctrl-C).
pub async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers (an exotic sandbox), Ctrl-C is the
        // fallback the runtime can still offer.
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        name: Option<String>,
    }

    #[test]
    fn no_file_gives_empty_settings() {
        let s: Demo = read_settings(None).unwrap();
        assert!(s.name.is_none());
    }

    #[test]
    fn files_are_read_checked_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok.toml");
        std::fs::write(&ok, "name = \"x\"\n").unwrap();
        assert_eq!(
            read_settings::<Demo>(Some(&ok)).unwrap().name.as_deref(),
            Some("x")
        );

        let unknown = dir.path().join("unknown.toml");
        std::fs::write(&unknown, "nmae = \"x\"\n").unwrap();
        let err = read_settings::<Demo>(Some(&unknown)).unwrap_err();
        assert!(matches!(err, SettingsError::Parse { .. }), "{err}");

        let big = dir.path().join("big.toml");
        let filler = "#".repeat(usize::try_from(MAX_SETTINGS_FILE_BYTES).unwrap() + 1);
        std::fs::write(&big, filler).unwrap();
        assert!(matches!(
            read_settings::<Demo>(Some(&big)).unwrap_err(),
            SettingsError::TooLarge { .. }
        ));

        let missing = dir.path().join("missing.toml");
        assert!(matches!(
            read_settings::<Demo>(Some(&missing)).unwrap_err(),
            SettingsError::Read { .. }
        ));
    }

    #[test]
    fn log_formats() {
        assert_eq!(LogFormat::parse(None).unwrap(), LogFormat::Text);
        assert_eq!(LogFormat::parse(Some("text")).unwrap(), LogFormat::Text);
        assert_eq!(LogFormat::parse(Some("json")).unwrap(), LogFormat::Json);
        assert!(LogFormat::parse(Some("xml")).is_err());
    }
}
