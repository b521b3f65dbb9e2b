//! Ending a node's attestation: eviction, bans, and the rule that only a
//! node's current SVID (or the one it was renewed from) is honoured.

use std::time::Duration;

use signet_proto::ca::v1 as pb;
use signet_tests::{
    CaOptions, CaProcess, NodeIdentity, attest_node, attest_with_token, chain_of, create_token,
    new_key_and_csr, pem_chain,
};
use tonic::Code;

/// Bound on waiting for a stream to end, so that a stream that never ends
/// fails the test instead of hanging it.
const STREAM_BOUND: Duration = Duration::from_secs(30);

/// Renews `node`'s SVID over a connection presenting it.
async fn renew(ca: &CaProcess, node: &NodeIdentity) -> Result<NodeIdentity, tonic::Status> {
    let (key, csr) = new_key_and_csr().unwrap();
    let svid = ca
        .node_client(Some(node.tls_identity()))
        .await
        .unwrap()
        .renew_node_svid(pb::RenewNodeSvidRequest { csr })
        .await?
        .into_inner()
        .svid
        .unwrap();
    let chain_der = chain_of(&svid);
    Ok(NodeIdentity {
        spiffe_id: svid.spiffe_id,
        chain_pem: pem_chain(&chain_der),
        key_pem: key.to_pem().to_string(),
        chain_der,
        bundle: node.bundle.clone(),
    })
}

async fn list(ca: &CaProcess, node: &NodeIdentity) -> Result<(), tonic::Status> {
    ca.node_client(Some(node.tls_identity()))
        .await
        .unwrap()
        .list_authorized_entries(pb::ListAuthorizedEntriesRequest {})
        .await
        .map(|_| ())
}

#[tokio::test]
async fn eviction_ends_streams_refuses_the_svids_and_needs_a_new_token() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let node = attest_node(&ca, "node-a").await.unwrap();
    let bystander = attest_node(&ca, "node-b").await.unwrap();
    let mut client = ca.node_client(Some(node.tls_identity())).await.unwrap();
    let mut stream = client
        .watch_bundle(pb::WatchBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().expect("the first bundle");

    let out = ca
        .signet_ca(["agent", "evict", "node-a"])
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert!(out.stdout.contains(&node.spiffe_id), "{out}");

    // The open stream ends with PERMISSION_DENIED.
    let end = tokio::time::timeout(STREAM_BOUND, stream.message())
        .await
        .expect("the stream of an evicted node ends");
    let status = end.expect_err("the stream ends with a status");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // The open connection is closed, or refuses.
    let again = client
        .list_authorized_entries(pb::ListAuthorizedEntriesRequest {})
        .await
        .expect_err("an evicted node's connection is of no use");
    assert!(
        matches!(
            again.code(),
            Code::PermissionDenied | Code::Unavailable | Code::Unknown
        ),
        "{again:?}"
    );
    // New connections with its SVID are refused, renewal too.
    assert_eq!(
        list(&ca, &node).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(
        renew(&ca, &node).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // Other nodes are untouched.
    list(&ca, &bystander).await.unwrap();
    // Evicting it again: nothing to evict.
    let twice = ca.signet_ca(["agent", "evict", "node-a"]).await.unwrap();
    assert!(!twice.status.success(), "{twice}");

    // A new join token brings it back, with a new SVID only.
    let back = attest_node(&ca, "node-a").await.unwrap();
    list(&ca, &back).await.unwrap();
    assert_eq!(
        list(&ca, &node).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn a_banned_node_cannot_attest_until_unbanned() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let node = attest_node(&ca, "node-a").await.unwrap();
    let token = create_token(&ca, "node-a", 0).await.unwrap();

    ca.signet_ca(["agent", "ban", &node.spiffe_id])
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(
        list(&ca, &node).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let err = attest_with_token(&ca, &token).await.unwrap_err();
    let status = err.downcast_ref::<tonic::Status>().expect("a gRPC refusal");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("banned"), "{status:?}");

    ca.signet_ca(["agent", "unban", "node-a"])
        .await
        .unwrap()
        .ok()
        .unwrap();
    // The refused attestation did not consume the token.
    let back = attest_with_token(&ca, &token).await.unwrap();
    list(&ca, &back).await.unwrap();
}

#[tokio::test]
async fn only_the_current_and_the_previous_node_svid_may_renew() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let a = attest_node(&ca, "node-a").await.unwrap();
    let b = renew(&ca, &a).await.unwrap();
    let c = renew(&ca, &b).await.unwrap();

    // A is two renewals old: superseded everywhere.
    let err = renew(&ca, &a).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("superseded"), "{err:?}");
    assert_eq!(
        list(&ca, &a).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    list(&ca, &b).await.unwrap();
    list(&ca, &c).await.unwrap();

    // B (the previous one) may renew, as an agent whose answer was lost
    // would; that retires C, so only one renewal lineage goes on.
    let d = renew(&ca, &b).await.unwrap();
    let err = renew(&ca, &c).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    list(&ca, &d).await.unwrap();
    renew(&ca, &d).await.unwrap();
}
