//! DeltaSecrets: only what changed.

use super::*;

async fn next_delta(
    responses: &mut tonic::Streaming<DeltaDiscoveryResponse>,
) -> DeltaDiscoveryResponse {
    timeout(PATIENCE, responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn delta_sends_only_what_changed() {
    let ca = Ca::new(TD);
    let h = Harness::start(web_snapshot(1, &ca, ca.svid("e-web", WEB))).await;
    let delta = |subscribe: &[&str], nonce: &str, known: &[(&str, &str)]| DeltaDiscoveryRequest {
        node: Some(node(None)),
        type_url: SECRET_TYPE_URL.to_owned(),
        resource_names_subscribe: subscribe.iter().map(|n| (*n).to_owned()).collect(),
        initial_resource_versions: known
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        response_nonce: nonce.to_owned(),
        ..DeltaDiscoveryRequest::default()
    };

    let (tx, rx) = mpsc::channel(8);
    tx.send(delta(&["default"], "", &[])).await.unwrap();
    let mut responses = h
        .client()
        .delta_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let r1 = next_delta(&mut responses).await;
    assert_eq!(r1.resources.len(), 1);
    assert_eq!(r1.resources[0].name, "default");
    let v1 = r1.resources[0].version.clone();
    let secret =
        Secret::decode(r1.resources[0].resource.as_ref().unwrap().value.as_slice()).unwrap();
    assert_is_svid(&secret, "default", &h.snapshots.borrow().svids["e-web"]);

    // ACK, then a new subscription on the same stream: only the new one.
    tx.send(delta(&[], &r1.nonce, &[])).await.unwrap();
    tx.send(delta(&["ROOTCA"], &r1.nonce, &[])).await.unwrap();
    let r2 = next_delta(&mut responses).await;
    let names: Vec<&str> = r2.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["ROOTCA"]);
    tx.send(delta(&[], &r2.nonce, &[])).await.unwrap();

    // Rotation: only the certificate.
    h.snapshots
        .send_replace(web_snapshot(2, &ca, ca.svid("e-web", WEB)));
    let r3 = next_delta(&mut responses).await;
    let names: Vec<&str> = r3.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["default"]);
    let v3 = r3.resources[0].version.clone();
    assert_ne!(v3, v1);

    // A reconnecting client that already holds the current version gets
    // nothing until something changes.
    let (tx2, rx2) = mpsc::channel(8);
    tx2.send(delta(&["default"], "", &[("default", &v3)]))
        .await
        .unwrap();
    let mut again = h
        .client()
        .delta_secrets(ReceiverStream::new(rx2))
        .await
        .unwrap()
        .into_inner();
    assert!(timeout(QUIET, again.message()).await.is_err());
    drop((tx, tx2));
    h.stop().await;
}
