//! One streaming response that follows the snapshot channel: evaluate what
//! the caller should hold, send it if it differs from what was sent last,
//! then sleep until the snapshot changes, a deadline passes or the server
//! shuts down.

use std::time::SystemTime;

use tokio::sync::watch;
use tonic::Status;

use super::{Clock, ResponseStream};
use crate::state::{Snapshot, SnapshotRx};

/// What one evaluation of a caller's view decided.
pub(super) enum Decision<T> {
    /// The complete message the caller should hold now; evaluate again at
    /// the deadline, if any, even when no snapshot arrives (an SVID expiring).
    Send(T, Option<SystemTime>),
    /// Nothing to send yet; evaluate again on the next snapshot or at the
    /// deadline.
    Wait(Option<SystemTime>),
    /// End the stream with this status.
    Refuse(Status),
}

/// What a stream needs from the service.
pub(super) struct Context {
    pub snapshots: SnapshotRx,
    pub shutdown: Option<watch::Receiver<bool>>,
    pub clock: Clock,
}

struct State<T, F> {
    ctx: Context,
    evaluate: F,
    last: Option<T>,
    done: bool,
}

/// A response stream driven by `evaluate`. Every message is complete (the
/// standard's section 4.3), and a message equal to the previous one is not
/// sent again. The stream ends without error when the server shuts down.
pub(super) fn follow<T, F>(ctx: Context, evaluate: F) -> ResponseStream<T>
where
    T: PartialEq + Clone + Send + 'static,
    F: FnMut(&Snapshot, SystemTime) -> Decision<T> + Send + 'static,
{
    let state = State {
        ctx,
        evaluate,
        last: None,
        done: false,
    };
    let stream = Box::pin(futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            let snapshot = st.ctx.snapshots.borrow_and_update().clone();
            let now = (st.ctx.clock)();
            let deadline = match (st.evaluate)(&snapshot, now) {
                Decision::Send(message, deadline) => {
                    if st.last.as_ref() != Some(&message) {
                        st.last = Some(message.clone());
                        return Some((Ok(message), st));
                    }
                    deadline
                }
                Decision::Wait(deadline) => deadline,
                Decision::Refuse(status) => {
                    st.done = true;
                    return Some((Err(status), st));
                }
            };
            drop(snapshot);
            let sleep = deadline.map(|d| d.duration_since(now).unwrap_or_default());
            tokio::select! {
                () = shutdown_requested(&mut st.ctx.shutdown) => return None,
                changed = st.ctx.snapshots.changed() => {
                    if changed.is_err() {
                        st.done = true;
                        return Some((Err(Status::unavailable("the agent is stopping")), st));
                    }
                }
                () = tokio::time::sleep(sleep.unwrap_or_default()), if sleep.is_some() => {}
            }
        }
    }));
    crate::metrics::counted("workload_api", stream)
}

/// Resolves once shutdown is requested, or once nobody can request it any
/// more; never without a receiver.
async fn shutdown_requested(rx: &mut Option<watch::Receiver<bool>>) {
    match rx {
        Some(rx) => {
            // An error means the sender is gone, which is a shutdown too.
            let _ = rx.wait_for(|stop| *stop).await;
        }
        None => std::future::pending().await,
    }
}
