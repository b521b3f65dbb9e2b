//! Finding the workspace's binaries, and running the `signet` CLI as a user
//! would.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// Longest a single CLI invocation may take; each is one admin call or a
/// local check, so this only catches a hung process.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// The path of the workspace binary `name` (`signet-ca`, `signet`, ...).
///
/// Looked up, in order, in `$SIGNET_BIN_DIR`, in the directory of the
/// running executable and its parent (test executables live in
/// `target/<profile>/deps`, `signet-bench` in `target/<profile>`), and in
/// `target/debug` of this workspace.
///
/// # Errors
/// When the binary is in none of those places: build it first with
/// `cargo build --workspace --bins`.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("SIGNET_BIN_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    if let Ok(exe) = std::env::current_exe() {
        dirs.extend(exe.ancestors().skip(1).take(2).map(Path::to_path_buf));
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    for dir in &dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    bail!(
        "binary {name:?} not found (searched {}); build it first with `cargo build --workspace --bins`",
        searched.join(", ")
    )
}

/// What a CLI run printed, decoded as UTF-8 (lossily).
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// The command line, for messages.
    pub command: String,
    /// How the process ended.
    pub status: ExitStatus,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

impl CliOutput {
    /// Whether the process exited with status 0.
    #[must_use]
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The exit code (`None` when killed by a signal).
    #[must_use]
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The first line of stdout, without its newline.
    #[must_use]
    pub fn first_line(&self) -> &str {
        self.stdout.lines().next().unwrap_or_default()
    }

    /// `self` when the process succeeded.
    ///
    /// # Errors
    /// A non-zero exit, with the command line and both outputs in the message.
    pub fn ok(self) -> anyhow::Result<Self> {
        if self.success() {
            Ok(self)
        } else {
            bail!("{self}")
        }
    }
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `signet ARGS` (no admin socket configured).
///
/// # Errors
/// When the binary is missing or cannot be started, or hangs for a minute.
/// A non-zero exit is not an error here: see [`CliOutput::ok`].
pub async fn signet<I, S>(args: I) -> anyhow::Result<CliOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(&binary("signet")?, args, &[]).await
}

/// Runs `program ARGS` with extra environment variables and collects its output.
pub(crate) async fn run<I, S>(
    program: &Path,
    args: I,
    envs: &[(&str, &OsStr)],
) -> anyhow::Result<CliOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let command = std::iter::once(program.as_os_str())
        .chain(args.iter().map(std::ffi::OsString::as_os_str))
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // If the test gives up on the future, the process goes with it.
        .kill_on_drop(true);
    for (key, value) in envs {
        cmd.env(key, value);
    }
    let output = tokio::time::timeout(CLI_TIMEOUT, cmd.output())
        .await
        .with_context(|| format!("`{command}` did not finish within {CLI_TIMEOUT:?}"))?
        .with_context(|| format!("starting `{command}`"))?;
    Ok(CliOutput {
        command,
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}
