//! The mesh APIs authenticated by signet-k8s against its fake API server
//! (TokenReview, pods by node, ConfigMaps), as they run in a cluster.

use std::sync::Arc;

use signet_k8s::fake::{FakeApiServer, FakeToken};
use signet_k8s::k8s_openapi::api::core::v1::{Pod, PodSpec};
use signet_k8s::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use signet_proto::istio::v1::auth::IstioCertificateRequest;
use signet_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateService;
use tokio::sync::watch;
use tonic::{Code, Request};

use super::MeshAuth;
use super::istio::IstioApi;
use super::kube::{ISTIO_ROOT_CONFIGMAP, ISTIO_ROOT_KEY, Kube, publish_roots, roots_pem};
use super::pods::{PodCache, run_pod_watch};
use super::tests::{check_istio_chain, csr_with, mesh_config};
use crate::ca::testing::{TestClock, audit, open};
use crate::config::Settings;

fn pod(ns: &str, name: &str, sa: &str, node: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            uid: Some(format!("uid-{name}")),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            service_account_name: Some(sa.into()),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

fn token(ns: &str, sa: &str, aud: &str, pod: &str, node: &str) -> FakeToken {
    FakeToken {
        namespace: ns.into(),
        service_account: sa.into(),
        audiences: vec![aud.into()],
        pod: Some((pod.into(), format!("uid-{pod}"))),
        node: Some((node.into(), format!("uid-{node}"))),
        expired: false,
    }
}

fn request(token: &str, csr: &str, impersonate: Option<&str>) -> Request<IstioCertificateRequest> {
    let metadata = impersonate.map(|id| prost_types::Struct {
        fields: [(
            "ImpersonatedIdentity".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(id.into())),
            },
        )]
        .into(),
    });
    let mut req = Request::new(IstioCertificateRequest {
        csr: csr.into(),
        validity_duration: 3600,
        metadata,
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req.metadata_mut()
        .insert("clusterid", "Kubernetes".parse().unwrap());
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_through_the_fake_api_server() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply_pod(pod("default", "web-1", "web", "node-a"));
    fake.apply_pod(pod("default", "db-1", "db", "node-b"));
    fake.apply_pod(pod("istio-system", "ztunnel-a", "ztunnel", "node-a"));
    fake.add_token(
        "web",
        token("default", "web", "istio-ca", "web-1", "node-a"),
    );
    fake.add_token(
        "web-vault",
        token("default", "web", "vault", "web-1", "node-a"),
    );
    fake.add_token(
        "zt",
        token("istio-system", "ztunnel", "istio-ca", "ztunnel-a", "node-a"),
    );
    fake.add_token(
        "gone",
        token("default", "web", "istio-ca", "web-0", "node-a"),
    );
    let kube = Arc::new(Kube(fake.client().await.unwrap()));
    let (pods, _stop) = watched_pods(&fake).await;

    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(open(
        dir.path(),
        &TestClock::at(std::time::SystemTime::now()),
        Settings::default(),
    ));
    let api = IstioApi::new(MeshAuth {
        ca: ca.clone(),
        config: Arc::new(mesh_config()),
        reviewer: kube,
        pods,
    });
    let web = "spiffe://test.org/ns/default/sa/web";
    let db = "spiffe://test.org/ns/default/sa/db";
    let web_csr = csr_with(&[web], &[]).0;
    let db_csr = csr_with(&[db], &[]).0;

    let resp = api
        .create_certificate(request("web", &web_csr, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(check_istio_chain(dir.path(), &resp), [web]);
    let resp = api
        .create_certificate(request("zt", &web_csr, Some(web)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(check_istio_chain(dir.path(), &resp), [web]);

    for (what, req, code) in [
        (
            "token for another audience",
            request("web-vault", &web_csr, None),
            Code::Unauthenticated,
        ),
        (
            "forged token",
            request("made-up", &web_csr, None),
            Code::Unauthenticated,
        ),
        (
            "token of a deleted pod",
            request("gone", &web_csr, None),
            Code::Unauthenticated,
        ),
        (
            "CSR for another identity",
            request("web", &db_csr, None),
            Code::PermissionDenied,
        ),
        (
            "impersonation by a workload",
            request("web", &db_csr, Some(db)),
            Code::PermissionDenied,
        ),
        (
            "impersonation of an SA on another node",
            request("zt", &db_csr, Some(db)),
            Code::PermissionDenied,
        ),
    ] {
        let err = api.create_certificate(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err:?}");
    }
    // An API server that ignores the requested audiences still names the
    // token's own: a Vault token must not pass for Istio's.
    fake.set_ignore_requested_audiences(true);
    let err = api
        .create_certificate(request("web-vault", &web_csr, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    fake.set_ignore_requested_audiences(false);
    let records = audit(&ca);
    let count = |result: &str| {
        records
            .iter()
            .filter(|r| r.action == super::istio::ACTION && r.result == result)
            .count()
    };
    assert_eq!(count("issued"), 2);
    assert_eq!(count("rejected"), 7);
    // TokenReviews asked for Istio's audience; pods were listed once and
    // watched, not fetched per call.
    let calls = fake.requests();
    assert!(calls.iter().any(|r| r.path.ends_with("/tokenreviews")));
    assert_eq!(pod_calls(&fake, "list"), 1, "{calls:?}");
    assert!(pod_calls(&fake, "watch") >= 1, "{calls:?}");
}

/// How many pod requests of this RBAC verb the fake served.
fn pod_calls(fake: &FakeApiServer, verb: &str) -> usize {
    fake.requests()
        .iter()
        .filter_map(signet_k8s::fake::Request::rbac)
        .filter(|(_, resource, v)| resource == "pods" && v == verb)
        .count()
}

/// Waits (up to 20 s) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen");
}

/// A pod cache kept by `run_pod_watch` against `fake`, synced; it stops
/// when the sender is dropped or set.
async fn watched_pods(fake: &FakeApiServer) -> (Arc<PodCache>, watch::Sender<bool>) {
    let cache = Arc::new(PodCache::new());
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(run_pod_watch(
        fake.client().await.unwrap(),
        cache.clone(),
        stopped,
    ));
    until("the first sync", || cache.is_synced()).await;
    (cache, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonation_follows_the_pod_watch() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply_pod(pod("istio-system", "ztunnel-a", "ztunnel", "node-a"));
    fake.add_token(
        "zt",
        token("istio-system", "ztunnel", "istio-ca", "ztunnel-a", "node-a"),
    );
    let kube = Arc::new(Kube(fake.client().await.unwrap()));
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(open(
        dir.path(),
        &TestClock::at(std::time::SystemTime::now()),
        Settings::default(),
    ));
    let api_with = |pods: Arc<PodCache>| {
        IstioApi::new(MeshAuth {
            ca: ca.clone(),
            config: Arc::new(mesh_config()),
            reviewer: kube.clone(),
            pods,
        })
    };
    let web = "spiffe://test.org/ns/default/sa/web";
    let web_csr = csr_with(&[web], &[]).0;

    // A cache that has not synced refuses, with a reason, and issues nothing.
    let unsynced = api_with(Arc::new(PodCache::new()));
    let err = unsynced
        .create_certificate(request("zt", &web_csr, Some(web)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("has not synced"), "{err:?}");

    let (pods, stop) = watched_pods(&fake).await;
    let api = api_with(pods.clone());
    let err = api
        .create_certificate(request("zt", &web_csr, Some(web)))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "no web pod yet: {err:?}"
    );

    // Scheduled on node-a after the CA started: impersonable.
    fake.apply_pod(pod("default", "web-1", "web", "node-a"));
    until("the new pod reaching the cache", || {
        pods.has_pod("default", "web", "node-a").unwrap()
    })
    .await;
    let resp = api
        .create_certificate(request("zt", &web_csr, Some(web)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(check_istio_chain(dir.path(), &resp), [web]);

    // Bookmarks move the watch on without changing anything.
    fake.bookmark();
    // Deleted: no longer.
    fake.delete_pod("default", "web-1");
    until("the deletion reaching the cache", || {
        !pods.has_pod("default", "web", "node-a").unwrap()
    })
    .await;
    let err = api
        .create_certificate(request("zt", &web_csr, Some(web)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Every decision came from the cache: one list, whatever the calls.
    assert_eq!(pod_calls(&fake, "list"), 1);
    stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_is_published_to_every_namespace() {
    let fake = FakeApiServer::start().await.unwrap();
    for ns in ["default", "istio-system", "shop"] {
        fake.add_namespace(ns);
    }
    let client = fake.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = open(
        dir.path(),
        &TestClock::at(std::time::SystemTime::now()),
        Settings::default(),
    );
    let n = publish_roots(&client, &ca.bundle()).await.unwrap();
    assert!(n >= 3, "{n}");
    let want = roots_pem(&ca.bundle());
    assert!(want.starts_with("-----BEGIN CERTIFICATE-----"));
    for ns in ["default", "istio-system", "shop"] {
        let cm = fake.config_map(ns, ISTIO_ROOT_CONFIGMAP).unwrap();
        assert_eq!(cm.data.unwrap()[ISTIO_ROOT_KEY], want, "{ns}");
    }
}
