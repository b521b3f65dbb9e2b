//! JWT-SVIDs: fetched for an audience, validated by the agent for that
//! audience and refused for another.

use crate::{Node, me};

#[tokio::test]
async fn a_jwt_svid_validates_for_its_audience_only() {
    let node = Node::start(&[]).await;
    node.entry("/web", &me(), &[]).await;
    node.wait_for_svid("/web").await;
    let client = node.client().await;
    let web = spiffe::SpiffeId::try_from(node.ca.id("/web").as_str()).unwrap();

    let svid = client.fetch_jwt_svid(["db"], None).await.unwrap();
    assert_eq!(svid.spiffe_id(), &web);
    assert_eq!(svid.audience(), ["db".to_owned()]);
    let token = svid.token().to_owned();

    // Asking for the identity by name gives the same subject.
    let named = client.fetch_jwt_svid(["db"], Some(&web)).await.unwrap();
    assert_eq!(named.spiffe_id(), &web);

    let validated = client.validate_jwt_token("db", &token).await.unwrap();
    assert_eq!(validated.spiffe_id(), &web);

    let err = client
        .validate_jwt_token("someone-else", &token)
        .await
        .expect_err("a token for `db` must not validate for another audience");
    assert!(
        err.is_invalid_argument(),
        "expected InvalidArgument, got {err:?}"
    );

    // A token that is not a JWT at all is refused the same way.
    let err = client
        .validate_jwt_token("db", "not.a.jwt")
        .await
        .expect_err("garbage must not validate");
    assert!(err.is_invalid_argument(), "{err:?}");
}
