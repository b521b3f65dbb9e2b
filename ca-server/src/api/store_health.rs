//! Ties the gRPC health of the node API to the CA's database: while a
//! PostgreSQL store cannot be reached, "" and `signet.ca.v1.Node` report
//! NOT_SERVING (load balancers and agents move to another replica), and
//! SERVING again once it answers. The admin service stays SERVING: the
//! admin socket is how an operator looks at a degraded CA.
//!
//! A light probe (`SELECT 1` through the store's own pool) runs every
//! [`PROBE_INTERVAL`], at once when a request has just failed with
//! UNAVAILABLE, and never more than one at a time. Each probe is bounded
//! by [`PROBE_TIMEOUT`] on top of the pool's own connect and statement
//! limits.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::ca::Ca;
use crate::store::Backend;

/// How often the database is probed when nothing else asks.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Longest a probe may take before the database counts as unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Least time between two probes, however many requests fail.
const MIN_PROBE_GAP: Duration = Duration::from_millis(200);

/// The node API's services whose health follows the database.
const FOLLOWING: [&str; 2] = ["", "signet.ca.v1.Node"];

static WAKE: Notify = Notify::const_new();

/// A request failed with UNAVAILABLE: probe now rather than at the next
/// tick. Cheap; wake-ups while a probe runs coalesce into one.
pub fn request_failed_unavailable() {
    WAKE.notify_one();
}

/// Whether the store's database answers a trivial statement in time.
async fn probe(ca: &Arc<Ca>) -> Result<(), String> {
    let store = ca.store().clone();
    let mut task = tokio::task::spawn_blocking(move || store.with_conn(|tx| tx.batch("SELECT 1")));
    match tokio::time::timeout(PROBE_TIMEOUT, &mut task).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(e.to_string()),
        Ok(Err(e)) => Err(format!("the probe failed: {e}")),
        Err(_) => {
            // Let the late probe finish before another starts, so probes
            // never pile up on the pool.
            let _ = task.await;
            Err(format!("no answer within {PROBE_TIMEOUT:?}"))
        }
    }
}

/// Probes the database until the task is aborted (the drain aborts it
/// before it sets NOT_SERVING for good). Does nothing for SQLite, which
/// lives in the CA's own data directory.
pub async fn run(ca: Arc<Ca>, reporter: HealthReporter) {
    if ca.store().backend() != Backend::Postgres {
        return;
    }
    let mut serving = true;
    loop {
        tokio::select! {
            () = tokio::time::sleep(PROBE_INTERVAL) => {}
            () = WAKE.notified() => {}
        }
        let result = probe(&ca).await;
        match (&result, serving) {
            (Err(e), true) => {
                tracing::warn!(error = %e, "the database is unreachable: health NOT_SERVING until it answers again");
                set(&reporter, ServingStatus::NotServing).await;
                serving = false;
            }
            (Ok(()), false) => {
                tracing::info!("the database answers again: health SERVING");
                set(&reporter, ServingStatus::Serving).await;
                serving = true;
            }
            _ => {}
        }
        tokio::time::sleep(MIN_PROBE_GAP).await;
    }
}

async fn set(reporter: &HealthReporter, status: ServingStatus) {
    for service in FOLLOWING {
        reporter.set_service_status(service, status).await;
    }
}
