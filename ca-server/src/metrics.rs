//! signet-ca's Prometheus metrics, served by `signet-metrics` when
//! `metrics_listen` is set (off by default).
//!
//! Two kinds: event metrics (issuance, refusals, latencies, open agent
//! streams), recorded by one-line hooks in the API layer and the audit
//! writer into one process-wide set; and state metrics (bundle sequence,
//! agents current or behind, authority expiry), read from the CA by a
//! collector at scrape time, so that they are never stale and no rotation
//! or store code has to remember to update them.
//!
//! The event metrics are process-wide statics because the hooks sit in code
//! that has no handle to pass them through (the audit writer thread, the
//! gRPC handlers); recording is a few atomic operations whether or not the
//! endpoint is enabled.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use signet_identity::SpiffeId;
use signet_identity::x509::IssuedCert;
use signet_metrics::{GaugeGuard, NO_LABELS, encode_gauges, seconds_until};
use tokio::sync::watch;
use tonic::{Code, Status};

use crate::ca::{Ca, ItemResult};
use crate::store::{Backend, statements_sent};

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];
type HistogramFamily = Family<Labels1, Histogram, fn() -> Histogram>;

/// How long an expired authority is still shown, seconds.
const EXPIRED_SHOWN_FOR: i64 = 86_400;

/// Latency buckets: 0.25 ms to about 4 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

/// The `api` label values of calls that issue SVIDs.
pub const ISSUING_APIS: [&str; 5] = [
    "attest_node",
    "renew_node",
    "sign_x509_svid",
    "mint_jwt_svid",
    "mint_x509_svid",
];

/// The event metrics of the process.
struct Events {
    issued: Family<Labels1, Counter>,
    refused: Family<Labels2, Counter>,
    issuance_seconds: HistogramFamily,
    connected_agents: Gauge,
    audit_commit_seconds: Histogram,
    audit_records: Counter,
}

static EVENTS: LazyLock<Events> = LazyLock::new(|| Events {
    issued: Family::default(),
    refused: Family::default(),
    issuance_seconds: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
    connected_agents: Gauge::default(),
    audit_commit_seconds: latency_histogram(),
    audit_records: Counter::default(),
});

/// The reason label of a refusal: the gRPC code it is answered with, in
/// snake case (a closed set, so the label cannot grow without bound).
pub fn reason(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Counts a request of `api` refused with `code`. `api` may be an audit
/// action name: the audit log says `sign_batch` for a batch refused whole,
/// the metrics say `sign_x509_svid` for everything about that RPC.
pub fn refused(api: &'static str, code: Code) {
    let api = match api {
        "sign_batch" => "sign_x509_svid",
        other => other,
    };
    EVENTS
        .refused
        .get_or_create(&[("api", api), ("reason", reason(code))])
        .inc();
}

/// What a successful issuing call handed out, for the issuance counter.
pub trait Issued {
    /// Records the outcome of one call of `api`.
    fn record(&self, api: &'static str);
}

impl Issued for IssuedCert {
    fn record(&self, api: &'static str) {
        EVENTS.issued.get_or_create(&[("api", api)]).inc();
    }
}

impl Issued for (SpiffeId, IssuedCert) {
    fn record(&self, api: &'static str) {
        self.1.record(api);
    }
}

/// A JWT-SVID: its ID, the token and its expiry.
impl Issued for (SpiffeId, String, std::time::SystemTime) {
    fn record(&self, api: &'static str) {
        EVENTS.issued.get_or_create(&[("api", api)]).inc();
    }
}

/// A batch: each item is issued or refused on its own.
impl Issued for Vec<ItemResult> {
    fn record(&self, api: &'static str) {
        let ok = self.iter().filter(|r| r.is_ok()).count() as u64;
        EVENTS.issued.get_or_create(&[("api", api)]).inc_by(ok);
        for e in self.iter().filter_map(|r| r.as_ref().err()) {
            refused(api, crate::api::status::code_of(e));
        }
    }
}

/// Records the outcome of one issuing call of `api` that started at
/// `started`: its latency, and what was issued or why it was refused.
///
/// # Errors
/// `result`'s, unchanged.
pub fn record<T: Issued>(
    api: &'static str,
    started: Instant,
    result: Result<T, Status>,
) -> Result<T, Status> {
    EVENTS
        .issuance_seconds
        .get_or_create(&[("api", api)])
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(v) => v.record(api),
        Err(s) => refused(api, s.code()),
    }
    result
}

/// Runs an issuing call of `api` and records it (see [`record`]).
///
/// # Errors
/// The call's, unchanged.
pub async fn timed<T: Issued>(
    api: &'static str,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let started = Instant::now();
    let result = call.await;
    record(api, started, result)
}

/// Counts an agent's open bundle stream (each agent keeps exactly one)
/// until the returned guard is dropped.
pub fn agent_connected() -> GaugeGuard {
    GaugeGuard::new(EVENTS.connected_agents.clone())
}

/// Records one group commit of the audit log.
pub fn audit_committed(elapsed: Duration, records: usize) {
    EVENTS.audit_commit_seconds.observe(elapsed.as_secs_f64());
    EVENTS.audit_records.inc_by(records as u64);
}

/// The registry served on the endpoint: the event metrics and a collector
/// over `ca`.
pub fn registry(ca: Arc<Ca>) -> Registry {
    let mut r = Registry::default();
    let e = &*EVENTS;
    // The issuing APIs are known up front; show them as 0 from the start.
    for api in ISSUING_APIS {
        let _ = e.issued.get_or_create(&[("api", api)]);
    }
    r.register(
        "signet_ca_svids_issued",
        "SVIDs issued, by API (attest_node, renew_node, sign_x509_svid, mint_jwt_svid, mint_x509_svid)",
        e.issued.clone(),
    );
    r.register(
        "signet_ca_requests_refused",
        "Requests (or batch items) refused, by API and reason (the gRPC code)",
        e.refused.clone(),
    );
    r.register(
        "signet_ca_issuance_duration_seconds",
        "Time to answer an issuing call, by API (a batch is one call)",
        e.issuance_seconds.clone(),
    );
    r.register(
        "signet_ca_connected_agents",
        "Agents with an open bundle stream",
        e.connected_agents.clone(),
    );
    r.register(
        "signet_ca_audit_commit_duration_seconds",
        "Time to commit one group of audit records durably",
        e.audit_commit_seconds.clone(),
    );
    r.register(
        "signet_ca_audit_records_committed",
        "Audit records committed by the group-commit writer",
        e.audit_records.clone(),
    );
    r.register_collector(Box::new(CaState { ca }));
    r
}

/// Binds `metrics_listen` if it is set and serves the metrics there, with
/// the `extra` collectors (e.g. federation's), until `shutdown`.
///
/// # Errors
/// The address cannot be bound.
pub async fn start(
    ca: &Arc<Ca>,
    extra: Vec<Box<dyn Collector>>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), signet_metrics::BindError> {
    let Some(addr) = ca.config().metrics_listen else {
        return Ok(());
    };
    let listener = signet_metrics::bind(addr).await?;
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(listen = %bound, "serving Prometheus metrics on /metrics");
    let mut registry = registry(ca.clone());
    for collector in extra {
        registry.register_collector(collector);
    }
    tokio::spawn(signet_metrics::serve(
        listener,
        Arc::new(registry),
        shutdown,
    ));
    Ok(())
}

/// State read from the CA on every scrape.
struct CaState {
    ca: Arc<Ca>,
}

impl std::fmt::Debug for CaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaState")
    }
}

/// Where an agent stands against the CA's current bundle.
fn bundle_standing(reported: u64, current: u64) -> &'static str {
    if reported == 0 {
        "unreported"
    } else if reported >= current {
        "current"
    } else {
        "behind"
    }
}

impl Collector for CaState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // First, so that this scrape's own queries below count in the next.
        {
            let mut statements = encoder.encode_descriptor(
                "signet_ca_store_statements",
                "Statements sent to the store by this process, by backend (on PostgreSQL every round trip: prepare, query, BEGIN, COMMIT)",
                None,
                MetricType::Counter,
            )?;
            for backend in Backend::ALL {
                ConstCounter::new(statements_sent(backend))
                    .encode(statements.encode_family(&[("backend", backend.as_str())])?)?;
            }
        }
        let now = self.ca.now();
        let current = self.ca.bundle().sequence();
        encode_gauges(
            &mut encoder,
            "signet_ca_bundle_sequence",
            "Sequence number of the trust bundle the CA serves.",
            [(NO_LABELS, current as f64)],
        )?;
        match self.ca.store().nodes() {
            Ok(nodes) => {
                let mut counts = [("current", 0u64), ("behind", 0), ("unreported", 0)];
                for n in &nodes {
                    let standing = bundle_standing(n.bundle_sequence, current);
                    if let Some(c) = counts.iter_mut().find(|(s, _)| *s == standing) {
                        c.1 += 1;
                    }
                }
                encode_gauges(
                    &mut encoder,
                    "signet_ca_agents",
                    "Attested agents by the bundle they report serving: current, behind, or unreported.",
                    counts.map(|(s, n)| ([("bundle", s)], n as f64)),
                )?;
            }
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the nodes"),
        }
        let mut expiry: Vec<([(&'static str, String); 3], f64)> = Vec::new();
        if self.ca.config().upstream_ca.is_some() {
            let parent = self.ca.signing().parent.clone();
            expiry.push((
                [
                    ("id", crate::ca::authorities::cert_id(parent.cert())),
                    ("kind", "upstream".to_owned()),
                    ("state", "active".to_owned()),
                ],
                seconds_until(parent.not_after(), now),
            ));
        }
        match self.ca.store().authorities(None) {
            Ok(rows) => expiry.extend(rows.into_iter().filter_map(|a| {
                let left = a.not_after - crate::ca::time::unix(now);
                // Every rotation leaves a row behind; one expired for more
                // than a day tells nothing, and would grow the series forever.
                if left < -EXPIRED_SHOWN_FOR {
                    return None;
                }
                Some((
                    [
                        ("id", a.id),
                        ("kind", a.kind.as_str().to_owned()),
                        ("state", a.state.as_str().to_owned()),
                    ],
                    left as f64,
                ))
            })),
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the authorities"),
        }
        encode_gauges(
            &mut encoder,
            "signet_ca_authority_expiry_seconds",
            "Seconds until each signing or trust authority expires (negative once expired).",
            expiry,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_are_classified_against_the_current_bundle() {
        assert_eq!(bundle_standing(0, 3), "unreported");
        assert_eq!(bundle_standing(2, 3), "behind");
        assert_eq!(bundle_standing(3, 3), "current");
    }

    #[test]
    fn a_batch_refused_whole_counts_under_its_rpc() {
        let label = [("api", "sign_x509_svid"), ("reason", "data_loss")];
        let before = EVENTS.refused.get_or_create(&label).get();
        refused("sign_batch", Code::DataLoss);
        assert_eq!(EVENTS.refused.get_or_create(&label).get(), before + 1);
    }

    #[test]
    fn reasons_are_snake_case_codes() {
        assert_eq!(reason(Code::PermissionDenied), "permission_denied");
        assert_eq!(reason(Code::InvalidArgument), "invalid_argument");
    }

    #[test]
    fn a_batch_counts_each_item() {
        let before_issued = EVENTS.issued.get_or_create(&[("api", "test_batch")]).get();
        let results: Vec<ItemResult> = vec![
            Err(crate::ca::CaError::PermissionDenied("no".into())),
            Err(crate::ca::CaError::InvalidArgument("bad csr".into())),
        ];
        let out = record("test_batch", Instant::now(), Ok(results));
        assert!(out.is_ok());
        assert_eq!(
            EVENTS.issued.get_or_create(&[("api", "test_batch")]).get(),
            before_issued
        );
        assert_eq!(
            EVENTS
                .refused
                .get_or_create(&[("api", "test_batch"), ("reason", "permission_denied")])
                .get(),
            1
        );
        let err = record::<IssuedCert>(
            "test_batch",
            Instant::now(),
            Err(Status::unauthenticated("x")),
        );
        assert!(err.is_err());
        assert_eq!(
            EVENTS
                .refused
                .get_or_create(&[("api", "test_batch"), ("reason", "unauthenticated")])
                .get(),
            1
        );
    }
}
