//! Conversions between the CA's types and the wire messages.

use signet_identity::SpiffeId;
use signet_identity::unix_time::unix_seconds;
use signet_identity::x509::IssuedCert;
use signet_proto::ca::v1 as pb;

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::signing::AuthorityInfo;
use crate::store::{AuthorityKind, EntryRow, NodeRow};

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

pub fn entry(e: &EntryRow) -> pb::Entry {
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
    // A JWT key has no certificate, so no subject.
    let subject = if a.kind == AuthorityKind::Jwt {
        String::new()
    } else {
        X509Certificate::from_der(&a.der)
            .map(|(_, c)| c.subject().to_string())
            .unwrap_or_default()
    };
    pb::Authority {
        id: a.id.clone(),
        kind: a.kind.as_str().into(),
        state: a.state.as_str().into(),
        certificate: a.der.clone(),
        not_before: a.not_before,
        not_after: a.not_after,
        subject,
    }
}
