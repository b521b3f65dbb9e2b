//! The mesh APIs authenticated by signet-k8s against its fake API server
//! (TokenReview, pods by node, ConfigMaps), as they run in a cluster.

use std::sync::Arc;

use signet_k8s::fake::{FakeApiServer, FakeToken};
use signet_k8s::k8s_openapi::api::core::v1::{Pod, PodSpec};
use signet_k8s::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use signet_proto::istio::v1::auth::IstioCertificateRequest;
use signet_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateService;
use tonic::{Code, Request};

use super::MeshAuth;
use super::istio::IstioApi;
use super::kube::{ISTIO_ROOT_CONFIGMAP, ISTIO_ROOT_KEY, Kube, publish_roots, roots_pem};
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

    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(open(
        dir.path(),
        &TestClock::at(std::time::SystemTime::now()),
        Settings::default(),
    ));
    let api = IstioApi::new(MeshAuth {
        ca: ca.clone(),
        config: Arc::new(mesh_config()),
        reviewer: kube.clone(),
        pods: kube,
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
    // TokenReviews asked for Istio's audience; pods were listed by node.
    let calls = fake.requests();
    assert!(calls.iter().any(|r| r.path.ends_with("/tokenreviews")));
    assert!(
        calls
            .iter()
            .any(|r| r.path.ends_with("/pods") && r.query.contains("nodeName"))
    );
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
