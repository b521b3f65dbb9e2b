//! An agent whose node is evicted while it streams: its streams end, and
//! every call it makes afterwards with its old node SVID is refused.

use std::time::{Duration, Instant};

use crate::{Node, WAIT, me};

#[tokio::test]
async fn an_evicted_agent_is_cut_off_and_refused() {
    let node = Node::start(&[]).await;
    node.entry("/web", &me(), &[]).await;
    node.wait_for_svid("/web").await;
    let agent_id = node.agent.spiffe_id().to_owned();

    let mark = node.ca.audit_mark().unwrap();
    node.ca
        .signet_ca(["agent", "evict", "node-a"])
        .await
        .unwrap()
        .ok()
        .unwrap();

    // The agent's streams end; it reconnects with its old node SVID and is
    // refused: the audit log shows it.
    let deadline = Instant::now() + WAIT;
    loop {
        let rows = node.ca.audit_since(mark).unwrap();
        if rows
            .iter()
            .any(|r| r.result == "rejected" && r.caller.starts_with(&agent_id))
        {
            let issued: Vec<_> = rows
                .iter()
                .filter(|r| r.result == "issued" && r.caller.starts_with(&agent_id))
                .collect();
            assert!(issued.is_empty(), "an evicted node was issued: {issued:#?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no refusal of the evicted agent within {WAIT:?}; audit rows: {rows:#?}\nagent log:\n{}",
            node.agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing lists it any more.
    let out = node
        .ca
        .signet_ca(["--output", "json", "agent", "list"])
        .await
        .unwrap()
        .ok()
        .unwrap();
    let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(list["agents"].as_array().unwrap().len(), 0, "{list:#}");
}
