//! Conversions between the CA's types and the wire messages.

use signet_identity::x509::IssuedCert;
use signet_identity::{SpiffeId, TrustBundle};
use signet_proto::ca::v1 as pb;

use crate::ca::authorities::unix;
use crate::store::EntryRow;

pub fn svid(id: &SpiffeId, cert: &IssuedCert) -> pb::X509Svid {
    pb::X509Svid {
        spiffe_id: id.to_string(),
        cert_chain: cert.chain.iter().map(|c| c.to_vec()).collect(),
        expires_at: unix(cert.not_after),
        serial: cert.serial_hex(),
    }
}

pub fn bundle(b: &TrustBundle) -> pb::Bundle {
    pb::Bundle {
        trust_domain: b.trust_domain().to_string(),
        x509_authorities: b.x509_authorities().iter().map(|c| c.to_vec()).collect(),
        jwt_authorities: b
            .jwt_authorities()
            .iter()
            .map(|j| pb::JwtAuthority {
                key_id: j.key_id().to_owned(),
                public_key: j.public_key().to_vec(),
                expires_at: j.expires_at().unwrap_or(0),
            })
            .collect(),
        sequence: b.sequence(),
        refresh_hint_seconds: b.refresh_hint().map_or(0, |d| d.as_secs() as i64),
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
