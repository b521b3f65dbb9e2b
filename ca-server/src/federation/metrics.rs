//! Federation state for the Prometheus endpoint, read at scrape time: per
//! relationship, the sequence of the last good bundle, when it was last
//! fetched, and how many fetches in a row have failed; and whether this
//! replica is the one that fetches, with how many fetches it made.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use signet_metrics::{NO_LABELS, encode_gauges};

use super::Federations;

/// The collector; register it beside the CA's.
pub struct FederationState(pub Federations);

impl std::fmt::Debug for FederationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FederationState")
    }
}

impl Collector for FederationState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_gauges(
            &mut encoder,
            "signet_ca_federation_poller",
            "1 when this replica fetches the federated bundles (one replica of a trust domain does), else 0.",
            [(NO_LABELS, if self.0.is_poller() { 1.0 } else { 0.0 })],
        )?;
        let fetches = ConstCounter::new(self.0.fetches());
        fetches.encode(encoder.encode_descriptor(
            "signet_ca_federation_fetches",
            "Federated bundle fetches this replica started.",
            None,
            fetches.metric_type(),
        )?)?;
        let views = self.0.list();
        let label = |v: &super::View| [("trust_domain", v.relationship.trust_domain.to_string())];
        encode_gauges(
            &mut encoder,
            "signet_ca_federated_bundle_sequence",
            "Sequence of the last good bundle of each federated trust domain (0: none yet).",
            views.iter().map(|v| {
                (
                    label(v),
                    v.bundle.as_ref().map_or(0.0, |b| b.sequence() as f64),
                )
            }),
        )?;
        encode_gauges(
            &mut encoder,
            "signet_ca_federation_last_success_timestamp_seconds",
            "When each federated bundle was last fetched successfully (Unix seconds; 0: never).",
            views
                .iter()
                .map(|v| (label(v), v.status.last_success_at as f64)),
        )?;
        encode_gauges(
            &mut encoder,
            "signet_ca_federation_consecutive_failures",
            "Failed fetches in a row of each federated bundle; the last good bundle is kept meanwhile.",
            views
                .iter()
                .map(|v| (label(v), f64::from(v.status.consecutive_failures))),
        )
    }
}
