//! Federation through the agent, with real CAs: a workload whose entry
//! federates with another trust domain gets that domain's bundle (and no
//! other workload does), and loses it on every open stream once the
//! relationship is deleted.

use std::net::SocketAddr;
use std::path::Path;

use futures::StreamExt as _;
use signet_tests::{AgentProcess, CaOptions, CaProcess};

use super::*;

/// Longest wait for the CA's poller and the agent's bundle stream.
const PROPAGATION: Duration = Duration::from_secs(30);

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A CA for `td` serving its bundle endpoint on `endpoint` (https_spiffe,
/// refresh hint 1 s).
async fn ca(td: &str, endpoint: SocketAddr, dir: &Path) -> CaProcess {
    let config = dir.join(format!("{td}.toml"));
    std::fs::write(
        &config,
        format!(
            "[bundle_endpoint]\nlisten = \"{endpoint}\"\nprofile = \"https_spiffe\"\nrefresh_hint = \"1s\"\n"
        ),
    )
    .unwrap();
    CaProcess::start(
        CaOptions::new(td)
            .flag("config", config.display().to_string())
            .flag("federation-min-refresh", "1s"),
    )
    .await
    .unwrap()
}

fn td(name: &str) -> spiffe::TrustDomain {
    spiffe::TrustDomain::try_from(name).unwrap()
}

#[tokio::test]
async fn a_workload_gets_the_bundles_its_entry_federates_with_until_the_relationship_goes() {
    let dir = tempfile::tempdir().unwrap();
    let (ep_a, ep_b) = (free_port(), free_port());
    let a = ca("a.test", ep_a, dir.path()).await;
    let b = ca("b.test", ep_b, dir.path()).await;
    let out = a
        .signet_ca([
            "federation".to_owned(),
            "create".to_owned(),
            "b.test".to_owned(),
            "--url".to_owned(),
            format!("https://{ep_b}/"),
            "--profile".to_owned(),
            "https-spiffe".to_owned(),
            "--endpoint-spiffe-id".to_owned(),
            b.id("/signet/ca"),
            "--bundle-file".to_owned(),
            b.bundle_path().display().to_string(),
        ])
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let agent = AgentProcess::start(&a, "node-a", &[]).await.unwrap();
    let node = Node { agent, ca: a };
    node.entry("/web", &me(), &["--federates-with", "b.test"])
        .await;
    node.wait_for_svid("/web").await;
    let client = node.client().await;
    let mut contexts = client.stream_x509_contexts().await.unwrap();
    let mut bundles = client.stream_x509_bundles().await.unwrap();

    // B's bundle arrives beside A's own, as B's trust store.
    let b_roots: Vec<Vec<u8>> = b
        .bundle()
        .unwrap()
        .x509_authorities()
        .iter()
        .map(|c| c.to_vec())
        .collect();
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let ctx = tokio::time::timeout(PROPAGATION, contexts.next())
            .await
            .expect("no X.509 context in time")
            .unwrap()
            .unwrap();
        if let Some(bundle) = ctx.bundle_set().get(&td("b.test")) {
            let got: Vec<Vec<u8>> = bundle
                .authorities()
                .iter()
                .map(|c| c.as_bytes().to_vec())
                .collect();
            assert_eq!(got, b_roots);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b.test's bundle never reached the workload\n--- agent log ---\n{}",
            node.agent.log()
        );
    }
    let jwt = client.fetch_jwt_bundles().await.unwrap();
    assert!(jwt.get(&td("b.test")).is_some());

    // The relationship is deleted on A: every open stream loses B's bundle.
    let out = node
        .ca
        .signet_ca(["federation", "delete", "b.test"])
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    loop {
        let ctx = tokio::time::timeout(PROPAGATION, contexts.next())
            .await
            .expect("the X.509 context stream was not updated")
            .unwrap()
            .unwrap();
        if ctx.bundle_set().get(&td("b.test")).is_none() {
            break;
        }
    }
    loop {
        let set = tokio::time::timeout(PROPAGATION, bundles.next())
            .await
            .expect("the bundle stream was not updated")
            .unwrap()
            .unwrap();
        if set.get(&td("b.test")).is_none() {
            assert!(set.get(&td("a.test")).is_some());
            break;
        }
    }
    let jwt = client.fetch_jwt_bundles().await.unwrap();
    assert!(jwt.get(&td("b.test")).is_none());
    drop(b);
}
