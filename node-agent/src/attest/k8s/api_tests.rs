//! The pod attestor with the `api` source, against signet-k8s's fake API
//! server (list and watch by `spec.nodeName`, resourceVersions, 410 after
//! compaction, an outage switch) and a test-built /proc root; refusals go
//! through the audit log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use signet_k8s::fake::FakeApiServer;
use signet_k8s::k8s_openapi::api::core::v1::Pod as ApiPod;
use signet_tests::{FakeKubelet, emulate_proc, pod_json};

use tokio::sync::watch;

use super::apiserver::{ApiPodSource, ApiSettings, Health, PodIndex};
use super::kubelet::KubeletSettings;
use super::{K8sAttestor, K8sError, K8sSettings, SourceSettings};
use crate::attest::audit::{AuditLog, AuditSettings, Audited};
use crate::attest::unix::UnixAttestor;
use crate::attest::{AttestError, PeerCred, WorkloadAttestor};
use crate::state::Selector;

const NODE: &str = "node-a";
const UID: &str = "8c2e4a6b-1d3f-4b5a-8c7e-9f0a1b2c3d4e";
const UID_: &str = "8c2e4a6b_1d3f_4b5a_8c7e_9f0a1b2c3d4e";
const ID: &str = "7a9c1e3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c";

fn api_pod(node: &str, container_id: &str) -> ApiPod {
    serde_json::from_value(pod_json(
        "shop",
        "api-web-0",
        UID,
        "web",
        node,
        &[("app", "web")],
        &[("app", "web:3", container_id)],
    ))
    .unwrap()
}

struct Setup {
    server: FakeApiServer,
    dir: tempfile::TempDir,
    proc_root: PathBuf,
    pid: i32,
}

impl Setup {
    async fn new() -> Self {
        let server = FakeApiServer::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path().join("proc");
        let pid = std::process::id();
        emulate_proc(
            &proc_root,
            pid,
            &format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope\n"),
        )
        .unwrap();
        Self {
            server,
            dir,
            proc_root,
            pid: pid as i32,
        }
    }

    fn api_settings(&self, max_staleness: Duration) -> ApiSettings {
        ApiSettings {
            connect: signet_k8s::KubeConnect::InCluster,
            max_pods: 16,
            max_staleness,
            max_backoff: Duration::from_millis(200),
        }
    }

    fn settings(&self, source: SourceSettings, poll_attempts: u32) -> K8sSettings {
        K8sSettings {
            source,
            node_name: NODE.into(),
            proc_root: self.proc_root.clone(),
            cache_ttl: Duration::from_secs(60),
            poll_attempts,
            poll_interval: Duration::from_millis(50),
        }
    }

    /// An attestor on the fake (its client built here, not from settings).
    async fn attestor(&self, max_staleness: Duration, poll_attempts: u32) -> K8sAttestor {
        self.attestor_and_index(max_staleness, poll_attempts)
            .await
            .0
    }

    /// The same, and a receiver of its pod index.
    async fn attestor_and_index(
        &self,
        max_staleness: Duration,
        poll_attempts: u32,
    ) -> (K8sAttestor, watch::Receiver<PodIndex>) {
        let api = self.api_settings(max_staleness);
        let source = ApiPodSource::with_client(self.server.client().await.unwrap(), &api, NODE);
        let index = source.subscribe();
        let a = K8sAttestor::with_api_source(
            source,
            self.settings(SourceSettings::Api(api), poll_attempts),
        );
        (a, index)
    }

    fn peer(&self) -> PeerCred {
        PeerCred {
            pid: self.pid,
            uid: 0,
            gid: 0,
            exe_at_accept: None,
        }
    }

    fn audit(&self) -> (AuditLog, PathBuf) {
        let path = self.dir.path().join("audit.jsonl");
        let log = AuditLog::start(AuditSettings {
            path: path.clone(),
            max_bytes: 1 << 20,
        })
        .unwrap();
        (log, path)
    }
}

fn k8s(value: &str) -> Selector {
    Selector::new("k8s", value)
}

fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Attests until `done` says the outcome is the one waited for.
async fn attest_until(
    what: &str,
    a: &dyn WorkloadAttestor,
    peer: PeerCred,
    done: impl Fn(&Result<Vec<Selector>, AttestError>) -> bool,
) -> Result<Vec<Selector>, AttestError> {
    let mut last = None;
    for _ in 0..400 {
        let r = a.attest(peer).await;
        if done(&r) {
            return r;
        }
        last = Some(r);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: never came; last outcome {last:?}");
}

#[tokio::test]
async fn a_pod_added_after_the_process_started_is_found_through_the_watch() {
    let s = Setup::new().await;
    let a = Arc::new(s.attestor(Duration::from_secs(60), 200).await);
    let peer = s.peer();
    let call = {
        let a = a.clone();
        tokio::spawn(async move { a.attest(peer).await })
    };
    // The caller is waiting before the pod exists; the pod then arrives
    // as a watch event, after the list.
    while !s
        .server
        .requests()
        .iter()
        .any(|r| r.query.contains("watch=true"))
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.server.apply_pod(api_pod(NODE, ID));
    let got = call.await.unwrap().unwrap();
    for w in [
        "ns:shop",
        "sa:web",
        "pod-name:api-web-0",
        "node-name:node-a",
        "pod-label:app:web",
        "container-name:app",
        "container-image:web:3",
    ] {
        assert!(got.contains(&k8s(w)), "{w} missing from {got:?}");
    }
    // Every call was a list or watch of this node's pods only.
    for r in s.server.requests() {
        assert_eq!(r.path, "/api/v1/pods", "{r:?}");
        assert!(r.query.contains("spec.nodeName%3Dnode-a"), "{r:?}");
        let (_, resource, verb) = r.rbac().unwrap();
        assert!(
            signet_k8s::rbac::allowed(signet_k8s::rbac::AGENT_RBAC, "", &resource, &verb),
            "{r:?} not in AGENT_RBAC"
        );
    }
}

#[tokio::test]
async fn another_nodes_pod_a_deleted_pod_and_an_unknown_container_are_refused_and_audited() {
    let s = Setup::new().await;
    let (log, path) = s.audit();
    let (a, mut index) = s.attestor_and_index(Duration::from_secs(60), 3).await;
    let a = Audited::new(Arc::new(a), log.clone());
    // On another node: the field selector leaves it out.
    s.server.apply_pod(api_pod("node-b", ID));
    index
        .wait_for(|ix| ix.health == Health::Live)
        .await
        .unwrap();
    let err = a.attest(s.peer()).await.unwrap_err();
    assert!(
        matches!(err, AttestError::K8s(K8sError::UnknownContainer { .. })),
        "{err:?}"
    );
    assert!(!err.is_unavailable());

    s.server.apply_pod(api_pod(NODE, ID));
    attest_until("step 2", &a, s.peer(), Result::is_ok)
        .await
        .unwrap();
    s.server.delete_pod("shop", "api-web-0");
    let err = attest_until("step 3", &a, s.peer(), Result::is_err)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AttestError::K8s(K8sError::UnknownContainer { .. })),
        "{err:?}"
    );
    log.flush();
    let got = records(&path);
    assert!(got.len() >= 2, "{got:?}");
    for r in &got {
        assert_eq!(r["event"], "workload_refused");
        assert_eq!(r["attestor"], "k8s");
        assert_eq!(r["reason"], "unknown_pod");
        assert_eq!(r["pid"], s.pid);
        assert!(r["detail"].as_str().unwrap().contains(UID), "{r}");
    }
}

#[tokio::test]
async fn an_outage_keeps_known_pods_for_a_while_and_a_410_after_it_lists_again() {
    let s = Setup::new().await;
    let (log, path) = s.audit();
    let staleness = Duration::from_millis(500);
    let a = Audited::new(Arc::new(s.attestor(staleness, 3).await), log.clone());
    s.server.apply_pod(api_pod(NODE, "0".repeat(64).as_str()));
    // Listed and watching.
    let err = attest_until("step 4", &a, s.peer(), |r| {
        matches!(r, Err(AttestError::K8s(K8sError::UnknownContainer { .. })))
    })
    .await
    .unwrap_err();
    assert!(!err.is_unavailable());

    // The API server goes down; meanwhile the pod gets the caller's
    // container and the history is compacted, so the watch cannot resume.
    s.server.set_pods_unavailable(true);
    s.server.apply_pod(api_pod(NODE, ID));
    s.server.compact();
    let err = attest_until("step 5", &a, s.peer(), |r| {
        matches!(r, Err(AttestError::K8s(K8sError::ApiUnavailable { .. })))
    })
    .await
    .unwrap_err();
    assert!(err.is_unavailable(), "{err}");

    // Back: the watch from the old version gets 410, the agent lists again
    // and finds the container.
    let lists_before = lists(&s.server);
    s.server.set_pods_unavailable(false);
    let got = attest_until("step 6", &a, s.peer(), Result::is_ok)
        .await
        .unwrap();
    assert!(got.contains(&k8s("container-name:app")), "{got:?}");
    assert!(lists(&s.server) > lists_before, "listed again");
    log.flush();
    let reasons: Vec<String> = records(&path)
        .iter()
        .map(|r| r["reason"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        reasons.iter().any(|r| r == "api_unavailable"),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r == "unknown_pod"), "{reasons:?}");
}

fn lists(server: &FakeApiServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/pods" && !r.query.contains("watch=true"))
        .count()
}

#[tokio::test]
async fn known_pods_are_served_while_the_outage_is_shorter_than_the_staleness_limit() {
    let s = Setup::new().await;
    let (a, mut index) = s.attestor_and_index(Duration::from_secs(3600), 3).await;
    s.server.apply_pod(api_pod(NODE, ID));
    attest_until("step 7", &a, s.peer(), Result::is_ok)
        .await
        .unwrap();
    s.server.set_pods_unavailable(true);
    // Once the source has noticed, a known pod is still served.
    index
        .wait_for(|ix| matches!(ix.health, Health::Down { .. }))
        .await
        .unwrap();
    let got = a.attest(s.peer()).await.unwrap();
    assert!(got.contains(&k8s("sa:web")));
}

/// Every refusal kind of the attestors writes one record with its reason.
#[tokio::test]
async fn each_refusal_kind_writes_an_audit_record() {
    let s = Setup::new().await;
    let (log, path) = s.audit();
    let kubelet = FakeKubelet::start().await.unwrap();
    let kubelet_settings = KubeletSettings {
        url: kubelet.url().to_owned(),
        ca_file: Some(kubelet.ca_file()),
        token_file: Some(kubelet.token_file()),
        skip_verify: false,
        timeout: Duration::from_secs(5),
        max_response_bytes: 1 << 20,
    };
    let by_kubelet = Audited::new(
        Arc::new(
            K8sAttestor::start(s.settings(SourceSettings::Kubelet(kubelet_settings), 2))
                .await
                .unwrap(),
        ),
        log.clone(),
    );
    // Unknown pod (the kubelet lists nothing).
    assert!(by_kubelet.attest(s.peer()).await.is_err());
    // API source not loaded yet: a server that never answers the list.
    s.server.set_pods_unavailable(true);
    let by_api = Audited::new(
        Arc::new(s.attestor(Duration::from_secs(60), 2).await),
        log.clone(),
    );
    let err = by_api.attest(s.peer()).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    // A process in no /proc root: unreadable.
    let gone = PeerCred {
        pid: i32::MAX,
        ..s.peer()
    };
    assert!(by_api.attest(gone).await.is_err());
    // The unix attestor's refusals too.
    let unix = Audited::new(Arc::new(UnixAttestor::default()), log.clone());
    assert!(unix.attest(gone).await.is_err());
    // A cgroup line in no known format.
    emulate_proc(
        &s.proc_root,
        s.pid as u32,
        &format!("0::/kubepods/pod{UID}/crun-{ID}\n"),
    )
    .unwrap();
    assert!(by_kubelet.attest(s.peer()).await.is_err());
    // The kubelet gone.
    let mut kubelet = kubelet;
    kubelet.stop().await;
    emulate_proc(
        &s.proc_root,
        s.pid as u32,
        &format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope\n"),
    )
    .unwrap();
    let fresh = Audited::new(
        Arc::new(
            K8sAttestor::start(s.settings(
                SourceSettings::Kubelet(KubeletSettings {
                    url: kubelet.url().to_owned(),
                    ca_file: Some(kubelet.ca_file()),
                    token_file: Some(kubelet.token_file()),
                    skip_verify: false,
                    timeout: Duration::from_secs(5),
                    max_response_bytes: 1 << 20,
                }),
                2,
            ))
            .await
            .unwrap(),
        ),
        log.clone(),
    );
    assert!(fresh.attest(s.peer()).await.is_err());
    log.flush();
    let got: Vec<(String, String)> = records(&path)
        .iter()
        .map(|r| {
            assert!(r["pid"].as_i64().is_some(), "{r}");
            (
                r["attestor"].as_str().unwrap().to_owned(),
                r["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = [
        ("k8s", "unknown_pod"),
        ("k8s", "api_unavailable"),
        ("k8s", "proc_unreadable"),
        ("unix", "proc_unreadable"),
        ("k8s", "cgroup_format"),
        ("k8s", "kubelet_unavailable"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, r)| ((*a).to_owned(), (*r).to_owned()))
        .collect();
    assert_eq!(got, want);
    // No token in any record.
    let text = std::fs::read_to_string(&path).unwrap();
    let token = std::fs::read_to_string(kubelet.token_file()).unwrap();
    assert!(!text.contains(token.trim()));
    assert!(!text.contains(signet_k8s::fake::CALLER_TOKEN));
}
