//! File delivery for applications that speak neither the Workload API nor
//! SDS: `svid.pem`, `svid_key.pem` (0600) and `bundle.pem`, written
//! atomically on every rotation, then an optional command.

use std::sync::Arc;

use signet_identity::fsutil::write_atomic;
use signet_identity::x509::chain_to_pem;
use tokio::sync::watch;

use crate::config::FileDelivery;
use crate::state::{Snapshot, SnapshotRx};

/// Writes the files whenever the SVID's serial or the bundle changes.
pub async fn run(
    files: FileDelivery,
    mut snapshots: SnapshotRx,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last: Option<(String, u64)> = None;
    loop {
        let snap: Arc<Snapshot> = snapshots.borrow_and_update().clone();
        let now = std::time::SystemTime::now();
        let svid = snap
            .svids
            .values()
            .find(|s| s.spiffe_id == files.spiffe_id && s.not_after > now)
            .cloned();
        if let (Some(svid), Some(bundle)) = (svid, snap.bundle.clone()) {
            let key = (svid.serial.clone(), bundle.sequence());
            if last.as_ref() != Some(&key) {
                match write(&files, &svid, &bundle) {
                    Ok(()) => {
                        tracing::info!(dir = %files.dir.display(), serial = %svid.serial, "wrote SVID files");
                        last = Some(key);
                        if let Some(cmd) = &files.command {
                            match tokio::process::Command::new("/bin/sh")
                                .arg("-c")
                                .arg(cmd)
                                .status()
                                .await
                            {
                                Ok(s) if s.success() => {}
                                Ok(s) => {
                                    tracing::warn!(command = %cmd, status = %s, "the post-write command failed")
                                }
                                Err(e) => {
                                    tracing::warn!(command = %cmd, error = %e, "could not run the post-write command")
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(dir = %files.dir.display(), error = %e, "could not write SVID files")
                    }
                }
            }
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

fn write(
    files: &FileDelivery,
    svid: &crate::state::Svid,
    bundle: &signet_identity::TrustBundle,
) -> std::io::Result<()> {
    std::fs::create_dir_all(&files.dir)?;
    // Key first: a reader that sees the new certificate finds its key already there.
    write_atomic(
        &files.dir.join("svid_key.pem"),
        svid.key.to_pem().as_bytes(),
        0o600,
    )?;
    write_atomic(
        &files.dir.join("svid.pem"),
        chain_to_pem(&svid.chain).as_bytes(),
        0o644,
    )?;
    write_atomic(
        &files.dir.join("bundle.pem"),
        bundle.to_pem().as_bytes(),
        0o644,
    )
}
