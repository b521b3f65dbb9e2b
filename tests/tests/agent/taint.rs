//! Taint through the agent, with the real CA: after the active intermediate
//! is tainted, the agent replaces every SVID that chains through it within
//! the re-issue window and reports that nothing it serves chains through it
//! any more, which is what lets the CA revoke it without `force`.

use signet_identity::x509::authority_id;
use signet_proto::ca::v1 as pb;
use signet_proto::workload::X509BundlesRequest;
use signet_tests::CaOptions;

use super::*;

/// The re-issue window given to the CA, and how long past it to wait.
const WINDOW: Duration = Duration::from_secs(4);
const SLACK: Duration = Duration::from_secs(20);

/// The authority ids every served SVID's intermediates have.
async fn served_intermediates(client: &spiffe::WorkloadApiClient) -> Vec<Vec<String>> {
    client
        .fetch_all_x509_svids()
        .await
        .unwrap()
        .iter()
        .map(|s| {
            chain_of(s)
                .iter()
                .skip(1)
                .map(|c| authority_id(c))
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn svids_under_a_tainted_intermediate_are_replaced_and_then_it_can_be_revoked() {
    let node = Node::start_with(
        CaOptions::default().flag("taint-reissue-window", format!("{}s", WINDOW.as_secs())),
        &[],
    )
    .await;
    let paths = ["/w0", "/w1", "/w2", "/w3"];
    for p in paths {
        node.entry(p, &me(), &[]).await;
    }
    for p in paths {
        node.wait_for_svid(p).await;
    }
    let client = node.client().await;
    let mut admin = node.ca.admin().await.unwrap();
    let authorities = admin
        .list_authorities(pb::ListAuthoritiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .authorities;
    let active = authorities
        .iter()
        .find(|a| {
            a.kind() == pb::AuthorityKind::Intermediate && a.state() == pb::AuthorityState::Active
        })
        .expect("an active intermediate")
        .id
        .clone();
    let before = served_intermediates(&client).await;
    assert_eq!(before.len(), paths.len());
    assert!(
        before
            .iter()
            .all(|ids| ids == std::slice::from_ref(&active)),
        "{before:?}"
    );

    admin
        .taint_authority(pb::TaintAuthorityRequest { id: active.clone() })
        .await
        .unwrap();

    // Every SVID is replaced by one that does not chain through it.
    let deadline = Instant::now() + WINDOW + SLACK;
    loop {
        let now = served_intermediates(&client).await;
        if now.len() == paths.len() && now.iter().all(|ids| !ids.contains(&active)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SVIDs still chain through the tainted {active}: {now:?}\n--- agent log ---\n{}",
            node.agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The agent reports it (its node SVID included), so the CA lets the
    // tainted intermediate be revoked without force.
    let deadline = Instant::now() + SLACK;
    loop {
        match admin
            .revoke_authority(pb::RevokeAuthorityRequest {
                id: active.clone(),
                force: false,
            })
            .await
        {
            Ok(_) => break,
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
                assert!(
                    Instant::now() < deadline,
                    "the CA never let {active} be revoked: {}\n--- agent log ---\n{}",
                    s.message(),
                    node.agent.log()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    // The revocation reaches workloads as CRLs.
    let mut raw = node.raw_client().await;
    let deadline = Instant::now() + SLACK;
    loop {
        let mut req = tonic::Request::new(X509BundlesRequest {});
        req.metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
        let mut stream = raw.fetch_x509_bundles(req).await.unwrap().into_inner();
        let m = stream.message().await.unwrap().unwrap();
        if !m.crl.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no CRL reached the Workload API");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And every SVID still validates against the bundle served now.
    assert_eq!(
        client.fetch_all_x509_svids().await.unwrap().len(),
        paths.len()
    );
}
