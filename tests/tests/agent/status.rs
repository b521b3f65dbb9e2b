//! `signet ca agent list`: the CA's view of its agents, fed by their
//! status reports.

use std::time::{Duration, Instant};

use crate::{Node, WAIT, me};

#[tokio::test]
async fn agent_list_shows_the_agent_serving_the_cas_bundle() {
    let node = Node::start(&[]).await;
    node.entry("/web", &me(), &[]).await;
    node.entry("/api", &me(), &[]).await;
    node.wait_for_svid("/web").await;
    node.wait_for_svid("/api").await;

    // Reports follow changes; poll until the CA has the latest one.
    let deadline = Instant::now() + WAIT;
    let (list, row) = loop {
        let out = node
            .ca
            .signet_ca(["--output", "json", "agent", "list"])
            .await
            .unwrap()
            .ok()
            .unwrap();
        let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        let row = list["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["spiffe_id"] == node.agent.spiffe_id())
            .cloned();
        if let Some(row) = row
            && row["bundle_current"] == true
            && row["svid_count"] == 2
        {
            break (list, row);
        }
        assert!(
            Instant::now() < deadline,
            "the agent was not listed as current with 2 SVIDs within {WAIT:?}:\n{list:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(list["agents"].as_array().unwrap().len(), 1);
    assert_eq!(row["bundle_sequence"], list["bundle_sequence"]);
    assert!(row["last_seen"].is_string(), "{row:#}");
    assert_eq!(row["name"], "node-a");

    let text = node
        .ca
        .signet_ca(["agent", "list"])
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert!(
        text.stdout.starts_with("1 agent, CA bundle sequence "),
        "{text}"
    );
    let line = text
        .stdout
        .lines()
        .find(|l| l.starts_with(node.agent.spiffe_id()))
        .unwrap_or_else(|| panic!("no row for the agent:\n{text}"));
    assert!(line.contains("(current)"), "{line}");
}
