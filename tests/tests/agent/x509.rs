//! X.509-SVIDs and bundles through the Workload API, judged by openssl and
//! compared with what the CA holds.

use signet_tests::{Purpose, openssl_verify};

use crate::{Node, chain_of, me};

#[tokio::test]
async fn this_process_gets_an_x509_svid_that_openssl_accepts() {
    let node = Node::start(&[]).await;
    node.entry("/web", &me(), &[]).await;
    let svid = node.wait_for_svid("/web").await;
    assert_eq!(svid.spiffe_id().to_string(), node.ca.id("/web"));

    // The key belongs to the leaf: the spiffe crate checked that when it
    // parsed the response; here openssl judges the chain.
    let chain = chain_of(&svid);
    for purpose in [Purpose::SslClient, Purpose::SslServer] {
        let (ok, text) = openssl_verify(purpose, &node.ca.bundle_path(), &chain).unwrap();
        assert!(ok, "openssl verify ({purpose:?}) refused the SVID: {text}");
    }

    // The default SVID is the only one, and the full fetch agrees.
    let client = node.client().await;
    let default = client.fetch_x509_svid().await.unwrap();
    assert_eq!(default.spiffe_id(), svid.spiffe_id());
    let context = client.fetch_x509_context().await.unwrap();
    assert_eq!(context.svids().len(), 1);
}

#[tokio::test]
async fn x509_and_jwt_bundles_are_the_cas() {
    let node = Node::start(&[]).await;
    node.entry("/web", &me(), &[]).await;
    node.wait_for_svid("/web").await;
    let client = node.client().await;
    let td = spiffe::TrustDomain::try_from(node.ca.trust_domain().as_str()).unwrap();
    let ca_bundle = node.ca.bundle().unwrap();

    let bundles = client.fetch_x509_bundles().await.unwrap();
    let own = bundles
        .get(&td)
        .expect("a bundle for the agent's trust domain");
    let served: Vec<&[u8]> = own.authorities().iter().map(|c| c.as_bytes()).collect();
    let expected: Vec<&[u8]> = ca_bundle
        .x509_authorities()
        .iter()
        .map(AsRef::as_ref)
        .collect();
    assert_eq!(served, expected, "X.509 authorities differ from bundle.pem");

    // The JWT bundle carries the CA's JWT-SVID keys (bundle.pem has no JWT
    // keys, so ask the admin API).
    let admin_bundle = node
        .ca
        .admin()
        .await
        .unwrap()
        .get_bundle(signet_proto::ca::v1::GetBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!admin_bundle.jwt_authorities.is_empty());
    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    let jwt = jwt_bundles.get(&td).expect("a JWT bundle");
    for authority in &admin_bundle.jwt_authorities {
        assert!(
            jwt.find_jwt_authority(&authority.key_id).is_some(),
            "JWT key {} missing from the Workload API's JWT bundle",
            authority.key_id
        );
    }
}
