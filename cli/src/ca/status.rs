//! `signet ca status`: the CA's health on one screen, from the Admin
//! service's `GetStatus`: the authorities and their expiry, the bundle
//! sequence, the agents and whether they serve the current bundle, and the
//! last audit write. Every time is judged against the CA's clock, not ours.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use signet_proto::ca::v1 as pb;
use signet_proto::ca::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::grpc::status_error;
use crate::output::{self, Format};

/// An agent whose last report is older than this is shown as quiet (agents
/// report at least every 30 s).
const QUIET_AFTER: i64 = 120;

#[derive(Debug, Serialize)]
struct StatusView {
    trust_domain: String,
    ca_time: String,
    bundle_sequence: u64,
    authorities: Vec<AuthorityView>,
    agents: AgentSummary,
    replicas: Vec<super::replica::ReplicaView>,
    last_audit: Option<AuditView>,
}

#[derive(Debug, Serialize)]
struct AuthorityView {
    id: String,
    kind: String,
    state: String,
    not_after: String,
    expires_in_seconds: i64,
}

#[derive(Debug, Serialize)]
struct AgentSummary {
    total: usize,
    /// Serving the CA's current bundle sequence.
    current: usize,
    /// Serving an older bundle.
    behind: usize,
    /// Never reported what they serve.
    unreported: usize,
    list: Vec<AgentView>,
}

#[derive(Debug, Serialize)]
struct AgentView {
    spiffe_id: String,
    bundle_sequence: u64,
    /// `current`, `behind` or `unreported`.
    bundle: &'static str,
    svid_count: u32,
    last_seen: Option<String>,
    #[serde(skip)]
    last_seen_unix: i64,
}

#[derive(Debug, Serialize)]
struct AuditView {
    at: String,
    #[serde(skip)]
    at_unix: i64,
    action: String,
    result: String,
    caller: String,
    spiffe_id: String,
}

fn standing(reported: u64, current: u64) -> &'static str {
    if reported == 0 {
        "unreported"
    } else if reported >= current {
        "current"
    } else {
        "behind"
    }
}

fn view(s: pb::GetStatusResponse) -> (StatusView, i64) {
    let now = s.now;
    let current = s.bundle_sequence;
    let authorities = s
        .authorities
        .into_iter()
        .map(|a| AuthorityView {
            not_after: output::rfc3339(a.not_after),
            expires_in_seconds: a.not_after.saturating_sub(now),
            id: a.id,
            kind: super::authority::kind_name(a.kind),
            state: super::authority::state_name(a.state),
        })
        .collect();
    let list: Vec<AgentView> = s
        .agents
        .into_iter()
        .map(|a| AgentView {
            bundle: standing(a.bundle_sequence, current),
            last_seen: (a.last_seen != 0).then(|| output::rfc3339(a.last_seen)),
            last_seen_unix: a.last_seen,
            spiffe_id: a.spiffe_id,
            bundle_sequence: a.bundle_sequence,
            svid_count: a.svid_count,
        })
        .collect();
    let count = |which: &str| list.iter().filter(|a| a.bundle == which).count();
    let agents = AgentSummary {
        total: list.len(),
        current: count("current"),
        behind: count("behind"),
        unreported: count("unreported"),
        list,
    };
    let last_audit = s.last_audit.map(|a| AuditView {
        at: output::rfc3339(a.at),
        at_unix: a.at,
        action: a.action,
        result: a.result,
        caller: a.caller,
        spiffe_id: a.spiffe_id,
    });
    (
        StatusView {
            trust_domain: s.trust_domain,
            ca_time: output::rfc3339(now),
            bundle_sequence: current,
            authorities,
            agents,
            replicas: super::replica::views(s.replicas, now),
            last_audit,
        },
        now,
    )
}

fn ago(now: i64, then: i64) -> String {
    output::approx_duration(Duration::from_secs(now.saturating_sub(then).unsigned_abs()))
}

fn render(v: &StatusView, now: i64) -> String {
    let mut out = format!(
        "trust domain {}, CA clock {}\n\nAuthorities\n",
        output::printable(&v.trust_domain),
        v.ca_time
    );
    let rows: Vec<Vec<String>> = v
        .authorities
        .iter()
        .map(|a| {
            vec![
                output::printable(&a.id),
                output::printable(&a.kind),
                output::printable(&a.state),
                format!(
                    "{} ({})",
                    a.not_after,
                    output::time_left(now + a.expires_in_seconds, now)
                ),
            ]
        })
        .collect();
    out.push_str(&output::table(&["ID", "KIND", "STATE", "NOT AFTER"], &rows));
    out.push_str("\nReplicas\n");
    out.push_str(&super::replica::table(&v.replicas, now));
    let s = &v.agents;
    let _ = write!(
        out,
        "\nBundle sequence {}\nAgents: {} total, {} current, {} behind, {} unreported\n",
        v.bundle_sequence, s.total, s.current, s.behind, s.unreported
    );
    if !s.list.is_empty() {
        let rows: Vec<Vec<String>> = s
            .list
            .iter()
            .map(|a| {
                let last_seen = match &a.last_seen {
                    None => "never".to_owned(),
                    Some(at) => {
                        let quiet = if now - a.last_seen_unix > QUIET_AFTER {
                            ", quiet"
                        } else {
                            ""
                        };
                        format!("{at} ({} ago{quiet})", ago(now, a.last_seen_unix))
                    }
                };
                vec![
                    output::printable(&a.spiffe_id),
                    format!("{} ({})", a.bundle_sequence, a.bundle),
                    a.svid_count.to_string(),
                    last_seen,
                ]
            })
            .collect();
        out.push_str(&output::table(
            &["SPIFFE ID", "BUNDLE SEQUENCE", "SVIDS", "LAST SEEN"],
            &rows,
        ));
    }
    match &v.last_audit {
        None => out.push_str("\nLast audit write: none\n"),
        Some(a) => {
            let _ = writeln!(
                out,
                "\nLast audit write: {} ({} ago): {} {} by {}{}",
                a.at,
                ago(now, a.at_unix),
                output::printable(&a.action),
                output::printable(&a.result),
                output::printable(&a.caller),
                if a.spiffe_id.is_empty() {
                    String::new()
                } else {
                    format!(" for {}", output::printable(&a.spiffe_id))
                }
            );
        }
    }
    out
}

/// Prints the CA's status.
///
/// # Errors
/// The call fails, or the output cannot be written.
pub async fn run(client: &mut AdminClient<Channel>, format: Format) -> anyhow::Result<()> {
    let status = client
        .get_status(pb::GetStatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let (view, now) = view(status);
    match format {
        Format::Json => output::print_json(&view),
        Format::Text => output::print(&render(&view, now)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str, sequence: u64, last_seen: i64) -> pb::Agent {
        pb::Agent {
            spiffe_id: format!("spiffe://td/signet/node/{name}"),
            name: name.into(),
            bundle_sequence: sequence,
            last_seen,
            svid_count: 2,
            ..Default::default()
        }
    }

    #[test]
    fn agents_are_counted_against_the_current_bundle_and_the_ca_clock() {
        let now = 1_700_000_000;
        let (v, now) = view(pb::GetStatusResponse {
            now,
            trust_domain: "td".into(),
            bundle_sequence: 4,
            authorities: vec![pb::Authority {
                id: "abc".into(),
                kind: pb::AuthorityKind::Root.into(),
                state: pb::AuthorityState::Active.into(),
                not_after: now + 3 * 86400,
                ..Default::default()
            }],
            agents: vec![
                agent("a", 4, now - 10),
                agent("b", 3, now - 600),
                agent("c", 0, 0),
            ],
            last_audit: Some(pb::AuditSummary {
                at: now - 5,
                caller: "spiffe://td/signet/node/a".into(),
                action: "sign_x509_svid".into(),
                result: "issued".into(),
                spiffe_id: "spiffe://td/web".into(),
            }),
            replicas: vec![pb::Replica {
                id: "r1".into(),
                address: "127.0.0.1:8443".into(),
                signing_authority: "int-9".into(),
                started_at: now - 100,
                heartbeat_at: now - 2,
                agents_connected: 3,
                stopped_at: 0,
                this_replica: true,
            }],
        });
        assert_eq!(
            (v.agents.current, v.agents.behind, v.agents.unreported),
            (1, 1, 1)
        );
        assert_eq!(v.authorities[0].expires_in_seconds, 3 * 86400);
        let text = render(&v, now);
        assert!(
            text.contains("Agents: 3 total, 1 current, 1 behind, 1 unreported"),
            "{text}"
        );
        assert!(text.contains("4 (current)"), "{text}");
        assert!(text.contains("3 (behind)"), "{text}");
        assert!(text.contains("quiet"), "{text}");
        assert!(text.contains("never"), "{text}");
        assert!(text.contains("expires in 3d"), "{text}");
        assert!(text.contains("r1 *"), "{text}");
        assert!(text.contains("int-9"), "{text}");
        assert!(text.contains("running"), "{text}");
        assert!(
            text.contains("sign_x509_svid issued by spiffe://td/signet/node/a for spiffe://td/web"),
            "{text}"
        );
    }
}
