//! `signet ca agent ...`: the node agents the CA has attested.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use signet_identity::unix_time::unix_seconds;
use signet_proto::ca::v1 as pb;
use signet_proto::ca::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::grpc::status_error;
use crate::output::{self, Format};

#[derive(Debug, Serialize)]
struct AgentList {
    /// The CA's current bundle sequence.
    bundle_sequence: u64,
    agents: Vec<AgentView>,
}

#[derive(Debug, Serialize)]
struct AgentView {
    spiffe_id: String,
    name: String,
    attested_at: String,
    /// The sequence of the bundle the agent last reported serving.
    bundle_sequence: u64,
    /// Whether that is the CA's current one.
    bundle_current: bool,
    svid_count: u32,
    /// `None` when the agent never reported.
    last_seen: Option<String>,
    node_svid_serial: String,
    node_svid_expires_at: String,
    #[serde(skip)]
    node_svid_expires_unix: i64,
    #[serde(skip)]
    last_seen_unix: i64,
}

fn agent_views(list: pb::ListAgentsResponse) -> AgentList {
    let current = list.bundle_sequence;
    let agents = list
        .agents
        .into_iter()
        .map(|a| AgentView {
            bundle_current: a.bundle_sequence == current,
            last_seen: (a.last_seen != 0).then(|| output::rfc3339(a.last_seen)),
            attested_at: output::rfc3339(a.attested_at),
            node_svid_expires_at: output::rfc3339(a.svid_expires_at),
            node_svid_expires_unix: a.svid_expires_at,
            last_seen_unix: a.last_seen,
            spiffe_id: a.spiffe_id,
            name: a.name,
            bundle_sequence: a.bundle_sequence,
            svid_count: a.svid_count,
            node_svid_serial: a.svid_serial,
        })
        .collect();
    AgentList {
        bundle_sequence: current,
        agents,
    }
}

fn render_agents(list: &AgentList, now: i64) -> String {
    let rows: Vec<Vec<String>> = list
        .agents
        .iter()
        .map(|a| {
            let bundle = if a.bundle_current {
                format!("{} (current)", a.bundle_sequence)
            } else {
                format!("{} (CA has {})", a.bundle_sequence, list.bundle_sequence)
            };
            let last_seen = match &a.last_seen {
                None => "never".to_owned(),
                Some(at) => {
                    let ago = output::approx_duration(Duration::from_secs(
                        now.saturating_sub(a.last_seen_unix).unsigned_abs(),
                    ));
                    format!("{at} ({ago} ago)")
                }
            };
            let expires = format!(
                "{} ({})",
                a.node_svid_expires_at,
                output::time_left(a.node_svid_expires_unix, now)
            );
            vec![
                output::printable(&a.spiffe_id),
                bundle,
                a.svid_count.to_string(),
                last_seen,
                expires,
            ]
        })
        .collect();
    let n = list.agents.len();
    let mut out = format!(
        "{n} {}, CA bundle sequence {}\n",
        if n == 1 { "agent" } else { "agents" },
        list.bundle_sequence
    );
    if n > 0 {
        out.push_str(&output::table(
            &[
                "SPIFFE ID",
                "BUNDLE SEQUENCE",
                "SVIDS",
                "LAST SEEN",
                "NODE SVID EXPIRES",
            ],
            &rows,
        ));
    }
    out
}

pub(super) async fn list(client: &mut AdminClient<Channel>, format: Format) -> anyhow::Result<()> {
    let list = client
        .list_agents(pb::ListAgentsRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let list = agent_views(list);
    match format {
        Format::Json => output::print_json(&list),
        Format::Text => output::print(&render_agents(&list, unix_seconds(SystemTime::now()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str, sequence: u64, last_seen: i64) -> pb::Agent {
        pb::Agent {
            spiffe_id: format!("spiffe://example.org/signet/node/{name}"),
            name: name.to_owned(),
            attested_at: 1_700_000_000,
            svid_serial: "0a".to_owned(),
            svid_expires_at: 1_700_003_600,
            bundle_sequence: sequence,
            last_seen,
            svid_count: 3,
        }
    }

    #[test]
    fn agent_list_compares_each_agent_with_the_ca() {
        let list = agent_views(pb::ListAgentsResponse {
            agents: vec![agent("a", 7, 1_700_000_050), agent("b", 5, 0)],
            bundle_sequence: 7,
        });
        assert!(list.agents[0].bundle_current);
        assert!(!list.agents[1].bundle_current);
        assert_eq!(list.agents[1].last_seen, None);

        let text = render_agents(&list, 1_700_000_060);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "2 agents, CA bundle sequence 7");
        assert!(lines[1].starts_with("SPIFFE ID"), "{text}");
        assert!(
            lines[2].contains("7 (current)") && lines[2].contains("(10s ago)"),
            "{text}"
        );
        assert!(lines[2].contains("expires in 59m"), "{text}");
        assert!(
            lines[3].contains("5 (CA has 7)") && lines[3].contains("never"),
            "{text}"
        );

        let json = serde_json::to_value(&list).unwrap();
        assert_eq!(json["bundle_sequence"], 7);
        assert_eq!(json["agents"][0]["bundle_current"], true);
        assert_eq!(json["agents"][0]["last_seen"], "2023-11-14T22:14:10Z");
        assert_eq!(json["agents"][1]["last_seen"], serde_json::Value::Null);
        assert_eq!(json["agents"][1]["svid_count"], 3);
    }

    #[test]
    fn an_empty_agent_list_has_no_table() {
        let list = agent_views(pb::ListAgentsResponse {
            agents: vec![],
            bundle_sequence: 1,
        });
        assert_eq!(render_agents(&list, 0), "0 agents, CA bundle sequence 1\n");
    }
}
