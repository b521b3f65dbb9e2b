//! k8s_psat node attestation: the real signet-ca pointed (by kubeconfig) at the fake
//! Kubernetes API server, the real signet-agent attesting with a projected token file.

use signet_k8s::fake::{FakeApiServer, FakeToken};
use signet_k8s::k8s_openapi::api::core::v1::{Node, Pod, PodSpec};
use signet_k8s::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use signet_proto::ca::v1 as pb;
use signet_tests::{AgentProcess, CaOptions, CaProcess};
use tonic::Code;

use super::assert_rejected_not_issued;

const CLUSTER: &str = "c1";
const ACTION: &str = "attest_node_k8s_psat";

fn pod(ns: &str, name: &str, node: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            service_account_name: Some("agent".into()),
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

struct Cluster {
    fake: FakeApiServer,
    good: FakeToken,
    node_uid: String,
}

/// A fake cluster with node n1 (and n2) and the agent's pod signet/agent-1 on n1.
async fn cluster() -> Cluster {
    let fake = FakeApiServer::start().await.unwrap();
    let n1 = fake.apply_node(node("n1"));
    fake.apply_node(node("n2"));
    let p = fake.apply_pod(pod("signet", "agent-1", "n1"));
    let node_uid = n1.metadata.uid.clone().unwrap();
    let good = FakeToken {
        namespace: "signet".into(),
        service_account: "agent".into(),
        audiences: vec!["signet-ca".into()],
        pod: Some(("agent-1".into(), p.metadata.uid.clone().unwrap())),
        node: Some(("n1".into(), node_uid.clone())),
        expired: false,
    };
    Cluster {
        fake,
        good,
        node_uid,
    }
}

async fn start_ca(fake: &FakeApiServer) -> CaProcess {
    start_ca_with(fake, CaOptions::default()).await
}

async fn start_ca_with(fake: &FakeApiServer, opts: CaOptions) -> CaProcess {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig).unwrap();
    let config = dir.path().join("ca.toml");
    std::fs::write(
        &config,
        format!(
            "[k8s]\nkubeconfig = {:?}\ncluster = \"{CLUSTER}\"\npsat_allowed_service_accounts = [\"signet:agent\"]\n",
            kubeconfig.display().to_string()
        ),
    )
    .unwrap();
    let ca = CaProcess::start(opts.flag("config", config.display().to_string()))
        .await
        .unwrap();
    // The CA read both files at start.
    drop(dir);
    ca
}

async fn attest(ca: &CaProcess, token: &str) -> Result<pb::AttestNodeResponse, tonic::Status> {
    let (_key, csr) = signet_tests::new_key_and_csr().unwrap();
    ca.node_client(None)
        .await
        .unwrap()
        .attest_node(pb::AttestNodeRequest {
            join_token: String::new(),
            csr,
            k8s_psat_token: token.as_bytes().to_vec(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn an_agent_attests_with_its_projected_token() {
    let c = cluster().await;
    c.fake.add_token("agent-token", c.good.clone());
    let ca = start_ca(&c.fake).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "agent-token\n").unwrap();

    let mark = ca.audit_mark().unwrap();
    let name = format!("{CLUSTER}/{}", c.node_uid);
    let _agent = AgentProcess::start_k8s_psat(&ca, &name, &token_file, &[])
        .await
        .unwrap();
    let expected = ca.id(&format!("/signet/node/{CLUSTER}/{}", c.node_uid));
    let rows = ca.audit_since(mark).unwrap();
    assert!(
        rows.iter()
            .any(|r| r.action == ACTION && r.result == "issued" && r.spiffe_id == expected),
        "no issued {ACTION} row for {expected}: {rows:#?}"
    );
    // The CA asked TokenReview for its audience, then read the pod and the node.
    let reqs = c.fake.requests();
    let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    // Every call the CA made is one its RBAC table (which the chart is checked
    // against) allows.
    for r in &reqs {
        let (group, resource, verb) = r.rbac().unwrap();
        assert!(
            signet_k8s::rbac::allowed(signet_k8s::rbac::CA_RBAC, &group, &resource, &verb),
            "{r:?} needs {verb} on {group}/{resource}, not in CA_RBAC"
        );
    }
    for p in [
        "/apis/authentication.k8s.io/v1/tokenreviews",
        "/api/v1/namespaces/signet/pods/agent-1",
        "/api/v1/nodes/n1",
    ] {
        assert!(paths.contains(&p), "{p} not called: {paths:?}");
    }

    // The node is known by its name <cluster>/<uid>: it can be evicted by it.
    let out = ca
        .signet_ca(["agent", "evict", name.as_str()])
        .await
        .unwrap();
    assert!(out.status.success(), "{out}");
}

#[tokio::test]
async fn bad_tokens_are_refused_and_audited() {
    let c = cluster().await;
    let good = c.good.clone();
    c.fake.add_token(
        "expired",
        FakeToken {
            expired: true,
            ..good.clone()
        },
    );
    c.fake.add_token(
        "istio",
        FakeToken {
            audiences: vec!["istio-ca".into()],
            ..good.clone()
        },
    );
    c.fake.add_token(
        "not-allowed",
        FakeToken {
            service_account: "default".into(),
            ..good.clone()
        },
    );
    c.fake.add_token(
        "unbound",
        FakeToken {
            pod: None,
            node: None,
            ..good.clone()
        },
    );
    c.fake.add_token(
        "moved",
        FakeToken {
            node: Some(("n2".into(), "other-uid".into())),
            ..good.clone()
        },
    );
    c.fake.add_token("gone", good.clone());
    let ca = start_ca(&c.fake).await;

    let cases: &[(&str, Code, &str)] = &[
        ("forged", Code::Unauthenticated, "invalid bearer token"),
        ("expired", Code::Unauthenticated, "expired"),
        ("istio", Code::Unauthenticated, "audiences"),
        ("not-allowed", Code::PermissionDenied, "may not attest"),
        ("unbound", Code::PermissionDenied, "not bound to a pod"),
        ("moved", Code::PermissionDenied, "issued on node"),
    ];
    for (token, code, text) in cases {
        let mark = ca.audit_mark().unwrap();
        let err = attest(&ca, token).await.unwrap_err();
        assert_eq!(err.code(), *code, "{token}: {err:?}");
        assert!(err.message().contains(text), "{token}: {}", err.message());
        let rows = assert_rejected_not_issued(&ca, mark, ACTION);
        assert!(
            rows.iter()
                .any(|r| r.result == "rejected" && r.detail.contains(text)),
            "{token}: the audit row does not say why: {rows:#?}"
        );
    }

    // The pod is gone: TokenReview already refuses (the real server checks bound
    // objects); with that check lagging, the CA's own pod lookup refuses.
    c.fake.delete_pod("signet", "agent-1");
    let err = attest(&ca, "gone").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    c.fake.set_bound_object_checks(false);
    let mark = ca.audit_mark().unwrap();
    let err = attest(&ca, "gone").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("no longer exists"),
        "{}",
        err.message()
    );
    assert_rejected_not_issued(&ca, mark, ACTION);

    // A pod of the same name, recreated (new UID): the old token does not pass for it.
    c.fake.apply_pod(pod("signet", "agent-1", "n1"));
    let err = attest(&ca, "gone").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("UID"), "{}", err.message());

    // An authenticator that ignores the requested audience is caught by the CA.
    c.fake.set_ignore_requested_audiences(true);
    let err = attest(&ca, "istio").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // Both credentials at once is a malformed request.
    let (_key, csr) = signet_tests::new_key_and_csr().unwrap();
    let err = ca
        .node_client(None)
        .await
        .unwrap()
        .attest_node(pb::AttestNodeRequest {
            join_token: "x".into(),
            csr,
            k8s_psat_token: b"y".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

#[tokio::test]
async fn without_k8s_settings_psat_is_refused_and_join_tokens_keep_working() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let mark = ca.audit_mark().unwrap();
    let err = attest(&ca, "anything").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_rejected_not_issued(&ca, mark, ACTION);
    // A join token may not claim a Kubernetes node's name.
    let out = ca
        .signet_ca(["token", "create", "--node", "c1/some-uid"])
        .await
        .unwrap();
    assert!(!out.status.success(), "{out}");
    let node = signet_tests::attest_node(&ca, "plain").await.unwrap();
    assert_eq!(node.spiffe_id, ca.node_id("plain"));
}

/// Polls the audit log until `n` issued k8s_psat attestations are recorded.
async fn wait_for_attestations(ca: &CaProcess, mark: i64, n: usize) -> Vec<signet_tests::AuditRow> {
    for _ in 0..150 {
        let rows: Vec<_> = ca
            .audit_since(mark)
            .unwrap()
            .into_iter()
            .filter(|r| r.action == ACTION && r.result == "issued")
            .collect();
        if rows.len() >= n {
            return rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!(
        "fewer than {n} k8s_psat attestations: {:#?}",
        ca.audit_since(mark).unwrap()
    );
}

#[tokio::test]
async fn the_agent_attests_again_when_its_token_rotates_and_not_once_banned() {
    let c = cluster().await;
    c.fake.add_token("token-1", c.good.clone());
    c.fake.add_token("token-2", c.good.clone());
    c.fake.add_token("token-3", c.good.clone());
    let ca = start_ca(&c.fake).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "token-1").unwrap();
    let mark = ca.audit_mark().unwrap();
    let name = format!("{CLUSTER}/{}", c.node_uid);
    let agent = AgentProcess::start_k8s_psat(&ca, &name, &token_file, &[])
        .await
        .unwrap();
    wait_for_attestations(&ca, mark, 1).await;

    // The kubelet rotates the token (a new file swapped in): the agent attests with it.
    let next = dir.path().join("token.new");
    std::fs::write(&next, "token-2").unwrap();
    std::fs::rename(&next, &token_file).unwrap();
    let rows = wait_for_attestations(&ca, mark, 2).await;
    assert_eq!(rows[0].spiffe_id, rows[1].spiffe_id);
    assert_ne!(rows[0].serial, rows[1].serial);
    // The CA records the attestation before the agent has its answer: wait
    // for the agent's own account of it.
    for _ in 0..100 {
        if agent.log().contains("attested again") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(agent.log().contains("attested again"), "{}", agent.log());

    // Banned: the next attempt is refused by name, however valid the token.
    let out = ca.signet_ca(["agent", "ban", name.as_str()]).await.unwrap();
    assert!(out.status.success(), "{out}");
    let mark = ca.audit_mark().unwrap();
    std::fs::write(&next, "token-3").unwrap();
    std::fs::rename(&next, &token_file).unwrap();
    for _ in 0..150 {
        if ca
            .audit_since(mark)
            .unwrap()
            .iter()
            .any(|r| r.action == ACTION && r.result == "rejected")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_rejected_not_issued(&ca, mark, ACTION);
}

#[tokio::test]
async fn an_evicted_kubernetes_node_attests_again_when_renewal_is_refused() {
    let c = cluster().await;
    c.fake.add_token("token-1", c.good.clone());
    // Short node SVIDs: the agent renews every few seconds.
    let ca = start_ca_with(&c.fake, CaOptions::default().flag("node-svid-ttl", "6s")).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "token-1").unwrap();
    let name = format!("{CLUSTER}/{}", c.node_uid);
    let mark = ca.audit_mark().unwrap();
    let agent = AgentProcess::start_k8s_psat(&ca, &name, &token_file, &[])
        .await
        .unwrap();
    wait_for_attestations(&ca, mark, 1).await;
    let out = ca
        .signet_ca(["agent", "evict", name.as_str()])
        .await
        .unwrap();
    assert!(out.status.success(), "{out}");
    // Its renewal is refused; it proves itself again with its (unchanged) token.
    let rows = wait_for_attestations(&ca, mark, 2).await;
    assert_eq!(rows[0].spiffe_id, rows[1].spiffe_id);
    assert!(
        agent.log().contains("node SVID renewal failed"),
        "{}",
        agent.log()
    );
}
