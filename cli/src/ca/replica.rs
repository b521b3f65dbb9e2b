//! The CA replicas serving the trust domain, as `signet ca status` and
//! `signet ca authority list` show them.

use std::time::Duration;

use serde::Serialize;
use signet_proto::ca::v1 as pb;

use crate::output;

/// A running replica whose heartbeat is older than this (six of its
/// 5-second periods) is shown as silent: it probably died.
const SILENT_AFTER: i64 = 30;

#[derive(Debug, Serialize)]
pub(super) struct ReplicaView {
    id: String,
    address: String,
    signing_authority: String,
    started_at: String,
    last_heartbeat: String,
    #[serde(skip)]
    heartbeat_unix: i64,
    agents_connected: u32,
    /// `running`, `silent` (no heartbeat for a while) or `stopped`.
    state: &'static str,
    /// Whether it answered this command.
    this_replica: bool,
}

/// The views of `replicas`, judged against the CA's clock `now`.
pub(super) fn views(replicas: Vec<pb::Replica>, now: i64) -> Vec<ReplicaView> {
    replicas
        .into_iter()
        .map(|r| ReplicaView {
            state: if r.stopped_at != 0 {
                "stopped"
            } else if now.saturating_sub(r.heartbeat_at) > SILENT_AFTER {
                "silent"
            } else {
                "running"
            },
            started_at: output::rfc3339(r.started_at),
            last_heartbeat: output::rfc3339(r.heartbeat_at),
            heartbeat_unix: r.heartbeat_at,
            id: r.id,
            address: r.address,
            signing_authority: r.signing_authority,
            agents_connected: r.agents_connected,
            this_replica: r.this_replica,
        })
        .collect()
}

/// The replicas as a table; `*` marks the one that answered.
pub(super) fn table(replicas: &[ReplicaView], now: i64) -> String {
    let rows: Vec<Vec<String>> = replicas
        .iter()
        .map(|r| {
            let ago = output::approx_duration(Duration::from_secs(
                now.saturating_sub(r.heartbeat_unix).unsigned_abs(),
            ));
            vec![
                format!(
                    "{}{}",
                    output::printable(&r.id),
                    if r.this_replica { " *" } else { "" }
                ),
                output::printable(&r.address),
                output::printable(&r.signing_authority),
                format!("{} ({ago} ago)", r.last_heartbeat),
                r.agents_connected.to_string(),
                r.state.to_owned(),
            ]
        })
        .collect();
    output::table(
        &[
            "REPLICA",
            "ADDRESS",
            "SIGNING AUTHORITY",
            "LAST HEARTBEAT",
            "AGENTS",
            "STATE",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(id: &str, heartbeat_at: i64, stopped_at: i64) -> pb::Replica {
        pb::Replica {
            id: id.into(),
            address: "10.0.0.1:8443".into(),
            signing_authority: "int-1".into(),
            started_at: 1_700_000_000,
            heartbeat_at,
            agents_connected: 4,
            stopped_at,
            this_replica: id == "a",
        }
    }

    #[test]
    fn replicas_are_running_silent_or_stopped_by_the_ca_clock() {
        let now = 1_700_000_100;
        let v = views(
            vec![
                replica("a", now - 3, 0),
                replica("b", now - 31, 0),
                replica("c", now - 50, now - 50),
            ],
            now,
        );
        let states: Vec<_> = v.iter().map(|r| r.state).collect();
        assert_eq!(states, ["running", "silent", "stopped"]);
        let text = table(&v, now);
        assert!(text.contains("a *"), "{text}");
        assert!(!text.contains("b *"), "{text}");
        assert!(text.contains("int-1"), "{text}");
        assert!(text.contains("10.0.0.1:8443"), "{text}");
    }
}
