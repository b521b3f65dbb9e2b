//! Prometheus metrics of signet-ca and signet-agent, scraped from the real
//! processes and parsed by the official Python client.

use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use signet_tests::{CaOptions, attest_with_token, binary, free_loopback_addr, scrape_until};

use crate::{Node, WAIT, me};

#[tokio::test]
async fn ca_and_agent_metrics_follow_issuance() {
    let ca_metrics = free_loopback_addr().unwrap();
    let agent_metrics = free_loopback_addr().unwrap();
    let ca_listen = ca_metrics.to_string();
    let agent_listen = agent_metrics.to_string();
    let node = Node::start_with(
        CaOptions::default().flag("metrics-listen", ca_listen.clone()),
        &["--metrics-listen", &agent_listen],
    )
    .await;
    node.entry("/web", &me(), &[]).await;
    node.entry("/api", &me(), &[]).await;
    node.wait_for_svid("/web").await;
    node.wait_for_svid("/api").await;
    // One refusal the CA must count: a join token it never made.
    assert!(attest_with_token(&node.ca, "not-a-token").await.is_err());

    // The CA: reports from the agent arrive on their own; wait for them.
    let ca = scrape_until(ca_metrics, WAIT, |s| {
        s.value("signet_ca_agents", &[("bundle", "current")]) == Some(1.0)
    })
    .await
    .unwrap();
    assert!(ca.content_type.starts_with("application/openmetrics-text"));
    let issued = |api: &str| ca.value("signet_ca_svids_issued_total", &[("api", api)]);
    assert!(issued("sign_x509_svid").unwrap() >= 2.0, "{ca:#?}");
    assert_eq!(issued("attest_node"), Some(1.0), "{ca:#?}");
    assert_eq!(issued("mint_x509_svid"), Some(0.0), "{ca:#?}");
    assert_eq!(
        ca.value(
            "signet_ca_requests_refused_total",
            &[("api", "attest_node"), ("reason", "permission_denied")]
        ),
        Some(1.0),
        "{ca:#?}"
    );
    assert_eq!(
        ca.family_type("signet_ca_issuance_duration_seconds"),
        Some("histogram")
    );
    assert!(
        ca.value(
            "signet_ca_issuance_duration_seconds_count",
            &[("api", "sign_x509_svid")]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        ca.value("signet_ca_connected_agents", &[]),
        Some(1.0),
        "{ca:#?}"
    );
    assert_eq!(
        ca.value("signet_ca_agents", &[("bundle", "behind")]),
        Some(0.0)
    );
    let sequence = ca.value("signet_ca_bundle_sequence", &[]).unwrap();
    assert!(sequence >= 1.0, "{ca:#?}");
    let root_left = ca
        .samples
        .iter()
        .filter(|s| s.name == "signet_ca_authority_expiry_seconds")
        .filter(|s| s.labels.iter().any(|(k, v)| k == "kind" && v == "root"))
        .map(|s| s.value)
        .next()
        .unwrap_or_else(|| panic!("no root authority expiry: {ca:#?}"));
    // A default root lives 365 days.
    assert!(
        root_left > 364.0 * 86400.0 && root_left <= 365.0 * 86400.0,
        "{root_left}"
    );
    assert!(
        ca.value("signet_ca_audit_commit_duration_seconds_count", &[])
            .unwrap()
            >= 1.0
    );
    assert!(
        ca.value("signet_ca_audit_records_committed_total", &[])
            .unwrap()
            >= 2.0
    );
    // The store's statements, by backend: this CA is on SQLite.
    assert_eq!(
        ca.family_type("signet_ca_store_statements"),
        Some("counter")
    );
    let statements =
        |backend: &str| ca.value("signet_ca_store_statements_total", &[("backend", backend)]);
    assert!(statements("sqlite").unwrap() >= 10.0, "{ca:#?}");
    assert_eq!(statements("postgres"), Some(0.0), "{ca:#?}");

    // The agent, with one Workload API stream held open.
    let client = node.client().await;
    let mut stream = client.stream_x509_contexts().await.unwrap();
    stream.next().await.unwrap().unwrap();
    let agent = scrape_until(agent_metrics, WAIT, |s| {
        s.value("signet_agent_streams_open", &[("api", "workload_api")]) >= Some(1.0)
    })
    .await
    .unwrap();
    assert_eq!(
        agent.value("signet_agent_svids", &[]),
        Some(2.0),
        "{agent:#?}"
    );
    assert_eq!(agent.value("signet_agent_entries", &[]), Some(2.0));
    let earliest = agent
        .value("signet_agent_svid_earliest_expiry_seconds", &[])
        .unwrap();
    // Default SVID lifetime: one hour.
    assert!(earliest > 0.0 && earliest <= 3600.0, "{earliest}");
    assert_eq!(
        agent.value("signet_agent_bundle_sequence", &[]),
        Some(sequence)
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last_sync = agent
        .value("signet_agent_last_sync_timestamp_seconds", &[])
        .unwrap();
    assert!(
        last_sync > now - 60.0 && last_sync <= now + 1.0,
        "{last_sync} vs {now}"
    );
    assert_eq!(
        agent.value(
            "signet_agent_renewal_failures_total",
            &[("kind", "workload")]
        ),
        Some(0.0)
    );
    assert_eq!(
        agent.value("signet_agent_streams_open", &[("api", "sds")]),
        Some(0.0)
    );

    // The stream closes: the gauge follows.
    drop(stream);
    drop(client);
    scrape_until(agent_metrics, WAIT, |s| {
        s.value("signet_agent_streams_open", &[("api", "workload_api")]) == Some(0.0)
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn metrics_are_off_by_default() {
    let node = Node::start(&[]).await;
    for log in [node.ca.log(), node.agent.log()] {
        assert!(!log.contains("serving Prometheus metrics"), "{log}");
    }
    // A bad address is refused before anything starts (the process exits
    // on its own; `output` waits for it).
    let out = std::process::Command::new(binary("signet-ca").unwrap())
        .args(["run", "--metrics-listen", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--metrics-listen"));
}
