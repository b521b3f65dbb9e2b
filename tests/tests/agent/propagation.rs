//! An entry created or deleted at the CA reaches a workload's open
//! FetchX509SVID stream quickly: the CA pushes it to the agent, the agent
//! gets the SVID signed and pushes it on. The benchmark measures this
//! precisely; here the bound is loose, only to catch polling or stalls.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use signet_proto::ca::v1 as pb;

use crate::{Node, me};

const BOUND: Duration = Duration::from_secs(2);

#[tokio::test]
async fn entry_changes_reach_an_open_stream_within_two_seconds() {
    let node = Node::start(&[]).await;
    // A first identity, so that this process has a stream to watch.
    node.entry("/base", &me(), &[]).await;
    node.wait_for_svid("/base").await;
    let client = node.client().await;
    let mut stream = client.stream_x509_contexts().await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.svids().len(), 1);

    let new_id = node.ca.id("/new");
    let ids = |ctx: &spiffe::X509Context| -> Vec<String> {
        ctx.svids()
            .iter()
            .map(|s| s.spiffe_id().to_string())
            .collect()
    };

    // Created: through the admin API directly, so that the clock measures
    // the CA and the agent, not the CLI's start-up.
    let mut admin = node.ca.admin().await.unwrap();
    let (uid_type, uid_value) = me()
        .split_once(':')
        .map(|(t, v)| (t.to_owned(), v.to_owned()))
        .unwrap();
    let started = Instant::now();
    let created = admin
        .create_entry(pb::CreateEntryRequest {
            spiffe_id: new_id.clone(),
            parent_id: node.agent.spiffe_id().to_owned(),
            selectors: vec![pb::Selector {
                r#type: uid_type,
                value: uid_value,
            }],
            x509_svid_ttl_seconds: 0,
            dns_names: vec![],
            federates_with: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    loop {
        let ctx = tokio::time::timeout(BOUND, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the new entry did not arrive within {BOUND:?}\n--- agent log ---\n{}",
                    node.agent.log()
                )
            })
            .unwrap()
            .unwrap();
        if ids(&ctx).contains(&new_id) {
            break;
        }
    }
    let to_create = started.elapsed();

    // Deleted.
    let started = Instant::now();
    admin
        .delete_entry(pb::DeleteEntryRequest { id: created.id })
        .await
        .unwrap();
    loop {
        let ctx = tokio::time::timeout(BOUND, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the deletion did not arrive within {BOUND:?}\n--- agent log ---\n{}",
                    node.agent.log()
                )
            })
            .unwrap()
            .unwrap();
        if !ids(&ctx).contains(&new_id) {
            assert_eq!(ids(&ctx), [node.ca.id("/base")]);
            break;
        }
    }
    let to_delete = started.elapsed();
    eprintln!("entry created -> workload: {to_create:?}; deleted -> workload: {to_delete:?}");
    assert!(to_create < BOUND, "creation took {to_create:?}");
    assert!(to_delete < BOUND, "deletion took {to_delete:?}");
}
