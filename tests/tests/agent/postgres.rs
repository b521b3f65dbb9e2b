//! The CA on a PostgreSQL store: agents get SVIDs through it, and a trust
//! domain moved there from SQLite by `signet-ca migrate` keeps its roots and
//! entries.

use signet_tests::postgres::{Database, signet_ca_once};
use signet_tests::{AgentProcess, CaOptions, CaProcess};

use crate::{Node, me, serial_of};

#[tokio::test]
async fn an_agent_gets_svids_from_a_ca_on_postgres() {
    let db = Database::create();
    let node = Node::start_with(CaOptions::default().flag("store", db.url()), &[]).await;
    node.entry("/web", &me(), &[]).await;
    let svid = node.wait_for_svid("/web").await;
    assert_eq!(svid.spiffe_id().to_string(), node.ca.id("/web"));
    // It is PostgreSQL that holds the entry, the node and the audit trail.
    assert_eq!(
        db.psql("SELECT spiffe_id FROM entries").unwrap(),
        node.ca.id("/web")
    );
    assert_eq!(
        db.psql("SELECT name FROM nodes").unwrap(),
        node.agent.node_name()
    );
    let issued: u64 = db
        .psql("SELECT COUNT(*) FROM audit WHERE result = 'issued'")
        .unwrap()
        .parse()
        .unwrap();
    assert!(issued >= 2, "node SVID and workload SVID audited: {issued}");
    assert!(
        !std::path::Path::new(&node.ca.data_dir().join("signet.db")).exists(),
        "no SQLite file is made when the store is PostgreSQL"
    );
}

#[tokio::test]
async fn a_trust_domain_migrated_from_sqlite_keeps_its_roots_and_entries() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let agent = AgentProcess::start(&ca, "node-a", &[]).await.unwrap();
    let node = Node { agent, ca };
    node.entry("/web", &me(), &[]).await;
    node.entry("/api", "unix:uid:4242", &[]).await;
    node.wait_for_svid("/web").await;
    let roots_before = node.ca.bundle().unwrap();
    let entries_before = node.ca.signet_ca(["entry", "list"]).await.unwrap();
    assert!(entries_before.status.success(), "{entries_before:?}");
    let Node { agent, mut ca } = node;
    drop(agent);
    ca.stop().await.unwrap();

    let db = Database::create();
    let from = format!("sqlite:{}", ca.data_dir().join("signet.db").display());
    let out = signet_ca_once(&["migrate", "--from", &from, "--to", db.url()]).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("entries 2"), "{stdout}");
    let password = db
        .url()
        .split(':')
        .nth(2)
        .unwrap()
        .split('@')
        .next()
        .unwrap();
    assert!(
        !stdout.contains(password),
        "the password is shown: {stdout}"
    );

    // A second migration into the same database is refused.
    let again = signet_ca_once(&["migrate", "--from", &from, "--to", db.url()]).unwrap();
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already holds data"), "{stderr}");
    assert!(
        !stderr.contains(password),
        "the password is shown: {stderr}"
    );

    // The SQLite file is set aside: the CA now runs on PostgreSQL alone.
    std::fs::rename(
        ca.data_dir().join("signet.db"),
        ca.data_dir().join("signet.db.migrated"),
    )
    .unwrap();
    ca.options_mut()
        .args
        .extend(["--store".into(), db.url().into()]);
    ca.start_again().await.unwrap();
    let roots_after = ca.bundle().unwrap();
    assert_eq!(
        roots_after.x509_authorities(),
        roots_before.x509_authorities(),
        "the roots changed"
    );
    let entries_after = ca.signet_ca(["entry", "list"]).await.unwrap();
    assert_eq!(entries_after.stdout, entries_before.stdout);

    // An agent (attesting anew: its old join token is spent) still gets SVIDs.
    let agent = AgentProcess::start(&ca, "node-b", &[]).await.unwrap();
    let node = Node { agent, ca };
    node.entry("/web2", &me(), &[]).await;
    let svid = node.wait_for_svid("/web2").await;
    assert_eq!(svid.spiffe_id().to_string(), node.ca.id("/web2"));
}

/// The CA's database goes away: the CA reports NOT_SERVING and the agent
/// keeps serving the SVID it holds (the same certificate, nothing new
/// issued); once the database is back the CA is SERVING again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_keeps_serving_its_svid_while_the_cas_database_is_down() {
    use tonic_health::pb::health_check_response::ServingStatus;
    async fn wait_for(ca: &CaProcess, want: ServingStatus) {
        for _ in 0..600 {
            let channel = ca.node_channel(None).await.unwrap();
            if signet_tests::health_check(channel, "signet.ca.v1.Node")
                .await
                .unwrap()
                == want
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the CA never became {want:?}");
    }

    let mut db = Database::on_private_server();
    let node = Node::start_with(CaOptions::default().flag("store", db.url()), &[]).await;
    node.entry("/web", &me(), &[]).await;
    let before = node.wait_for_svid("/web").await;

    tokio::task::block_in_place(|| db.server_mut().unwrap().stop());
    wait_for(&node.ca, ServingStatus::NotServing).await;
    let during = node.wait_for_svid("/web").await;
    assert_eq!(serial_of(&during), serial_of(&before));

    tokio::task::block_in_place(|| db.server_mut().unwrap().start_again());
    wait_for(&node.ca, ServingStatus::Serving).await;
    let after = node.wait_for_svid("/web").await;
    assert_eq!(after.spiffe_id().to_string(), node.ca.id("/web"));
}
