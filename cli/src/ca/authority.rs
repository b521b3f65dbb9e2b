//! `signet ca authority ...`: the CA's signing authorities.

use serde::Serialize;
use signet_proto::ca::v1 as pb;
use signet_proto::ca::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::grpc::status_error;
use crate::output::{self, Format};

#[derive(Debug, Serialize)]
struct AuthorityList<'a> {
    authorities: &'a [AuthorityView],
}

#[derive(Debug, Serialize)]
struct AuthorityView {
    id: String,
    kind: String,
    state: String,
    not_before: String,
    not_after: String,
    subject: String,
}

pub(super) async fn list(client: &mut AdminClient<Channel>, format: Format) -> anyhow::Result<()> {
    let list = client
        .list_authorities(pb::ListAuthoritiesRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let views: Vec<AuthorityView> = list
        .authorities
        .into_iter()
        .map(|a| AuthorityView {
            id: a.id,
            kind: kind_name(a.kind),
            state: state_name(a.state),
            not_before: output::rfc3339(a.not_before),
            not_after: output::rfc3339(a.not_after),
            subject: subject_of(&a.certificate).unwrap_or(a.subject),
        })
        .collect();
    match format {
        Format::Json => output::print_json(&AuthorityList {
            authorities: &views,
        }),
        Format::Text => {
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|a| {
                    [&a.id, &a.kind, &a.state, &a.not_after, &a.subject]
                        .into_iter()
                        .map(|s| output::printable(s))
                        .collect()
                })
                .collect();
            output::print(&output::table(
                &["ID", "KIND", "STATE", "NOT AFTER", "SUBJECT"],
                &rows,
            ))
        }
    }
}

/// The subject in the same RFC 4514 form `signet inspect` prints, when the
/// certificate is there to read it from.
fn subject_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(crate::certinfo::rfc4514(cert.subject()))
}

/// The lowercase name of an authority kind, as operators type it.
pub(super) fn kind_name(kind: i32) -> String {
    match pb::AuthorityKind::try_from(kind) {
        Ok(pb::AuthorityKind::Root) => "root".into(),
        Ok(pb::AuthorityKind::Intermediate) => "intermediate".into(),
        Ok(pb::AuthorityKind::Jwt) => "jwt".into(),
        Ok(pb::AuthorityKind::Upstream) => "upstream".into(),
        Ok(pb::AuthorityKind::Unspecified) | Err(_) => format!("unknown({kind})"),
    }
}

/// The lowercase name of an authority state.
pub(super) fn state_name(state: i32) -> String {
    match pb::AuthorityState::try_from(state) {
        Ok(pb::AuthorityState::Prepared) => "prepared".into(),
        Ok(pb::AuthorityState::Active) => "active".into(),
        Ok(pb::AuthorityState::Retired) => "retired".into(),
        Ok(pb::AuthorityState::Tainted) => "tainted".into(),
        Ok(pb::AuthorityState::Revoked) => "revoked".into(),
        Ok(pb::AuthorityState::Pruned) => "pruned".into(),
        Ok(pb::AuthorityState::Unspecified) | Err(_) => format!("unknown({state})"),
    }
}
