//! Closes node-API connections whose client certificate the CA no longer
//! honours: the node was evicted, banned or attested again, or its SVID is
//! two renewals old. Streams on those connections end first, with
//! PERMISSION_DENIED (`api::node`); the connections close a moment later.

use std::sync::Arc;

use signet_identity::SpiffeId;
use tokio::sync::{broadcast, watch};

use super::conns::ConnTracker;
use crate::ca::Ca;

/// Follows [`Ca::node_events`] until `shutdown`.
pub async fn run(ca: Arc<Ca>, tracker: Arc<ConnTracker>, mut shutdown: watch::Receiver<bool>) {
    let mut events = ca.node_events();
    loop {
        let nodes = tokio::select! {
            ev = events.recv() => match ev {
                Ok(node) => vec![node],
                // Some events were missed: check every connected node.
                Err(broadcast::error::RecvError::Lagged(_)) => tracker.connected_nodes(),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = shutdown.changed() => return,
        };
        for node in nodes {
            revoke(&ca, &tracker, &node);
        }
    }
}

fn revoke(ca: &Ca, tracker: &ConnTracker, node: &SpiffeId) {
    match ca.honoured_serials(node) {
        Ok(honoured) => {
            let closed = tracker.revoke(node, |serial| honoured.iter().any(|h| h == serial));
            if closed > 0 {
                tracing::info!(%node, connections = closed, "closing connections with a revoked node SVID");
            }
        }
        Err(e) => tracing::error!(%node, error = %e, "could not read the node's serials"),
    }
}
