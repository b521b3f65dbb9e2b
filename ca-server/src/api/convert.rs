//! Conversions between the CA's types and the wire messages.

use signet_identity::SpiffeId;
use signet_identity::unix_time::unix_seconds;
use signet_identity::x509::IssuedCert;
use signet_proto::ca::v1 as pb;

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::NodeBundle;
use crate::ca::signing::AuthorityInfo;
use crate::k8s::derived::EntryView;
use crate::store::{AuthorityKind, AuthorityState, EntryRow, NodeRow};

/// The wire form of a bundle, shared with every side of the wire.
pub use signet_proto::convert::bundle_to_pb as bundle;

pub fn svid(id: &SpiffeId, cert: &IssuedCert) -> pb::X509Svid {
    pb::X509Svid {
        spiffe_id: id.to_string(),
        cert_chain: cert.chain.iter().map(|c| c.to_vec()).collect(),
        expires_at: unix_seconds(cert.not_after),
        serial: cert.serial_hex(),
    }
}

/// A stored entry.
pub fn entry(e: &EntryRow) -> pb::Entry {
    any_entry(&EntryView::stored(e.clone()))
}

/// An entry, stored or derived, with its origin.
pub fn any_entry(view: &EntryView) -> pb::Entry {
    let e = &view.row;
    pb::Entry {
        id: e.id.clone(),
        spiffe_id: e.spiffe_id.clone(),
        parent_id: e.parent_id.clone(),
        selectors: e
            .selectors
            .iter()
            .map(|(t, v)| pb::Selector {
                r#type: t.clone(),
                value: v.clone(),
            })
            .collect(),
        x509_svid_ttl_seconds: e.ttl_seconds,
        dns_names: e.dns_names.clone(),
        created_at: e.created_at,
        revision: e.revision,
        federates_with: e.federates_with.clone(),
        origin: view.origin.to_string(),
    }
}

pub fn agent(n: NodeRow) -> pb::Agent {
    pb::Agent {
        spiffe_id: n.spiffe_id,
        name: n.name,
        attested_at: n.attested_at,
        svid_serial: n.last_serial,
        svid_expires_at: n.svid_expires_at,
        bundle_sequence: n.bundle_sequence,
        last_seen: n.last_seen,
        svid_count: n.svid_count,
    }
}

pub fn authority(a: &AuthorityInfo) -> pb::Authority {
    let r = &a.row;
    // A JWT key has no certificate, so no subject.
    let subject = if r.kind == AuthorityKind::Jwt {
        String::new()
    } else {
        X509Certificate::from_der(&r.cert_der)
            .map(|(_, c)| c.subject().to_string())
            .unwrap_or_default()
    };
    pb::Authority {
        id: r.id.clone(),
        kind: kind_to_pb(r.kind).into(),
        state: state_to_pb(r.state).into(),
        certificate: r.cert_der.clone(),
        not_before: r.not_before,
        not_after: r.not_after,
        subject,
        published_sequence: r.published_sequence.unwrap_or(0),
        agents_acknowledged: a.agents_acknowledged,
        agents_connected: a.agents_connected,
        published_at: r.published_at.unwrap_or(0),
        activated_at: r.activated_at.unwrap_or(0),
        retired_at: r.retired_at.unwrap_or(0),
        tainted_at: r.tainted_at.unwrap_or(0),
        revoked_at: r.revoked_at.unwrap_or(0),
        parent_id: r.parent_id.clone().unwrap_or_default(),
        next_transition_at: a.next_transition_at.unwrap_or(0),
        replica_id: r.replica_id.clone().unwrap_or_default(),
    }
}

/// The node API's Bundle: the SPIFFE bundle plus tainted authorities and CRLs.
pub fn node_bundle(b: &NodeBundle) -> pb::Bundle {
    pb::Bundle {
        tainted: b
            .tainted
            .iter()
            .map(|t| pb::TaintedAuthority {
                id: t.id.clone(),
                kind: kind_to_pb(t.kind).into(),
                public_material: t.material.clone(),
                tainted_at: t.tainted_at,
                reissue_window_seconds: i64::try_from(t.reissue_window.as_secs())
                    .unwrap_or(i64::MAX),
            })
            .collect(),
        crls: b.crls.clone(),
        ..bundle(&b.bundle)
    }
}

/// The wire form of an authority kind.
pub fn kind_to_pb(kind: AuthorityKind) -> pb::AuthorityKind {
    match kind {
        AuthorityKind::Root => pb::AuthorityKind::Root,
        AuthorityKind::Intermediate => pb::AuthorityKind::Intermediate,
        AuthorityKind::Jwt => pb::AuthorityKind::Jwt,
        AuthorityKind::Upstream => pb::AuthorityKind::Upstream,
    }
}

/// The authority kind a request names; `None` for unspecified or unknown.
pub fn kind_from_pb(kind: i32) -> Option<AuthorityKind> {
    match pb::AuthorityKind::try_from(kind).ok()? {
        pb::AuthorityKind::Root => Some(AuthorityKind::Root),
        pb::AuthorityKind::Intermediate => Some(AuthorityKind::Intermediate),
        pb::AuthorityKind::Jwt => Some(AuthorityKind::Jwt),
        pb::AuthorityKind::Upstream => Some(AuthorityKind::Upstream),
        pb::AuthorityKind::Unspecified => None,
    }
}

/// The wire form of an authority state.
pub fn state_to_pb(state: AuthorityState) -> pb::AuthorityState {
    match state {
        AuthorityState::Active => pb::AuthorityState::Active,
        AuthorityState::Prepared => pb::AuthorityState::Prepared,
        AuthorityState::Retired => pb::AuthorityState::Retired,
        AuthorityState::Tainted => pb::AuthorityState::Tainted,
        AuthorityState::Revoked => pb::AuthorityState::Revoked,
        AuthorityState::Pruned => pb::AuthorityState::Pruned,
    }
}

/// A replica row for operators; `this` is the id of the answering replica.
pub fn replica(r: crate::store::ReplicaRow, this: &str) -> pb::Replica {
    pb::Replica {
        this_replica: r.id == this,
        id: r.id,
        address: r.address,
        signing_authority: r.signing_authority,
        started_at: r.started_at,
        heartbeat_at: r.heartbeat_at,
        agents_connected: r.agents_connected,
        stopped_at: r.stopped_at.unwrap_or(0),
    }
}
