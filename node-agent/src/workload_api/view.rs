//! What a caller receives, computed from a snapshot: pure functions, so the
//! streams only decide when to send.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use signet_identity::{SpiffeId, TrustBundle};
use signet_proto::workload::{JwtBundlesResponse, X509BundlesResponse, X509svid, X509svidResponse};
use tonic::Status;

use super::NO_IDENTITY;
use super::stream::Decision;
use crate::state::{Entry, Selector, Snapshot};

/// The X.509 authorities of a bundle as the Workload API carries them: DER
/// certificates one after another.
fn x509_der(bundle: &TrustBundle) -> Vec<u8> {
    bundle
        .x509_authorities()
        .iter()
        .flat_map(|c| c.iter().copied())
        .collect()
}

/// A JWK Set of the bundle's JWT authorities alone: the Workload API
/// (section 6.2.2) forbids keys of other uses in a JWT bundle.
fn jwt_jwks(bundle: &TrustBundle) -> Vec<u8> {
    let mut only_jwt = TrustBundle::new(bundle.trust_domain().clone());
    for authority in bundle.jwt_authorities() {
        // Cannot fail: the key ids were already unique in `bundle`.
        let _ = only_jwt.add_jwt_authority(authority.clone());
    }
    only_jwt.set_sequence(bundle.sequence());
    only_jwt.set_refresh_hint(bundle.refresh_hint());
    only_jwt.to_jwks().into_bytes()
}

/// The bundles a caller receives (own, and the federated ones its entries
/// federate with), keyed by the trust domain's SPIFFE ID
/// (`spiffe://example.org`) as the standard's proto says.
fn keyed_bundles(
    snapshot: &Snapshot,
    selectors: &[Selector],
    encode: fn(&TrustBundle) -> Vec<u8>,
) -> HashMap<String, Vec<u8>> {
    snapshot
        .bundles_for(selectors)
        .iter()
        .map(|b| (b.trust_domain().id_string(), encode(b)))
        .collect()
}

/// FetchX509Bundles: the caller's bundles and the own trust domain's CRLs,
/// or nothing yet while the agent has no bundle.
pub(super) fn x509_bundles(
    snapshot: &Snapshot,
    selectors: &[Selector],
) -> Decision<X509BundlesResponse> {
    if snapshot.bundle.is_none() {
        return Decision::Wait(None);
    }
    Decision::Send(
        X509BundlesResponse {
            crl: snapshot.crls.to_vec(),
            bundles: keyed_bundles(snapshot, selectors, x509_der),
        },
        None,
    )
}

/// FetchJWTBundles: the caller's bundles as JWK Sets, or nothing yet while
/// the agent has none.
pub(super) fn jwt_bundles(
    snapshot: &Snapshot,
    selectors: &[Selector],
) -> Decision<JwtBundlesResponse> {
    if snapshot.bundle.is_none() {
        return Decision::Wait(None);
    }
    Decision::Send(
        JwtBundlesResponse {
            bundles: keyed_bundles(snapshot, selectors, jwt_jwks),
        },
        None,
    )
}

/// The entries FetchJWTSVID mints tokens for: the one with `wanted`'s SPIFFE
/// ID, or one per distinct SPIFFE ID the caller holds, in entry order.
pub(super) fn jwt_entries(
    snapshot: &Snapshot,
    selectors: &[Selector],
    wanted: Option<&SpiffeId>,
) -> Vec<Arc<Entry>> {
    let mut chosen: Vec<Arc<Entry>> = Vec::new();
    for entry in snapshot.entries_for(selectors) {
        let is_new = !chosen.iter().any(|c| c.spiffe_id == entry.spiffe_id);
        if is_new && wanted.is_none_or(|w| *w == entry.spiffe_id) {
            chosen.push(entry);
        }
    }
    chosen
}

/// FetchX509SVID for one caller. Remembers how long what it last sent stays
/// valid, to tell a pause in renewal from SVIDs that have run out.
pub(super) struct X509SvidView {
    selectors: Vec<Selector>,
    /// The latest notAfter among the SVIDs last sent.
    served_until: Option<SystemTime>,
}

impl X509SvidView {
    pub(super) fn new(selectors: Vec<Selector>) -> Self {
        Self {
            selectors,
            served_until: None,
        }
    }

    pub(super) fn evaluate(
        &mut self,
        snapshot: &Snapshot,
        now: SystemTime,
    ) -> Decision<X509svidResponse> {
        // No bundle: the agent is still starting; the caller waits for it
        // rather than being told it has no identity.
        if snapshot.bundle.is_none() {
            return Decision::Wait(None);
        }
        if !snapshot.entries.iter().any(|e| e.matches(&self.selectors)) {
            // Removing the last entry redacts everything (section 5.2.1).
            return Decision::Refuse(Status::permission_denied(NO_IDENTITY));
        }
        let svids = snapshot.svids_for(&self.selectors, now);
        let mut response = X509svidResponse {
            crl: snapshot.crls.to_vec(),
            ..X509svidResponse::default()
        };
        for svid in &svids {
            let Some(bundle) = snapshot.bundle_for(&self.selectors, svid.spiffe_id.trust_domain())
            else {
                tracing::warn!(spiffe_id = %svid.spiffe_id, "no bundle for the SVID's trust domain; not serving it");
                continue;
            };
            response.svids.push(X509svid {
                spiffe_id: svid.spiffe_id.to_string(),
                x509_svid: svid.chain.iter().flat_map(|c| c.iter().copied()).collect(),
                x509_svid_key: svid.key.pkcs8_der().to_vec(),
                bundle: x509_der(&bundle),
                hint: String::new(),
            });
        }
        if response.svids.is_empty() {
            return match self.served_until {
                // Entries match but no SVID is issued yet: wait for the
                // manager rather than fail a workload that is merely early.
                None => Decision::Wait(None),
                // A renewal is late but what the caller holds is still valid.
                Some(until) if until > now => Decision::Wait(Some(until)),
                // Everything it holds has expired and nothing replaced it
                // (the CA is unreachable): tell it to stop using them.
                Some(_) => Decision::Refuse(Status::permission_denied(format!(
                    "{NO_IDENTITY}: the SVIDs expired and have not been renewed"
                ))),
            };
        }
        // Only the trust domains the caller's entries federate with: a
        // relationship deleted (or an entry that stops federating) takes the
        // bundle out of the next message.
        for bundle in snapshot.federated_for(&self.selectors) {
            response
                .federated_bundles
                .insert(bundle.trust_domain().id_string(), x509_der(&bundle));
        }
        self.served_until = svids.iter().map(|s| s.not_after).max();
        // Look again when the first of them expires, so that an expired SVID
        // is withdrawn even if no new snapshot comes.
        Decision::Send(response, svids.iter().map(|s| s.not_after).min())
    }
}

/// A JSON object as a `google.protobuf.Struct`; `None` for anything else.
pub(super) fn json_to_struct(value: serde_json::Value) -> Option<prost_types::Struct> {
    match value {
        serde_json::Value::Object(map) => Some(object_to_struct(map)),
        _ => None,
    }
}

fn object_to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| (k, json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    let kind = match value {
        J::Null => Kind::NullValue(prost_types::NullValue::NullValue.into()),
        J::Bool(b) => Kind::BoolValue(b),
        // Struct numbers are doubles; integers beyond 2^53 lose precision,
        // as in every JSON-to-Struct conversion.
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        J::String(s) => Kind::StringValue(s),
        J::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        J::Object(map) => Kind::StructValue(object_to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}
