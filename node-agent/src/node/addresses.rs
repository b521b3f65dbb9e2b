//! The CA's addresses: one or more `host:port` entries, each of which may be
//! a name that resolves to several replicas. Every connection the agent
//! makes to the CA asks [`CaAddresses::candidates`] where to go, in order,
//! and tries them until one answers.
//!
//! Spreading: a fleet configured with the same list must not all land on
//! the first replica. The resolved addresses are put in one deterministic
//! order (config order, each name's addresses sorted), and each node starts
//! at the index its own name hashes to. It stays on the replica that
//! answered last (connections are long-lived; moving them back and forth
//! would only churn) until that one fails or drains.
//!
//! Draining: a replica that ended a stream with the drain status is tried
//! last for [`DRAIN_AVOID`]: it stops accepting connections when it drains,
//! but a name may still resolve to it, and a restarted replica is welcome
//! back afterwards. A replica that answers UNAVAILABLE on a working
//! connection (e.g. its database is away) is tried last for
//! [`UNAVAILABLE_AVOID`]; when every replica says so, the agent still
//! tries them all, in the same order, with its usual backoff.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

/// Most `host:port` entries in `ca_address`.
pub const MAX_CONFIGURED: usize = 16;
/// Most addresses one name may contribute.
pub const MAX_PER_NAME: usize = 16;
/// Most addresses in all.
pub const MAX_ADDRESSES: usize = 64;
/// How long resolved addresses are used before names are resolved again.
pub const REFRESH: Duration = Duration::from_secs(30);
/// How long a draining replica is tried only after all others.
pub const DRAIN_AVOID: Duration = Duration::from_secs(60);
/// How long a replica that answered UNAVAILABLE is tried only after all others.
pub const UNAVAILABLE_AVOID: Duration = Duration::from_secs(10);

/// Why the CA's addresses cannot be had.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    /// No name resolved to any address (and none is known from before).
    #[error("no CA address: {0}")]
    Unresolved(String),
}

impl From<AddressError> for std::io::Error {
    fn from(e: AddressError) -> Self {
        std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string())
    }
}

/// Resolves `host:port` to socket addresses (DNS in production; a table in
/// tests).
pub trait Resolve: Send + Sync + 'static {
    /// The addresses `host_port` stands for.
    fn resolve(&self, host_port: &str) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>>;
}

/// The system resolver (getaddrinfo through tokio).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host_port: &str) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
        let host_port = host_port.to_owned();
        Box::pin(async move { Ok(tokio::net::lookup_host(host_port).await?.collect()) })
    }
}

/// Why the agent moved to another replica (the `reason` of the failover counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverReason {
    /// The replica said it is draining.
    Drain,
    /// The replica could not be reached (connect, TLS) or went away.
    Unreachable,
    /// The replica answered UNAVAILABLE.
    Unavailable,
}

impl FailoverReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drain => "drain",
            Self::Unreachable => "unreachable",
            Self::Unavailable => "unavailable",
        }
    }
}

#[derive(Default)]
struct State {
    /// Per configured entry, what it resolved to last (kept when a later
    /// resolution fails).
    by_entry: Vec<Vec<SocketAddr>>,
    resolved_at: Option<Instant>,
    /// Resolve again at the next connection (after a failure).
    stale: bool,
    /// The replica the last connection went to.
    current: Option<SocketAddr>,
    /// Replicas tried last until a time: draining, or answering UNAVAILABLE.
    avoid: HashMap<SocketAddr, (Instant, FailoverReason)>,
}

impl State {
    /// Every address, deduplicated, in the fleet-wide order.
    fn all(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for a in self.by_entry.iter().flatten() {
            if !out.contains(a) && out.len() < MAX_ADDRESSES {
                out.push(*a);
            }
        }
        out
    }
}

/// The CA's addresses, shared by every channel of one agent.
pub struct CaAddresses {
    configured: Vec<String>,
    spread: u64,
    resolver: Arc<dyn Resolve>,
    state: Mutex<State>,
}

impl std::fmt::Debug for CaAddresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaAddresses")
            .field("configured", &self.configured)
            .finish_non_exhaustive()
    }
}

/// A stable number from `key` (the node's name or ID): the same on every
/// start and every machine, so a fleet spreads the same way each time.
pub fn spread_of(key: &str) -> u64 {
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(b)
}

/// What spreads a node that has not attested yet (it has no ID): the
/// Kubernetes node name when set (`NODE_NAME`), else the host name.
pub fn local_spread_key() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_default()
}

impl CaAddresses {
    /// `configured` (checked `host:port` entries), spread by `spread_key`.
    pub fn new(configured: Vec<String>, spread_key: &str, resolver: Arc<dyn Resolve>) -> Arc<Self> {
        Arc::new(Self {
            spread: spread_of(spread_key),
            state: Mutex::new(State {
                by_entry: vec![Vec::new(); configured.len()],
                ..State::default()
            }),
            configured,
            resolver,
        })
    }

    /// With the system resolver.
    pub fn system(configured: Vec<String>, spread_key: &str) -> Arc<Self> {
        Self::new(configured, spread_key, Arc::new(SystemResolver))
    }

    /// The configured entries.
    pub fn configured(&self) -> &[String] {
        &self.configured
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Resolves every entry again; an entry that fails keeps what it had.
    async fn refresh(&self) {
        let mut fresh = Vec::with_capacity(self.configured.len());
        for entry in &self.configured {
            match self.resolver.resolve(entry).await {
                Ok(mut addrs) => {
                    // DNS servers rotate their answers; the fleet-wide
                    // order must not depend on that.
                    addrs.sort();
                    addrs.dedup();
                    if addrs.len() > MAX_PER_NAME {
                        tracing::warn!(address = %entry, resolved = addrs.len(), kept = MAX_PER_NAME, "the CA name resolves to too many addresses; using the first ones");
                        addrs.truncate(MAX_PER_NAME);
                    }
                    fresh.push(Some(addrs));
                }
                Err(e) => {
                    tracing::warn!(address = %entry, error = %e, "could not resolve the CA address");
                    fresh.push(None);
                }
            }
        }
        let mut st = self.lock();
        for (slot, new) in st.by_entry.iter_mut().zip(fresh) {
            if let Some(new) = new {
                *slot = new;
            }
        }
        st.resolved_at = Some(Instant::now());
        st.stale = false;
    }

    /// Where to connect, in order: the replica used last (unless it
    /// drains), else the node's own starting point, then round the list;
    /// draining replicas last. Names are resolved again when the last
    /// resolution is older than [`REFRESH`] or a connection failed since.
    ///
    /// # Errors
    /// Nothing resolved, now or before.
    pub async fn candidates(&self) -> Result<Vec<SocketAddr>, AddressError> {
        let due = {
            let st = self.lock();
            st.stale || st.resolved_at.is_none_or(|t| t.elapsed() >= REFRESH)
        };
        if due {
            self.refresh().await;
        }
        let now = Instant::now();
        let mut st = self.lock();
        st.avoid.retain(|_, (until, _)| *until > now);
        let all = st.all();
        if all.is_empty() {
            return Err(AddressError::Unresolved(self.configured.join(",")));
        }
        let start = st
            .current
            .and_then(|c| all.iter().position(|a| *a == c))
            .unwrap_or_else(|| (self.spread % all.len() as u64) as usize);
        let (mut usable, mut last) = (Vec::new(), Vec::new());
        for i in 0..all.len() {
            let a = all[(start + i) % all.len()];
            if st.avoid.contains_key(&a) {
                last.push(a);
            } else {
                usable.push(a);
            }
        }
        usable.extend(last);
        Ok(usable)
    }

    /// A connection to `addr` succeeded. Returns why the agent moved, when
    /// it moved from another replica.
    pub fn connected(&self, addr: SocketAddr) -> Option<FailoverReason> {
        let mut st = self.lock();
        let previous = st.current.replace(addr);
        match previous {
            Some(p) if p != addr => Some(
                st.avoid
                    .get(&p)
                    .map_or(FailoverReason::Unreachable, |(_, why)| *why),
            ),
            _ => None,
        }
    }

    /// A connection to `addr` failed: names are resolved again before the
    /// next attempt (the replica may have moved).
    pub fn failed(&self, addr: SocketAddr) {
        let _ = addr;
        self.lock().stale = true;
    }

    /// `addr` drains: try it last for [`DRAIN_AVOID`].
    pub fn draining(&self, addr: SocketAddr) {
        self.avoid(addr, FailoverReason::Drain, DRAIN_AVOID);
    }

    /// `addr` answered UNAVAILABLE: try it last for [`UNAVAILABLE_AVOID`].
    pub fn unavailable(&self, addr: SocketAddr) {
        self.avoid(addr, FailoverReason::Unavailable, UNAVAILABLE_AVOID);
    }

    fn avoid(&self, addr: SocketAddr, why: FailoverReason, period: Duration) {
        let mut st = self.lock();
        st.avoid.insert(addr, (Instant::now() + period, why));
        st.stale = true;
    }
}

/// Parses the `ca_address` forms: a comma-separated list (flag and
/// environment variable), trimmed, without empty items.
pub fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `ca_address` as given: one string (possibly comma-separated) or, in the
/// TOML file, an array of strings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AddressList(pub Vec<String>);

impl std::str::FromStr for AddressList {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(split_list(s)))
    }
}

impl<'de> serde::Deserialize<'de> for AddressList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Form {
            One(String),
            Many(Vec<String>),
        }
        Ok(match Form::deserialize(d)? {
            Form::One(s) => Self(split_list(&s)),
            Form::Many(v) => Self(v.iter().flat_map(|s| split_list(s)).collect()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver answering from a table that the test can change.
    #[derive(Default)]
    struct Table(
        Mutex<HashMap<String, std::io::Result<Vec<SocketAddr>>>>,
        Mutex<usize>,
    );

    impl Table {
        fn set(&self, name: &str, addrs: &[&str]) {
            self.0.lock().unwrap().insert(
                name.into(),
                Ok(addrs.iter().map(|a| a.parse().unwrap()).collect()),
            );
        }
        fn fail(&self, name: &str) {
            self.0
                .lock()
                .unwrap()
                .insert(name.into(), Err(std::io::Error::other("NXDOMAIN")));
        }
        fn lookups(&self) -> usize {
            *self.1.lock().unwrap()
        }
    }

    impl Resolve for Arc<Table> {
        fn resolve(&self, host_port: &str) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
            *self.1.lock().unwrap() += 1;
            let r = match self.0.lock().unwrap().get(host_port) {
                Some(Ok(v)) => Ok(v.clone()),
                Some(Err(e)) => Err(std::io::Error::other(e.to_string())),
                None => Err(std::io::Error::other("unknown name")),
            };
            Box::pin(async move { r })
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn addrs(list: &[&str], key: &str, table: &Arc<Table>) -> Arc<CaAddresses> {
        CaAddresses::new(
            list.iter().map(|s| (*s).to_owned()).collect(),
            key,
            Arc::new(table.clone()),
        )
    }

    #[test]
    fn the_list_forms_parse_alike() {
        let flag: AddressList = " a:1, b:2,,c:3 ".parse().unwrap();
        assert_eq!(flag.0, ["a:1", "b:2", "c:3"]);
        #[derive(serde::Deserialize)]
        struct F {
            ca_address: AddressList,
        }
        let one: F = toml::from_str(r#"ca_address = "a:1,b:2""#).unwrap();
        assert_eq!(one.ca_address.0, ["a:1", "b:2"]);
        let many: F = toml::from_str(r#"ca_address = ["a:1", "b:2"]"#).unwrap();
        assert_eq!(many.ca_address.0, ["a:1", "b:2"]);
        assert!(toml::from_str::<F>("ca_address = 5").is_err());
    }

    #[tokio::test]
    async fn a_name_with_several_addresses_is_ordered_the_same_whatever_dns_returns() {
        let table = Arc::new(Table::default());
        table.set(
            "ca:8443",
            &["10.0.0.3:8443", "10.0.0.1:8443", "10.0.0.2:8443"],
        );
        let a = addrs(&["ca:8443"], "node-a", &table)
            .candidates()
            .await
            .unwrap();
        table.set(
            "ca:8443",
            &["10.0.0.2:8443", "10.0.0.3:8443", "10.0.0.1:8443"],
        );
        let b = addrs(&["ca:8443"], "node-a", &table)
            .candidates()
            .await
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
        // Each address once: a rotation of the sorted list.
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            [
                sa("10.0.0.1:8443"),
                sa("10.0.0.2:8443"),
                sa("10.0.0.3:8443")
            ]
        );
        let start = sorted.iter().position(|x| *x == a[0]).unwrap();
        let rotated: Vec<_> = (0..3).map(|i| sorted[(start + i) % 3]).collect();
        assert_eq!(a, rotated);
    }

    #[tokio::test]
    async fn a_fleet_spreads_over_the_replicas() {
        let table = Arc::new(Table::default());
        table.set("a:1", &["127.0.0.1:1"]);
        table.set("b:2", &["127.0.0.1:2"]);
        table.set("c:3", &["127.0.0.1:3"]);
        let mut first = HashMap::new();
        for n in 0..300 {
            let c = addrs(
                &["a:1", "b:2", "c:3"],
                &format!("spiffe://td/signet/node/n{n}"),
                &table,
            )
            .candidates()
            .await
            .unwrap();
            *first.entry(c[0]).or_insert(0) += 1;
        }
        assert_eq!(first.len(), 3, "{first:?}");
        // A hash spreads 300 nodes over 3 replicas: none gets fewer than half
        // its share (the chance of that with SHA-256 is far below 1e-9).
        for (addr, n) in &first {
            assert!(*n >= 50, "{addr}: {n} of 300: {first:?}");
        }
        // The same node starts at the same replica every time.
        let x = addrs(&["a:1", "b:2", "c:3"], "n7", &table)
            .candidates()
            .await
            .unwrap();
        let y = addrs(&["a:1", "b:2", "c:3"], "n7", &table)
            .candidates()
            .await
            .unwrap();
        assert_eq!(x, y);
    }

    #[tokio::test]
    async fn the_agent_stays_where_it_connected_and_moves_on_drain() {
        let table = Arc::new(Table::default());
        table.set("a:1", &["127.0.0.1:1"]);
        table.set("b:2", &["127.0.0.1:2"]);
        let list = addrs(&["a:1", "b:2"], "n", &table);
        let first = list.candidates().await.unwrap();
        assert_eq!(first.len(), 2);
        // The first failed, the second answered: stay on the second.
        list.failed(first[0]);
        assert_eq!(
            list.connected(first[1]),
            None,
            "the first connection is no failover"
        );
        assert_eq!(list.candidates().await.unwrap(), [first[1], first[0]]);
        // The second drains: the first comes first, the draining one last.
        list.draining(first[1]);
        assert_eq!(list.candidates().await.unwrap(), [first[0], first[1]]);
        assert_eq!(list.connected(first[0]), Some(FailoverReason::Drain));
        // Back again after a plain failure of the first.
        assert_eq!(list.connected(first[1]), Some(FailoverReason::Unreachable));
        // The first answers UNAVAILABLE: both avoided now, tried in turn.
        list.unavailable(first[0]);
        assert_eq!(list.candidates().await.unwrap(), [first[1], first[0]]);
        list.connected(first[0]);
        list.unavailable(first[0]);
        assert_eq!(list.connected(first[1]), Some(FailoverReason::Unavailable));
    }

    #[tokio::test]
    async fn names_are_resolved_again_after_a_failure_and_keep_old_answers_on_error() {
        let table = Arc::new(Table::default());
        table.set("ca:1", &["127.0.0.1:1"]);
        let list = addrs(&["ca:1"], "n", &table);
        assert_eq!(list.candidates().await.unwrap(), [sa("127.0.0.1:1")]);
        assert_eq!(table.lookups(), 1);
        // Fresh enough: no lookup.
        list.candidates().await.unwrap();
        assert_eq!(table.lookups(), 1);
        // The replica moved; a failed connection makes the agent look again.
        table.set("ca:1", &["127.0.0.2:1"]);
        list.failed(sa("127.0.0.1:1"));
        assert_eq!(list.candidates().await.unwrap(), [sa("127.0.0.2:1")]);
        assert_eq!(table.lookups(), 2);
        // DNS down: the last answer stays in use.
        table.fail("ca:1");
        list.failed(sa("127.0.0.2:1"));
        assert_eq!(list.candidates().await.unwrap(), [sa("127.0.0.2:1")]);
        // Never resolved at all: a clear error.
        let none = addrs(&["nowhere:1"], "n", &table);
        let err = none.candidates().await.unwrap_err();
        assert!(err.to_string().contains("nowhere:1"), "{err}");
    }

    #[tokio::test]
    async fn the_count_is_bounded() {
        let table = Arc::new(Table::default());
        let many: Vec<String> = (1..=40).map(|i| format!("127.0.0.1:{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        table.set("big:1", &refs);
        let list = addrs(&["big:1"], "n", &table);
        assert_eq!(list.candidates().await.unwrap().len(), MAX_PER_NAME);
        // Duplicates across entries count once.
        table.set("a:1", &["127.0.0.1:1"]);
        let dup = addrs(&["a:1", "a:1", "big:1"], "n", &table);
        assert_eq!(dup.candidates().await.unwrap().len(), MAX_PER_NAME);
    }
}
