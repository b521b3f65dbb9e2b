//! Conversions between the CA's types and the wire messages.

use signet_identity::SpiffeId;
use signet_identity::unix_time::unix_seconds;
use signet_identity::x509::IssuedCert;
use signet_proto::ca::v1 as pb;

use crate::store::EntryRow;

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
