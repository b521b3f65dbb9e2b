//! Two CA replicas on one PostgreSQL database and a real agent attached to
//! the second: an entry and a new root made through the first reach the
//! agent's workloads over the Workload API (the `spiffe` crate's client).

use std::time::Instant;

use futures::StreamExt as _;
use signet_proto::ca::v1 as pb;
use signet_tests::postgres::Database;
use signet_tests::{AgentProcess, CaOptions, CaProcess};

use crate::{Node, WAIT, me};

#[tokio::test]
async fn an_entry_and_a_root_made_through_one_replica_reach_a_workload_of_an_agent_on_the_other() {
    let db = Database::create();
    let opts = || CaOptions::default().flag("store", db.url());
    let a = CaProcess::start(opts()).await.unwrap();
    let b = a.start_replica(0, opts()).await.unwrap();
    let agent = AgentProcess::start(&b, "node-b", &[]).await.unwrap();
    let node = Node { agent, ca: b };

    // The entry is created through A; the agent only talks to B.
    a.entry_cli(&[
        "--spiffe-id",
        &a.id("/w"),
        "--parent-node",
        "node-b",
        "--selector",
        &me(),
    ])
    .await
    .unwrap();
    node.wait_for_svid("/w").await;

    let td = spiffe::TrustDomain::try_from(a.trust_domain().as_str()).unwrap();
    let roots = |ctx: &spiffe::X509Context| -> Vec<Vec<u8>> {
        ctx.bundle_set()
            .get(&td)
            .map(|b| {
                b.authorities()
                    .iter()
                    .map(|c| c.as_bytes().to_vec())
                    .collect()
            })
            .unwrap_or_default()
    };
    let client = node.client().await;
    let mut contexts = client.stream_x509_contexts().await.unwrap();
    let first = contexts.next().await.unwrap().unwrap();
    // Both replicas' roots: each has its own.
    assert_eq!(roots(&first).len(), 2, "the workload's bundle");

    let prepared = a
        .admin()
        .await
        .unwrap()
        .prepare_authority(pb::PrepareAuthorityRequest {
            kind: pb::AuthorityKind::Root.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let new_root = prepared.authority.unwrap().certificate;
    let deadline = Instant::now() + WAIT;
    loop {
        let ctx = tokio::time::timeout(WAIT, contexts.next())
            .await
            .expect("no X.509 context in time")
            .unwrap()
            .unwrap();
        let now = roots(&ctx);
        if now.contains(&new_root) {
            assert_eq!(now.len(), 3, "both replicas' roots and A's new one");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the root prepared through replica A never reached the workload on B's agent\n--- agent log ---\n{}",
            node.agent.log()
        );
    }
}
