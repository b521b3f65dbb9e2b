//! Identities without registration, end to end: the real signet-ca follows the fake
//! Kubernetes API server's pods and derives entries from a `[[k8s.policy]]` (no entry
//! is created); the real signet-agent attests its node with k8s_psat and its workloads
//! with the pod attestor (a fake kubelet, a test-built /proc root); two Envoys stand for
//! two pods of the node, get their identities over SDS and talk mTLS; openssl judges
//! what they were given. Deleting a pod in the API removes its entry and the agent
//! stops serving it, although the (lagging) kubelet still lists it; a pod on another
//! node is not authorized for this one.
//!
//! Needs root (Envoys run under other uids), Envoy and the workspace binaries.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use signet_k8s::fake::{FakeApiServer, FakeToken};
use signet_k8s::k8s_openapi::api::core::v1::{Node, Pod, PodSpec, PodStatus};
use signet_k8s::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use signet_proto::ca::v1 as pb;
use signet_tests::{
    AgentProcess, CaOptions, CaProcess, EnvoyOptions, EnvoyProcess, FakeKubelet, Purpose,
    SERVER_BODY, binary, emulate_proc, envoy_binary, openssl_verify, pod_json,
};
use tokio::io::AsyncWriteExt as _;

const CLUSTER: &str = "c1";
const NS: &str = "shop";
const WEB_UID: &str = "6c1d2e3f-4a5b-4c6d-8e7f-0a1b2c3d4e5f";
const API_UID: &str = "7d2e3f4a-5b6c-4d7e-8f90-1b2c3d4e5f60";
const FAR_UID: &str = "8e3f4a5b-6c7d-4e8f-9012-2c3d4e5f6071";
const WEB_CONTAINER: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const API_CONTAINER: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const WEB_ENVOY_UID: u32 = 4251;
const API_ENVOY_UID: u32 = 4252;
const WAIT: Duration = Duration::from_secs(20);

fn cgroup_of(pod_uid: &str, container_id: &str) -> String {
    format!(
        "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{container_id}.scope\n",
        pod_uid.replace('-', "_")
    )
}

fn pod(name: &str, uid: &str, sa: &str, node: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some(NS.into()),
            name: Some(name.into()),
            uid: Some(uid.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            service_account_name: Some(sa.into()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        }),
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

/// `signet ca entry list --output json`, as JSON.
async fn entries(ca: &CaProcess) -> Vec<Value> {
    let out = ca
        .signet_ca(["entry", "list", "--output", "json"])
        .await
        .unwrap()
        .ok()
        .unwrap();
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    v["entries"].as_array().unwrap().clone()
}

async fn wait_entries(ca: &CaProcess, what: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let e = entries(ca).await;
        if ok(&e) {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: entries are {e:#?}\n--- CA log ---\n{}",
            ca.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `signet agent svid fetch` as a process placed in `container` of pod `pod_uid`.
async fn fetch_in_pod(proc_root: &Path, socket: &Path, pod_uid: &str, container: &str) -> Output {
    let signet = binary("signet").unwrap();
    let mut child = tokio::process::Command::new("/bin/sh")
        .args([
            "-c",
            "read go && exec \"$0\" agent svid fetch --socket \"$1\"",
        ])
        .arg(&signet)
        .arg(socket)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    emulate_proc(
        proc_root,
        child.id().unwrap(),
        &cgroup_of(pod_uid, container),
    )
    .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").await.unwrap();
    drop(stdin);
    child.wait_with_output().await.unwrap()
}

/// Starts an Envoy and places it in its pod's container (in the agent's /proc root)
/// as soon as it has a PID; it retries SDS until the agent recognizes it.
async fn envoy_in_pod(
    opts: EnvoyOptions,
    proc_root: &Path,
    pod_uid: &str,
    container: &str,
) -> EnvoyProcess {
    let mut envoy = EnvoyProcess::spawn(opts).await.unwrap();
    emulate_proc(
        proc_root,
        envoy.pid().unwrap(),
        &cgroup_of(pod_uid, container),
    )
    .unwrap();
    envoy.wait_live(WAIT).await.unwrap();
    envoy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_in_two_pods_get_policy_identities_with_no_entry_created() {
    envoy_binary().unwrap();
    // The API server: nodes n1 and n2, the agent's pod on n1, two workload pods on n1
    // and one on n2.
    let fake = FakeApiServer::start().await.unwrap();
    let n1 = fake.apply_node(node("n1"));
    let n2 = fake.apply_node(node("n2"));
    let n1_uid = n1.metadata.uid.clone().unwrap();
    let n2_uid = n2.metadata.uid.clone().unwrap();
    let agent_pod = fake.apply_pod(pod("agent-1", "", "agent", "n1"));
    fake.apply_pod(pod("web-1", WEB_UID, "web", "n1"));
    fake.apply_pod(pod("api-1", API_UID, "api", "n1"));
    fake.apply_pod(pod("far-1", FAR_UID, "far", "n2"));
    fake.add_token(
        "agent-token",
        FakeToken {
            namespace: NS.into(),
            service_account: "agent".into(),
            audiences: vec!["signet-ca".into()],
            pod: Some(("agent-1".into(), agent_pod.metadata.uid.clone().unwrap())),
            node: Some(("n1".into(), n1_uid.clone())),
            expired: false,
        },
    );

    // The CA: k8s_psat and one pod policy, no entry.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig).unwrap();
    let ca_config = dir.path().join("ca.toml");
    std::fs::write(
        &ca_config,
        format!(
            "[k8s]\nkubeconfig = {kubeconfig:?}\ncluster = \"{CLUSTER}\"\n\
             psat_allowed_service_accounts = [\"{NS}:agent\"]\n\n\
             [[k8s.policy]]\nname = \"mesh\"\nnamespaces = [\"{NS}\"]\n\
             dns_name_templates = [\"{{{{sa}}}}.{{{{ns}}}}.svc\"]\n"
        ),
    )
    .unwrap();
    let ca = CaProcess::start(CaOptions::default().flag("config", ca_config.display().to_string()))
        .await
        .unwrap();
    let n1_id = ca.id(&format!("/signet/node/{CLUSTER}/{n1_uid}"));
    let n2_id = ca.id(&format!("/signet/node/{CLUSTER}/{n2_uid}"));
    let web_id = ca.id("/ns/shop/sa/web");
    let api_id = ca.id("/ns/shop/sa/api");
    let far_id = ca.id("/ns/shop/sa/far");

    // The policy's entries: one per pod in the namespace (the agent's own pod too),
    // each parented to its pod's node, none stored.
    let listed = wait_entries(&ca, "three workload entries", |e| {
        [&web_id, &api_id, &far_id]
            .iter()
            .all(|id| e.iter().any(|x| x["spiffe_id"] == **id))
    })
    .await;
    for x in &listed {
        assert_eq!(x["origin"], "policy:mesh", "{x:#}");
    }
    let parent_of = |id: &str| {
        listed.iter().find(|x| x["spiffe_id"] == id).unwrap()["parent_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(parent_of(&web_id), n1_id);
    assert_eq!(parent_of(&far_id), n2_id);
    let web = listed.iter().find(|x| x["spiffe_id"] == web_id).unwrap();
    assert_eq!(web["dns_names"], serde_json::json!(["web.shop.svc"]));
    let selectors: Vec<String> = web["selectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}:{}",
                s["type"].as_str().unwrap(),
                s["value"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        selectors.contains(&format!("k8s:pod-uid:{WEB_UID}")),
        "{selectors:?}"
    );
    // The text listing names the origin too.
    let text = ca.signet_ca(["entry", "list"]).await.unwrap().ok().unwrap();
    assert!(text.stdout.contains("policy:mesh"), "{}", text.stdout);
    // A derived entry cannot be deleted through the API.
    let id = web["id"].as_str().unwrap();
    let refused = ca.signet_ca(["entry", "delete", id]).await.unwrap();
    assert!(!refused.success());
    assert!(
        refused.stderr.contains("FailedPrecondition")
            || refused.stderr.contains("failed precondition"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("policy:mesh"), "{}", refused.stderr);

    // The node n1: agent with k8s_psat and the pod attestor on a fake kubelet that
    // lists n1's pods.
    let kubelet = FakeKubelet::start().await.unwrap();
    kubelet.set_pods(vec![
        pod_json(
            NS,
            "web-1",
            WEB_UID,
            "web",
            "n1",
            &[],
            &[("web", "envoy:1", WEB_CONTAINER)],
        ),
        pod_json(
            NS,
            "api-1",
            API_UID,
            "api",
            "n1",
            &[],
            &[("api", "envoy:1", API_CONTAINER)],
        ),
    ]);
    let proc_root = kubelet.dir().join("proc");
    std::fs::create_dir_all(&proc_root).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "agent-token\n").unwrap();
    let agent_config = dir.path().join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "[k8s_workload]\nkubelet_url = {:?}\nkubelet_ca_file = {:?}\nkubelet_token_file = {:?}\n\
             node_name = \"n1\"\nproc_root = {:?}\npoll_attempts = 3\npoll_interval = \"100ms\"\ncache_ttl = \"1s\"\n",
            kubelet.url(),
            kubelet.ca_file(),
            kubelet.token_file(),
            proc_root,
        ),
    )
    .unwrap();
    let agent = AgentProcess::start_k8s_psat(
        &ca,
        &format!("{CLUSTER}/{n1_uid}"),
        &token_file,
        &["--config", agent_config.to_str().unwrap()],
    )
    .await
    .unwrap();
    std::fs::set_permissions(agent.scratch_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sds = agent.sds_socket();

    // Two pods, two Envoys, mTLS between them with the policy's identities.
    let server = envoy_in_pod(
        EnvoyOptions::server("web", WEB_ENVOY_UID, sds, &api_id),
        &proc_root,
        WEB_UID,
        WEB_CONTAINER,
    )
    .await;
    let client = envoy_in_pod(
        EnvoyOptions::client("api", API_ENVOY_UID, sds, server.port().unwrap(), &web_id),
        &proc_root,
        API_UID,
        API_CONTAINER,
    )
    .await;
    for (envoy, id, purpose) in [
        (&server, &web_id, Purpose::SslServer),
        (&client, &api_id, Purpose::SslClient),
    ] {
        let leaves = envoy.leaf_certs().await.unwrap();
        assert!(
            !leaves.is_empty() && leaves.iter().all(|c| c.uri_sans == [id.clone()]),
            "{}: {leaves:?}",
            envoy.name()
        );
        for chain in envoy.secret_chains().await.unwrap() {
            let chain: Vec<_> = chain
                .into_iter()
                .map(rustls_pki_types::CertificateDer::from)
                .collect();
            let (ok, out) = openssl_verify(purpose, &ca.bundle_path(), &chain).unwrap();
            assert!(ok, "openssl refused {}'s chain: {out}", envoy.name());
        }
    }
    let answer = client.get("/").await.unwrap();
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, SERVER_BODY),
        "api → web over mTLS\n{}\n{}",
        client.log(),
        server.log()
    );

    // Node n2's pod is not authorized for n1: the agent never lists it, and n1's
    // authorized entries (as the CA says) are n1's pods only.
    assert!(!agent.log().contains(FAR_UID), "{}", agent.log());

    // The web pod is deleted in the API (the kubelet still lists it): its entry goes,
    // and the agent stops serving its identity.
    fake.delete_pod(NS, "web-1");
    wait_entries(&ca, "the web entry removed", |e| {
        !e.iter().any(|x| x["spiffe_id"] == web_id) && e.iter().any(|x| x["spiffe_id"] == api_id)
    })
    .await;
    let socket = agent.workload_api_socket().to_owned();
    let deadline = Instant::now() + WAIT;
    loop {
        let out = fetch_in_pod(&proc_root, &socket, WEB_UID, WEB_CONTAINER).await;
        if !String::from_utf8_lossy(&out.stdout).contains(&web_id) {
            assert!(
                !out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "web still served\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The other pod is still served.
    let out = fetch_in_pod(&proc_root, &socket, API_UID, API_CONTAINER).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&api_id),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    drop((client, server));
}

/// A node attested with k8s_psat is refused the entries of pods on other nodes; the
/// refusal names no more than the entry, and nothing is issued.
#[tokio::test]
async fn a_node_is_not_authorized_for_another_nodes_pod() {
    let fake = FakeApiServer::start().await.unwrap();
    let n1 = fake.apply_node(node("n1"));
    fake.apply_node(node("n2"));
    let n1_uid = n1.metadata.uid.clone().unwrap();
    let agent_pod = fake.apply_pod(pod("agent-1", "", "agent", "n1"));
    fake.apply_pod(pod("far-1", FAR_UID, "far", "n2"));
    fake.apply_pod(pod("near-1", WEB_UID, "near", "n1"));
    fake.add_token(
        "t",
        FakeToken {
            namespace: NS.into(),
            service_account: "agent".into(),
            audiences: vec!["signet-ca".into()],
            pod: Some(("agent-1".into(), agent_pod.metadata.uid.clone().unwrap())),
            node: Some(("n1".into(), n1_uid.clone())),
            expired: false,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig).unwrap();
    let ca_config = dir.path().join("ca.toml");
    std::fs::write(
        &ca_config,
        format!(
            "[k8s]\nkubeconfig = {kubeconfig:?}\ncluster = \"{CLUSTER}\"\n\
             psat_allowed_service_accounts = [\"{NS}:agent\"]\n\n[[k8s.policy]]\nname = \"all\"\n"
        ),
    )
    .unwrap();
    let ca = CaProcess::start(CaOptions::default().flag("config", ca_config.display().to_string()))
        .await
        .unwrap();
    let far_id = ca.id("/ns/shop/sa/far");
    let near_id = ca.id("/ns/shop/sa/near");
    let listed = wait_entries(&ca, "far and near entries", |e| {
        [&far_id, &near_id]
            .iter()
            .all(|id| e.iter().any(|x| x["spiffe_id"] == **id))
    })
    .await;
    let far_entry = listed.iter().find(|x| x["spiffe_id"] == far_id).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Attest as n1 with the agent's token, as the agent would.
    let (key, csr) = signet_tests::new_key_and_csr().unwrap();
    let attested = ca
        .node_client(None)
        .await
        .unwrap()
        .attest_node(pb::AttestNodeRequest {
            join_token: String::new(),
            csr,
            k8s_psat_token: b"t".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let svid = attested.svid.unwrap();
    let chain_pem = signet_tests::pem_chain(&signet_tests::chain_of(&svid));
    let key_pem = key.to_pem().to_string();
    let mut node = ca.node_client(Some((&chain_pem, &key_pem))).await.unwrap();
    let listed = node
        .list_authorized_entries(pb::ListAuthorizedEntriesRequest {})
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = listed
        .entries
        .iter()
        .map(|e| e.spiffe_id.as_str())
        .collect();
    assert!(ids.contains(&near_id.as_str()), "{ids:?}");
    assert!(!ids.contains(&far_id.as_str()), "{ids:?}");
    assert!(listed.entries.iter().all(|e| e.origin == "policy:all"));

    let mark = ca.audit_mark().unwrap();
    let (_k, csr) = signet_tests::new_key_and_csr().unwrap();
    let signed = node
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            items: vec![pb::SignRequestItem {
                entry_id: far_entry.clone(),
                csr,
                ttl_seconds: 0,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    match &signed.results[0].result {
        Some(pb::sign_result::Result::Error(e)) => {
            assert_eq!(e.code, tonic::Code::PermissionDenied as i32, "{e:?}");
        }
        other => panic!("the far pod's entry was signed for n1: {other:?}"),
    }
    let rows = ca.audit_since(mark).unwrap();
    assert!(rows.iter().all(|r| r.result != "issued"), "{rows:#?}");
    assert!(
        rows.iter()
            .any(|r| r.result == "rejected" && r.detail.contains(&far_entry)),
        "{rows:#?}"
    );
}
