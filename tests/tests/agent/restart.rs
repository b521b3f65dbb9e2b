//! Restarts: an agent stopped (SIGTERM) or killed comes back on the same
//! data directory without a join token, reuses its node SVID, and serves
//! its workloads again.

use std::time::{Duration, Instant};

use crate::{Node, WAIT, me, serial_of};

/// The SPIFFE IDs `signet ca agent list` shows.
async fn listed_agents(node: &Node) -> Vec<String> {
    let out = node
        .ca
        .signet_ca(["--output", "json", "agent", "list"])
        .await
        .unwrap()
        .ok()
        .unwrap();
    let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["spiffe_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_restarted_agent_serves_again_without_a_token() {
    let mut node = Node::start(&[]).await;
    node.entry("/web", &me(), &[]).await;
    let before = serial_of(&node.wait_for_svid("/web").await);
    let agents = listed_agents(&node).await;
    assert_eq!(agents, [node.agent.spiffe_id()]);
    let mark = node.ca.audit_mark().unwrap();

    let status = node.agent.stop().await.unwrap();
    assert!(
        status.success(),
        "signet-agent exited with {status} after SIGTERM\n--- agent log ---\n{}",
        node.agent.log()
    );
    node.agent.start_again().await.unwrap();
    let after = serial_of(&node.wait_for_svid("/web").await);
    assert_ne!(
        after, before,
        "workload keys live in memory only, so the SVID must be re-issued"
    );

    // A crash is no different.
    node.agent.kill9();
    node.agent.start_again().await.unwrap();
    let again = serial_of(&node.wait_for_svid("/web").await);
    assert_ne!(again, after);

    // No new attestation: the CA saw only workload signing (and perhaps a
    // node SVID renewal), and lists the same single agent.
    let deadline = Instant::now() + WAIT;
    let rows = loop {
        let rows = node.ca.audit_since(mark).unwrap();
        let issued_web = rows
            .iter()
            .filter(|r| r.action == "sign_x509_svid" && r.result == "issued")
            .count();
        if issued_web >= 2 || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        !rows.iter().any(|r| r.action == "attest_node"),
        "the restarted agent attested again: {rows:#?}"
    );
    let signed: Vec<&str> = rows
        .iter()
        .filter(|r| r.action == "sign_x509_svid" && r.result == "issued")
        .map(|r| r.serial.as_str())
        .collect();
    assert!(
        signed.contains(&after.as_str()) && signed.contains(&again.as_str()),
        "the re-issued serials {after} and {again} are not in the audit log: {rows:#?}"
    );
    assert_eq!(listed_agents(&node).await, [node.agent.spiffe_id()]);
}
