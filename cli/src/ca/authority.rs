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
    replicas: &'a [super::replica::ReplicaView],
}

#[derive(Debug, Serialize)]
struct AuthorityView {
    id: String,
    kind: String,
    state: String,
    not_before: String,
    not_after: String,
    subject: String,
    /// 0 = not published yet.
    published_sequence: u64,
    agents_acknowledged: u32,
    agents_connected: u32,
    parent_id: String,
    /// RFC 3339, or empty when not (yet).
    published_at: String,
    activated_at: String,
    retired_at: String,
    tainted_at: String,
    revoked_at: String,
    next_transition_at: String,
    /// The replica that holds its key; empty when none has adopted it.
    replica_id: String,
}

/// The kinds an operator can prepare.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(super) enum KindArg {
    Root,
    Intermediate,
    Jwt,
}

fn when(unix: i64) -> String {
    if unix == 0 {
        String::new()
    } else {
        output::rfc3339(unix)
    }
}

fn view(a: pb::Authority) -> AuthorityView {
    AuthorityView {
        kind: kind_name(a.kind),
        state: state_name(a.state),
        not_before: output::rfc3339(a.not_before),
        not_after: output::rfc3339(a.not_after),
        subject: subject_of(&a.certificate).unwrap_or(a.subject),
        published_sequence: a.published_sequence,
        agents_acknowledged: a.agents_acknowledged,
        agents_connected: a.agents_connected,
        parent_id: a.parent_id,
        published_at: when(a.published_at),
        activated_at: when(a.activated_at),
        retired_at: when(a.retired_at),
        tainted_at: when(a.tainted_at),
        revoked_at: when(a.revoked_at),
        next_transition_at: when(a.next_transition_at),
        replica_id: a.replica_id,
        id: a.id,
    }
}

/// Runs `signet ca authority ...`.
///
/// # Errors
/// When the server refuses the call.
pub(super) async fn run(
    client: &mut AdminClient<Channel>,
    cmd: super::AuthorityCommand,
    format: Format,
) -> anyhow::Result<()> {
    use super::AuthorityCommand as C;
    let (verb, changed) = match cmd {
        C::List => return list(client, format).await,
        C::Prepare { kind } => {
            let kind = match kind {
                KindArg::Root => pb::AuthorityKind::Root,
                KindArg::Intermediate => pb::AuthorityKind::Intermediate,
                KindArg::Jwt => pb::AuthorityKind::Jwt,
            };
            let r = client
                .prepare_authority(pb::PrepareAuthorityRequest { kind: kind.into() })
                .await
                .map_err(status_error)?
                .into_inner();
            (
                "prepared",
                pb::AuthorityChangeResponse {
                    authority: r.authority,
                    bundle_sequence: r.bundle_sequence,
                },
            )
        }
        C::Activate { id, force } => (
            "activated",
            client
                .activate_authority(pb::ActivateAuthorityRequest { id, force })
                .await
                .map_err(status_error)?
                .into_inner(),
        ),
        C::Taint { id } => (
            "tainted",
            client
                .taint_authority(pb::TaintAuthorityRequest { id })
                .await
                .map_err(status_error)?
                .into_inner(),
        ),
        C::Revoke { id, force } => (
            "revoked",
            client
                .revoke_authority(pb::RevokeAuthorityRequest { id, force })
                .await
                .map_err(status_error)?
                .into_inner(),
        ),
    };
    let authority = changed.authority.map(view);
    match format {
        Format::Json => output::print_json(&Changed {
            authority: authority.as_ref(),
            bundle_sequence: changed.bundle_sequence,
        }),
        Format::Text => {
            let Some(a) = authority else {
                return output::print(&format!(
                    "{verb}; bundle sequence {}\n",
                    changed.bundle_sequence
                ));
            };
            output::print(&format!(
                "{verb} {} {} ({}); bundle sequence {}\n",
                output::printable(&a.kind),
                output::printable(&a.id),
                output::printable(&a.state),
                changed.bundle_sequence
            ))
        }
    }
}

#[derive(Debug, Serialize)]
struct Changed<'a> {
    authority: Option<&'a AuthorityView>,
    bundle_sequence: u64,
}

pub(super) async fn list(client: &mut AdminClient<Channel>, format: Format) -> anyhow::Result<()> {
    let list = client
        .list_authorities(pb::ListAuthoritiesRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let views: Vec<AuthorityView> = list.authorities.into_iter().map(view).collect();
    // This call carries no CA clock: heartbeats are judged by ours.
    let now = signet_identity::unix_time::unix_seconds(std::time::SystemTime::now());
    let replicas = super::replica::views(list.replicas, now);
    match format {
        Format::Json => output::print_json(&AuthorityList {
            authorities: &views,
            replicas: &replicas,
        }),
        Format::Text => {
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|a| {
                    let published = if a.published_sequence == 0 {
                        "-".to_owned()
                    } else {
                        a.published_sequence.to_string()
                    };
                    let acked = format!("{}/{}", a.agents_acknowledged, a.agents_connected);
                    let replica = if a.replica_id.is_empty() {
                        "-".to_owned()
                    } else {
                        a.replica_id.clone()
                    };
                    [
                        &a.id,
                        &a.kind,
                        &a.state,
                        &replica,
                        &published,
                        &acked,
                        &a.not_after,
                        &a.subject,
                    ]
                    .into_iter()
                    .map(|s| output::printable(s))
                    .collect()
                })
                .collect();
            let mut out = output::table(
                &[
                    "ID",
                    "KIND",
                    "STATE",
                    "REPLICA",
                    "PUBLISHED",
                    "ACKED",
                    "NOT AFTER",
                    "SUBJECT",
                ],
                &rows,
            );
            out.push_str("\nReplicas\n");
            out.push_str(&super::replica::table(&replicas, now));
            output::print(&out)
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
