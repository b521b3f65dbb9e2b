//! signet-agent's Prometheus metrics, served by `signet-metrics` when
//! `metrics_listen` is set (off by default).
//!
//! Event metrics (renewal and attestation failures, open streams, the last
//! exchange with the CA) are recorded by one-line hooks into one
//! process-wide set; what the agent holds (SVIDs, earliest expiry, bundle
//! sequence) is read from the current snapshot at scrape time, so it is
//! never stale.

use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context as TaskContext, Poll};
use std::time::SystemTime;

use futures::Stream;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use signet_metrics::{GaugeGuard, NO_LABELS, encode_gauges, seconds_until, unix_seconds};
use std::sync::atomic::AtomicU64;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::attest::AttestError;
use crate::state::SnapshotRx;

type Labels1 = [(&'static str, &'static str); 1];

/// The event metrics of the process.
struct Events {
    renewal_failures: Family<Labels1, Counter>,
    attestation_failures: Family<[(&'static str, String); 2], Counter>,
    streams_open: Family<Labels1, Gauge>,
    audit_write_failures: Counter,
    last_sync: Gauge<f64, AtomicU64>,
    ca_failovers: Family<Labels1, Counter>,
}

static EVENTS: LazyLock<Events> = LazyLock::new(|| Events {
    renewal_failures: Family::default(),
    attestation_failures: Family::default(),
    streams_open: Family::default(),
    audit_write_failures: Counter::default(),
    last_sync: Gauge::default(),
    ca_failovers: Family::default(),
});

/// Counts a move to another CA replica: `reason` is `drain` (the replica
/// said it drains), `unreachable` (it could not be reached) or
/// `unavailable` (it answered UNAVAILABLE).
pub fn ca_failover(reason: &'static str) {
    EVENTS
        .ca_failovers
        .get_or_create(&[("reason", reason)])
        .inc();
}

/// Counts a failed renewal: `kind` is `node` (the node SVID) or `workload`
/// (a batch call that failed, or one SVID the CA refused).
pub fn renewal_failed(kind: &'static str) {
    EVENTS
        .renewal_failures
        .get_or_create(&[("kind", kind)])
        .inc();
}

/// Records a successful exchange with the CA (a stream message applied, a
/// call answered).
pub fn synced() {
    EVENTS.last_sync.set(unix_seconds(SystemTime::now()));
}

/// The reason label of an attestation failure: the error's variant, in
/// snake case (a closed set).
fn attest_reason(error: &AttestError) -> String {
    let debug = format!("{error:?}");
    let variant = debug
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or_default();
    let mut out = String::with_capacity(variant.len() + 4);
    for (i, c) in variant.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Counts a caller of `api` (`workload_api` or `sds`) that could not be attested.
pub fn attestation_failed(api: &'static str, error: &AttestError) {
    EVENTS
        .attestation_failures
        .get_or_create(&[("api", api.to_owned()), ("reason", attest_reason(error))])
        .inc();
}

/// Counts an audit record that could not be queued or written.
pub fn audit_write_failed() {
    EVENTS.audit_write_failures.inc();
}

/// Audit records lost so far (for tests).
#[must_use]
pub fn audit_write_failures() -> u64 {
    EVENTS.audit_write_failures.get()
}

/// A response stream counted in `signet_agent_streams_open` while it lives.
struct Counted<S> {
    inner: S,
    _open: GaugeGuard,
}

impl<S: Stream + Unpin> Stream for Counted<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<S::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// `stream`, counted as an open stream of `api` until it is dropped.
pub fn counted<T: 'static>(
    api: &'static str,
    stream: Pin<Box<dyn Stream<Item = T> + Send + 'static>>,
) -> Pin<Box<dyn Stream<Item = T> + Send + 'static>> {
    let open = GaugeGuard::new(EVENTS.streams_open.get_or_create_owned(&[("api", api)]));
    Box::pin(Counted {
        inner: stream,
        _open: open,
    })
}

/// The registry served on the endpoint: the event metrics and a collector
/// over the snapshots.
pub fn registry(snapshots: SnapshotRx) -> Registry {
    let mut r = Registry::default();
    let e = &*EVENTS;
    // Both label values are known up front; show them as 0 from the start.
    for api in ["workload_api", "sds"] {
        let _ = e.streams_open.get_or_create(&[("api", api)]);
    }
    for kind in ["node", "workload"] {
        let _ = e.renewal_failures.get_or_create(&[("kind", kind)]);
    }
    r.register(
        "signet_agent_renewal_failures",
        "Failed renewals: kind=node (the node SVID) or workload (a signing call, or one SVID refused)",
        e.renewal_failures.clone(),
    );
    r.register(
        "signet_agent_attestation_failures",
        "Callers that could not be attested, by API (workload_api, sds) and reason",
        e.attestation_failures.clone(),
    );
    r.register(
        "signet_agent_audit_write_failures",
        "Audit records of refused workloads that could not be queued or written",
        e.audit_write_failures.clone(),
    );
    r.register(
        "signet_agent_streams_open",
        "Open Workload API and SDS response streams, by API",
        e.streams_open.clone(),
    );
    for reason in ["drain", "unreachable", "unavailable"] {
        let _ = e.ca_failovers.get_or_create(&[("reason", reason)]);
    }
    r.register(
        "signet_agent_ca_failovers",
        "Moves to another CA replica, by reason (drain, unreachable, unavailable)",
        e.ca_failovers.clone(),
    );
    r.register(
        "signet_agent_last_sync_timestamp_seconds",
        "Unix time of the last successful exchange with the CA (0: none yet)",
        e.last_sync.clone(),
    );
    r.register_collector(Box::new(Held { snapshots }));
    r
}

/// Binds `metrics_listen` if it is set. Done first thing, so that a taken
/// port stops the agent before it attests (and spends its join token).
///
/// # Errors
/// The address cannot be bound.
pub async fn bind(
    listen: Option<std::net::SocketAddr>,
) -> Result<Option<TcpListener>, signet_metrics::BindError> {
    let Some(addr) = listen else {
        return Ok(None);
    };
    Ok(Some(signet_metrics::bind(addr).await?))
}

/// Serves the metrics on `listener` (if bound) until `shutdown`.
pub fn serve(
    listener: Option<TcpListener>,
    snapshots: SnapshotRx,
    shutdown: watch::Receiver<bool>,
) {
    let Some(listener) = listener else {
        return;
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listen = %addr, "serving Prometheus metrics on /metrics");
    }
    tokio::spawn(signet_metrics::serve(
        listener,
        Arc::new(registry(snapshots)),
        shutdown,
    ));
}

/// What the agent holds, read from the current snapshot on every scrape.
#[derive(Debug)]
struct Held {
    snapshots: SnapshotRx,
}

impl Collector for Held {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.snapshots.borrow().clone();
        let now = SystemTime::now();
        encode_gauges(
            &mut encoder,
            "signet_agent_svids",
            "X.509-SVIDs held for workloads.",
            [(NO_LABELS, snapshot.svids.len() as f64)],
        )?;
        encode_gauges(
            &mut encoder,
            "signet_agent_entries",
            "Registration entries this node is authorized for.",
            [(NO_LABELS, snapshot.entries.len() as f64)],
        )?;
        let earliest = snapshot.svids.values().map(|s| s.not_after).min();
        encode_gauges(
            &mut encoder,
            "signet_agent_svid_earliest_expiry_seconds",
            "Seconds until the first held X.509-SVID expires (absent while none is held).",
            earliest.map(|t| (NO_LABELS, seconds_until(t, now))),
        )?;
        encode_gauges(
            &mut encoder,
            "signet_agent_federated_bundles",
            "Bundles of federated trust domains the agent holds for workloads whose entries federate with them.",
            [(NO_LABELS, snapshot.federated.len() as f64)],
        )?;
        encode_gauges(
            &mut encoder,
            "signet_agent_svids_pending_reissue",
            "SVIDs (workload and node) that chain through a tainted authority and wait for their early re-issue.",
            [(NO_LABELS, snapshot.reissue_pending as f64)],
        )?;
        encode_gauges(
            &mut encoder,
            "signet_agent_bundle_sequence",
            "Sequence number of the trust bundle served to workloads (0: none yet).",
            [(
                NO_LABELS,
                snapshot.bundle.as_ref().map_or(0, |b| b.sequence()) as f64,
            )],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attestation_reasons_are_snake_case_variants() {
        assert_eq!(attest_reason(&AttestError::NoCredentials), "no_credentials");
        assert_eq!(
            attest_reason(&AttestError::ProcessChanged(7)),
            "process_changed"
        );
        assert_eq!(
            attest_reason(&AttestError::Proc {
                pid: 1,
                reason: "gone".into()
            }),
            "proc"
        );
    }

    #[tokio::test]
    async fn counted_streams_are_open_until_dropped() {
        use futures::StreamExt;
        let gauge = EVENTS.streams_open.get_or_create_owned(&[("api", "test")]);
        let mut s = counted("test", Box::pin(futures::stream::iter([1, 2])));
        assert_eq!(gauge.get(), 1);
        assert_eq!(s.next().await, Some(1));
        drop(s);
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn the_snapshot_is_read_at_scrape_time() {
        let (tx, rx) = watch::channel(Arc::new(crate::state::Snapshot::default()));
        let registry = registry(rx);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("signet_agent_svids 0.0\n"), "{text}");
        assert!(
            text.contains("signet_agent_federated_bundles 0.0\n"),
            "{text}"
        );
        assert!(
            text.contains("signet_agent_svids_pending_reissue 0.0\n"),
            "{text}"
        );
        // What a later scrape reads comes from the snapshot then current.
        let partner = signet_identity::TrustDomain::new("partner.test").unwrap();
        tx.send_replace(Arc::new(crate::state::Snapshot {
            federated: [(
                partner.clone(),
                Arc::new(signet_identity::TrustBundle::new(partner)),
            )]
            .into(),
            reissue_pending: 3,
            ..crate::state::Snapshot::default()
        }));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("signet_agent_federated_bundles 1.0\n"),
            "{text}"
        );
        assert!(
            text.contains("signet_agent_svids_pending_reissue 3.0\n"),
            "{text}"
        );
        assert!(
            !text.contains("\nsignet_agent_svid_earliest_expiry_seconds "),
            "{text}"
        );
        drop(tx);
    }
}
