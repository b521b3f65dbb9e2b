//! Stopping and reaping the processes the harness starts, always by their
//! own PID (never by name).

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Sends signal `name` (e.g. `TERM`) to `pid` with `kill`.
///
/// # Errors
/// When `kill` cannot run or fails.
pub(crate) fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{name} {pid} failed: {status}");
    }
    Ok(())
}

/// The exit status of `child` if it has exited (then `child` becomes `None`).
///
/// # Errors
/// When there is no process, or waiting fails.
pub(crate) fn reap(child: &mut Option<Child>, what: &str) -> anyhow::Result<Option<ExitStatus>> {
    let Some(running) = child.as_mut() else {
        bail!("{what} is not running");
    };
    let status = running
        .try_wait()
        .with_context(|| format!("waiting for {what}"))?;
    if status.is_some() {
        *child = None;
    }
    Ok(status)
}

/// SIGKILL by PID, then reap. Does nothing when there is no process.
pub(crate) fn kill(child: &mut Option<Child>) {
    if let Some(mut running) = child.take() {
        let _ = running.kill();
        let _ = running.wait();
    }
}

/// Sends SIGTERM and waits up to `timeout` for the process to exit on its
/// own; past that it is killed and the error carries `diagnostics()`.
///
/// # Errors
/// Not running, `kill` failing, or SIGTERM ignored.
pub(crate) async fn stop(
    child: &mut Option<Child>,
    what: &str,
    timeout: Duration,
    diagnostics: impl FnOnce() -> String,
) -> anyhow::Result<ExitStatus> {
    let pid = child
        .as_ref()
        .map(Child::id)
        .with_context(|| format!("{what} is not running"))?;
    signal(pid, "TERM")?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = reap(child, what)? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            kill(child);
            bail!(
                "{what} (pid {pid}) ignored SIGTERM for {timeout:?}\n{}",
                diagnostics()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
