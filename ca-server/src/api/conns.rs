//! Connection accounting for the node API.
//!
//! Every accepted TCP connection takes a slot before its TLS handshake
//! starts. Until a node SVID authenticates it, the slot counts against the
//! source IP; once a node SVID does, it counts against that node instead. A
//! connection that finishes its handshake without a node SVID also takes a
//! place in the pool of unauthenticated connections. Handshakes in flight
//! are not in that pool, so that callers flooding it from many addresses
//! cannot keep a node from reaching the point where it is authenticated. Over any cap the
//! connection is closed at once, so that a flood costs the CA one accept and
//! one close per connection, not a file descriptor and buffers for as long as
//! the flooder likes.
//!
//! Each connection also carries a kill switch: connections without a node
//! SVID live at most `unauthenticated_timeout`, connections with one end a
//! little after their certificate expires, and connections of a node that is
//! evicted, banned or re-attested are closed when [`ConnTracker::revoke`]
//! finds their credential no longer current.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use signet_identity::SpiffeId;
use tokio::sync::Notify;

use crate::config::ConnectionLimits;

/// How long a connection may outlive its client certificate: long enough
/// for streams to tell the caller why they end before the socket closes.
const EXPIRY_GRACE: Duration = Duration::from_secs(5);

/// How long a revoked connection stays open after its streams were told
/// PERMISSION_DENIED, so that the status reaches the caller before the close.
pub const REVOKE_GRACE: Duration = Duration::from_millis(500);

/// A future that resolves when a connection must close.
pub type KillSwitch = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Open connections and their caps.
#[derive(Debug)]
pub struct ConnTracker {
    limits: ConnectionLimits,
    state: Mutex<State>,
    next_id: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    unauthenticated: usize,
    per_ip: HashMap<IpAddr, usize>,
    per_node: HashMap<SpiffeId, usize>,
    nodes: HashMap<u64, NodeConn>,
}

#[derive(Debug)]
struct NodeConn {
    node: SpiffeId,
    serial: String,
    kill: Arc<Notify>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `max_connections` reached.
    #[error("too many connections")]
    Total,
    /// `max_unauthenticated_connections` reached.
    #[error("too many unauthenticated connections")]
    Unauthenticated,
    /// `max_connections_per_ip` reached for the source address.
    #[error("too many unauthenticated connections from this address")]
    PerIp,
    /// `max_connections_per_node` reached for the node.
    #[error("too many connections for this node")]
    PerNode,
}

/// A connection's place in the counts; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    tracker: Arc<ConnTracker>,
    ip: IpAddr,
    kind: SlotKind,
}

#[derive(Debug)]
enum SlotKind {
    Handshake,
    Unauthenticated,
    Node { id: u64, node: SpiffeId },
    Released,
}

/// Counts at one moment, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub total: usize,
    pub unauthenticated: usize,
    pub nodes: usize,
}

impl ConnTracker {
    /// A tracker enforcing `limits`.
    #[must_use]
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
        })
    }

    /// The limits in force.
    #[must_use]
    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Current counts.
    #[must_use]
    pub fn counts(&self) -> Counts {
        let s = self.lock();
        Counts {
            total: s.total,
            unauthenticated: s.unauthenticated,
            nodes: s.nodes.len(),
        }
    }

    /// Takes a slot for a new connection from `ip`, for its handshake.
    ///
    /// # Errors
    /// [`Refused`] when a cap is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let mut s = self.lock();
        if s.total >= self.limits.max_connections {
            return Err(Refused::Total);
        }
        let from_ip = s.per_ip.entry(ip).or_insert(0);
        if *from_ip >= self.limits.max_connections_per_ip {
            return Err(Refused::PerIp);
        }
        *from_ip += 1;
        s.total += 1;
        Ok(Slot {
            tracker: self.clone(),
            ip,
            kind: SlotKind::Handshake,
        })
    }

    /// The connections of `node` whose certificate serial `still_current`
    /// refuses are closed after [`REVOKE_GRACE`]. Returns how many.
    pub fn revoke(&self, node: &SpiffeId, still_current: impl Fn(&str) -> bool) -> usize {
        let doomed: Vec<Arc<Notify>> = self
            .lock()
            .nodes
            .values()
            .filter(|c| &c.node == node && !still_current(&c.serial))
            .map(|c| c.kill.clone())
            .collect();
        let n = doomed.len();
        if n > 0 {
            tokio::spawn(async move {
                tokio::time::sleep(REVOKE_GRACE).await;
                for kill in doomed {
                    kill.notify_waiters();
                }
            });
        }
        n
    }

    /// Every node with open connections, for a full re-check.
    #[must_use]
    pub fn connected_nodes(&self) -> Vec<SpiffeId> {
        self.lock().per_node.keys().cloned().collect()
    }
}

impl Slot {
    /// Moves the slot of a connection past its handshake to `node`, presenting the certificate
    /// with `serial` that expires at `not_after`. Returns the connection's
    /// kill switch.
    ///
    /// # Errors
    /// [`Refused::PerNode`] when the node has its maximum of connections
    /// already; the slot is then freed.
    pub fn authenticate(
        &mut self,
        node: SpiffeId,
        serial: String,
        not_after: SystemTime,
    ) -> Result<KillSwitch, Refused> {
        let kill = Arc::new(Notify::new());
        // Registered now, so that a revocation between here and the first
        // poll is not missed.
        let revoked = kill.clone().notified_owned();
        let tracker = self.tracker.clone();
        {
            let mut s = tracker.lock();
            let count = s.per_node.get(&node).copied().unwrap_or(0);
            if count >= tracker.limits.max_connections_per_node {
                drop(s);
                self.release();
                return Err(Refused::PerNode);
            }
            s.per_node.insert(node.clone(), count + 1);
            decrement_ip(&mut s, self.ip);
            let id = tracker.next_id.fetch_add(1, Ordering::Relaxed);
            s.nodes.insert(
                id,
                NodeConn {
                    node: node.clone(),
                    serial,
                    kill,
                },
            );
            self.kind = SlotKind::Node { id, node };
        }
        let left = not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            + EXPIRY_GRACE;
        Ok(Box::pin(async move {
            tokio::select! {
                () = revoked => {}
                () = tokio::time::sleep(left) => {}
            }
        }))
    }

    /// Keeps a connection that finished its handshake without a node SVID,
    /// for `unauthenticated_timeout` at most (the returned kill switch).
    ///
    /// # Errors
    /// [`Refused::Unauthenticated`] when the pool of such connections is
    /// full; the slot is then freed.
    pub fn stay_unauthenticated(&mut self) -> Result<KillSwitch, Refused> {
        {
            let mut s = self.tracker.lock();
            if s.unauthenticated >= self.tracker.limits.max_unauthenticated_connections {
                drop(s);
                self.release();
                return Err(Refused::Unauthenticated);
            }
            s.unauthenticated += 1;
        }
        self.kind = SlotKind::Unauthenticated;
        Ok(Box::pin(tokio::time::sleep(
            self.tracker.limits.unauthenticated_timeout,
        )))
    }

    fn release(&mut self) {
        let kind = std::mem::replace(&mut self.kind, SlotKind::Released);
        let mut s = self.tracker.lock();
        match kind {
            SlotKind::Released => return,
            SlotKind::Handshake => decrement_ip(&mut s, self.ip),
            SlotKind::Unauthenticated => {
                s.unauthenticated -= 1;
                decrement_ip(&mut s, self.ip);
            }
            SlotKind::Node { id, node } => {
                s.nodes.remove(&id);
                if let Some(n) = s.per_node.get_mut(&node) {
                    *n -= 1;
                    if *n == 0 {
                        s.per_node.remove(&node);
                    }
                }
            }
        }
        s.total -= 1;
    }
}

fn decrement_ip(s: &mut State, ip: IpAddr) {
    if let Some(n) = s.per_ip.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            s.per_ip.remove(&ip);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            tls_handshake_timeout: Duration::from_secs(1),
            max_connections: 5,
            max_connections_per_ip: 2,
            max_connections_per_node: 1,
            max_unauthenticated_connections: 3,
            unauthenticated_timeout: Duration::from_secs(1),
            http2_keepalive_interval: Duration::from_secs(1),
            http2_keepalive_timeout: Duration::from_secs(1),
            max_concurrent_streams: 1,
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn node(name: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://td/signet/node/{name}")).unwrap()
    }

    #[tokio::test]
    async fn caps_hold_and_slots_come_back() {
        let t = ConnTracker::new(limits());
        let mut a1 = t.admit(ip(1)).unwrap();
        let mut a2 = t.admit(ip(1)).unwrap();
        assert_eq!(t.admit(ip(1)).unwrap_err(), Refused::PerIp);
        let mut b1 = t.admit(ip(2)).unwrap();
        let mut c1 = t.admit(ip(3)).unwrap();
        // Handshakes are not in the unauthenticated pool; finished ones are.
        let _k = [
            a1.stay_unauthenticated().unwrap(),
            a2.stay_unauthenticated().unwrap(),
            b1.stay_unauthenticated().unwrap(),
        ];
        assert_eq!(
            c1.stay_unauthenticated().err(),
            Some(Refused::Unauthenticated)
        );
        drop(c1);
        drop(a2);
        let mut a3 = t.admit(ip(1)).unwrap();

        // Authenticating frees the per-IP place.
        let later = SystemTime::now() + Duration::from_secs(60);
        let _k = a3.authenticate(node("n"), "01".into(), later).unwrap();
        let _a4 = t.admit(ip(1)).unwrap();
        assert_eq!(
            t.counts(),
            Counts {
                total: 4,
                unauthenticated: 2,
                nodes: 1
            }
        );
        // One connection per node here: a second one is refused and freed.
        drop(b1);
        let mut b2 = t.admit(ip(2)).unwrap();
        assert_eq!(
            b2.authenticate(node("n"), "01".into(), later).err(),
            Some(Refused::PerNode)
        );
        drop(b2);
        // a1, a3 (node n), a4.
        assert_eq!(t.counts().total, 3);
        drop(a1);
        drop(a3);
        assert_eq!(t.counts().total, 1);
        assert_eq!(t.counts().nodes, 0);
    }

    #[tokio::test]
    async fn the_total_cap_counts_authenticated_connections_too() {
        let t = ConnTracker::new(limits());
        let later = SystemTime::now() + Duration::from_secs(60);
        let mut slots = Vec::new();
        let mut kills = Vec::new();
        for i in 0..5u8 {
            let mut s = t.admit(ip(i)).unwrap();
            kills.push(
                s.authenticate(node(&format!("n{i}")), "01".into(), later)
                    .unwrap(),
            );
            slots.push(s);
        }
        assert_eq!(t.admit(ip(9)).unwrap_err(), Refused::Total);
    }

    #[tokio::test]
    async fn revocation_fires_only_for_stale_serials_of_that_node() {
        let t = ConnTracker::new(limits());
        let later = SystemTime::now() + Duration::from_secs(60);
        let mut old = t.admit(ip(1)).unwrap();
        let old_kill = old.authenticate(node("n"), "old".into(), later).unwrap();
        let mut other = t.admit(ip(2)).unwrap();
        let mut other_kill = other.authenticate(node("m"), "old".into(), later).unwrap();
        assert_eq!(t.revoke(&node("n"), |serial| serial == "new"), 1);
        // Bounded only so that a broken revocation fails instead of hanging.
        tokio::time::timeout(Duration::from_secs(30), old_kill)
            .await
            .expect("the stale connection is closed");
        // Every revoked switch fired together; this one was not among them.
        assert!(
            futures::FutureExt::now_or_never(&mut other_kill).is_none(),
            "another node's connection stays open"
        );
    }
}
