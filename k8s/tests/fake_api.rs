//! KubeApi against the fake API server: every call Signet makes, with its refusals.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail the test loudly

use std::collections::BTreeMap;

use futures::StreamExt;
use signet_k8s::fake::{FakeApiServer, FakeToken};
use signet_k8s::k8s_openapi::api::core::v1::{Node, Pod, PodSpec};
use signet_k8s::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use signet_k8s::{K8sError, PodEvent, TokenReviewer};

fn pod(ns: &str, name: &str, node: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            service_account_name: Some("default".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(name: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn aud(a: &str) -> Vec<String> {
    vec![a.to_string()]
}

async fn setup() -> (FakeApiServer, Pod, Node) {
    let fake = FakeApiServer::start().await.unwrap();
    let n = fake.apply_node(node("n1"));
    let p = fake.apply_pod(pod("signet", "agent-x", "n1"));
    let claims = FakeToken {
        namespace: "signet".into(),
        service_account: "agent".into(),
        audiences: aud("signet-ca"),
        pod: Some(("agent-x".into(), p.metadata.uid.clone().unwrap())),
        node: Some(("n1".into(), n.metadata.uid.clone().unwrap())),
        expired: false,
    };
    fake.add_token("good", claims.clone());
    fake.add_token(
        "expired",
        FakeToken {
            expired: true,
            ..claims.clone()
        },
    );
    fake.add_token(
        "other-aud",
        FakeToken {
            audiences: aud("istio-ca"),
            ..claims.clone()
        },
    );
    fake.add_token(
        "stale-pod",
        FakeToken {
            pod: Some(("agent-x".into(), "old-uid".into())),
            ..claims
        },
    );
    (fake, p, n)
}

#[tokio::test]
async fn token_review_good_token() {
    let (fake, p, n) = setup().await;
    let api = fake.client().await.unwrap();
    let r = api.review("good", &aud("signet-ca")).await.unwrap();
    assert_eq!(r.username, "system:serviceaccount:signet:agent");
    assert_eq!(
        (r.namespace.as_str(), r.service_account.as_str()),
        ("signet", "agent")
    );
    assert_eq!(Some(&r.pod_uid), p.metadata.uid.as_ref());
    assert_eq!(Some(&r.node_uid), n.metadata.uid.as_ref());
    assert_eq!(
        (r.pod_name.as_str(), r.node_name.as_str()),
        ("agent-x", "n1")
    );
    assert_eq!(r.audiences, aud("signet-ca"));
    let req = fake
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/tokenreviews"))
        .unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/apis/authentication.k8s.io/v1/tokenreviews");
}

#[tokio::test]
async fn token_review_refusals() {
    let (fake, _, _) = setup().await;
    let api = fake.client().await.unwrap();
    let signet = aud("signet-ca");
    match api.review("expired", &signet).await {
        Err(K8sError::Unauthenticated(e)) => assert!(e.contains("expired"), "{e}"),
        other => panic!("{other:?}"),
    }
    match api.review("forged", &signet).await {
        Err(K8sError::Unauthenticated(_)) => {}
        other => panic!("{other:?}"),
    }
    // The real server refuses a token for another audience when audiences are asked for.
    match api.review("other-aud", &signet).await {
        Err(K8sError::Unauthenticated(e)) => assert!(e.contains("audiences"), "{e}"),
        other => panic!("{other:?}"),
    }
    // An authenticator that ignores the requested audiences is caught by our own check.
    fake.set_ignore_requested_audiences(true);
    match api.review("other-aud", &signet).await {
        Err(K8sError::Audience { got, .. }) => assert_eq!(got, aud("istio-ca")),
        other => panic!("{other:?}"),
    }
    fake.set_ignore_requested_audiences(false);
    match api.review("stale-pod", &signet).await {
        Err(K8sError::Unauthenticated(e)) => assert!(e.contains("uid"), "{e}"),
        other => panic!("{other:?}"),
    }
    fake.delete_pod("signet", "agent-x");
    match api.review("good", &signet).await {
        Err(K8sError::Unauthenticated(e)) => assert!(e.contains("not found"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn callers_without_the_token_get_401() {
    let (fake, _, _) = setup().await;
    let mut config = fake.config().await.unwrap();
    config.auth_info = Default::default();
    let api = signet_k8s::KubeApi::from_config(config).unwrap();
    match api.get_node("n1").await {
        Err(K8sError::Api { code: 401, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn get_pod_and_node() {
    let (fake, p, n) = setup().await;
    let api = fake.client().await.unwrap();
    let got = api.get_pod("signet", "agent-x").await.unwrap().unwrap();
    assert_eq!(got.metadata.uid, p.metadata.uid);
    assert!(api.get_pod("signet", "nope").await.unwrap().is_none());
    assert!(api.get_pod("other", "agent-x").await.unwrap().is_none());
    assert_eq!(
        api.get_node("n1").await.unwrap().unwrap().metadata.uid,
        n.metadata.uid
    );
    assert!(api.get_node("n2").await.unwrap().is_none());
}

async fn next(
    s: &mut (impl futures::Stream<Item = Result<PodEvent, K8sError>> + Unpin),
) -> PodEvent {
    s.next().await.expect("watch ended").expect("watch error")
}

fn name_of(ev: &PodEvent) -> (&'static str, String) {
    match ev {
        PodEvent::Applied(p) => ("applied", p.metadata.name.clone().unwrap()),
        PodEvent::Deleted(p) => ("deleted", p.metadata.name.clone().unwrap()),
        PodEvent::Bookmark(rv) => ("bookmark", rv.clone()),
    }
}

#[tokio::test]
async fn list_then_watch_one_node_with_bookmarks() {
    let (fake, _, _) = setup().await;
    fake.apply_pod(pod("default", "elsewhere", "n2"));
    let api = fake.client().await.unwrap();
    let list = api.list_pods(Some("n1")).await.unwrap();
    let names: Vec<_> = list
        .pods
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, vec!["agent-x"]);
    assert_eq!(api.list_pods(None).await.unwrap().pods.len(), 2);

    // A change made between list and watch is replayed from the list's version.
    fake.apply_pod(pod("default", "web-1", "n1"));
    let mut w = Box::pin(
        api.watch_pods(Some("n1"), &list.resource_version)
            .await
            .unwrap(),
    );
    assert_eq!(name_of(&next(&mut w).await), ("applied", "web-1".into()));
    fake.apply_pod(pod("default", "other-node", "n2"));
    fake.delete_pod("default", "web-1");
    assert_eq!(name_of(&next(&mut w).await), ("deleted", "web-1".into()));
    fake.bookmark();
    let rv = fake.resource_version().to_string();
    assert_eq!(name_of(&next(&mut w).await), ("bookmark", rv.clone()));

    // Resuming from the bookmark sees only what came after it.
    drop(w);
    fake.apply_pod(pod("default", "web-2", "n1"));
    let mut w = Box::pin(api.watch_pods(Some("n1"), &rv).await.unwrap());
    assert_eq!(name_of(&next(&mut w).await), ("applied", "web-2".into()));

    let q = fake
        .requests()
        .into_iter()
        .rfind(|r| r.path == "/api/v1/pods" && r.query.contains("watch=true"))
        .unwrap();
    assert!(
        q.query.contains("fieldSelector=spec.nodeName%3Dn1"),
        "{}",
        q.query
    );
    assert!(q.query.contains("allowWatchBookmarks=true"), "{}", q.query);
}

#[tokio::test]
async fn watch_from_a_compacted_version_is_410() {
    let (fake, _, _) = setup().await;
    let api = fake.client().await.unwrap();
    let old = api.list_pods(None).await.unwrap().resource_version;
    fake.apply_pod(pod("default", "web-1", "n1"));
    fake.compact();
    let mut w = Box::pin(api.watch_pods(None, &old).await.unwrap());
    match w.next().await {
        Some(Err(K8sError::Expired(_))) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn config_map_create_update_and_conflict() {
    let (fake, _, _) = setup().await;
    fake.add_namespace("istio-system");
    let api = fake.client().await.unwrap();
    let data = |v: &str| BTreeMap::from([("root-cert.pem".to_string(), v.to_string())]);
    let rv1 = api
        .put_config_map("istio-system", "istio-ca-root-cert", data("one"))
        .await
        .unwrap();
    // Unchanged data writes nothing.
    assert_eq!(
        api.put_config_map("istio-system", "istio-ca-root-cert", data("one"))
            .await
            .unwrap(),
        rv1
    );

    // Another writer changes it right after our read: our update gets 409 and is retried.
    fake.interfere_with_config_map("istio-system", "istio-ca-root-cert", 2);
    let rv2 = api
        .put_config_map("istio-system", "istio-ca-root-cert", data("two"))
        .await
        .unwrap();
    let stored = fake
        .config_map("istio-system", "istio-ca-root-cert")
        .unwrap();
    assert_eq!(
        stored.metadata.resource_version.as_deref(),
        Some(rv2.as_str())
    );
    assert_eq!(stored.data.unwrap(), data("two"));
    let puts: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .collect();
    assert_eq!(puts.len(), 3, "two conflicts then success");

    // A writer that always loses gives up.
    fake.interfere_with_config_map("istio-system", "istio-ca-root-cert", 100);
    match api
        .put_config_map("istio-system", "istio-ca-root-cert", data("three"))
        .await
    {
        Err(K8sError::Conflict(_)) => {}
        other => panic!("{other:?}"),
    }
    // A namespace that does not exist is a 404, not a retry.
    match api.put_config_map("nope", "x", data("one")).await {
        Err(K8sError::Api { code: 404, .. }) => {}
        other => panic!("{other:?}"),
    }
    let mut ns = api.list_namespaces().await.unwrap();
    ns.sort();
    assert_eq!(ns, vec!["default", "istio-system", "kube-system", "signet"]);
}

#[tokio::test]
async fn kubeconfig_file_round_trip() {
    let (fake, _, _) = setup().await;
    let dir = std::env::temp_dir().join(format!("signet-k8s-kc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    fake.write_kubeconfig(&path).unwrap();
    let api = signet_k8s::KubeApi::connect(&signet_k8s::KubeConnect::Kubeconfig(path))
        .await
        .unwrap();
    assert!(api.get_node("n1").await.unwrap().is_some());
    std::fs::remove_dir_all(&dir).unwrap();
}
