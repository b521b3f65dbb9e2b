//! The pod attestor against a fake kubelet (HTTPS on loopback, bearer
//! token, its own CA) and a test-built /proc root.

use std::path::PathBuf;
use std::time::Duration;

use signet_tests::{FakeKubelet, emulate_proc, pod_json};

use super::kubelet::{KubeletError, KubeletSettings};
use super::{K8sAttestor, K8sError, K8sSettings, SourceSettings};

fn kubelet(settings: &mut K8sSettings) -> &mut KubeletSettings {
    match &mut settings.source {
        SourceSettings::Kubelet(k) => k,
        SourceSettings::Api(_) => unreachable!("kubelet settings"),
    }
}
use crate::attest::{AttestError, PeerCred, WorkloadAttestor};
use crate::state::Selector;

const NODE: &str = "node-a";
const UID: &str = "6f1c3a52-0b7e-4d2a-9c1e-3b5d7f9a2c4e";
const UID_: &str = "6f1c3a52_0b7e_4d2a_9c1e_3b5d7f9a2c4e";
const ID: &str = "4d1f0e9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e";
const OTHER_ID: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

struct Setup {
    kubelet: FakeKubelet,
    proc_root: PathBuf,
    pid: i32,
}

impl Setup {
    /// A fake kubelet and a /proc root placing this test process in
    /// container `ID` of pod `UID` (systemd driver, containerd, cgroup v2).
    async fn new() -> Self {
        let kubelet = FakeKubelet::start().await.unwrap();
        let proc_root = kubelet.dir().join("proc");
        let pid = std::process::id();
        let cgroup = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
        );
        emulate_proc(&proc_root, pid, &cgroup).unwrap();
        Self {
            kubelet,
            proc_root,
            pid: pid as i32,
        }
    }

    fn settings(&self) -> K8sSettings {
        K8sSettings {
            source: SourceSettings::Kubelet(KubeletSettings {
                url: self.kubelet.url().to_owned(),
                ca_file: Some(self.kubelet.ca_file()),
                token_file: Some(self.kubelet.token_file()),
                skip_verify: false,
                timeout: Duration::from_secs(10),
                max_response_bytes: 1 << 20,
            }),
            node_name: NODE.into(),
            proc_root: self.proc_root.clone(),
            cache_ttl: Duration::from_secs(60),
            poll_attempts: 3,
            poll_interval: Duration::from_millis(20),
        }
    }

    async fn attestor(&self) -> K8sAttestor {
        K8sAttestor::start(self.settings()).await.unwrap()
    }

    fn set_cgroup(&self, cgroup: &str) {
        emulate_proc(&self.proc_root, self.pid as u32, cgroup).unwrap();
    }

    fn peer(&self) -> PeerCred {
        PeerCred {
            pid: self.pid,
            uid: 0,
            gid: 0,
            exe_at_accept: None,
        }
    }
}

fn web_pod(node: &str, container_id: &str) -> serde_json::Value {
    pod_json(
        "shop",
        "web-7d4b9",
        UID,
        "web",
        node,
        &[("app", "web"), ("tier", "front")],
        &[
            ("app", "nginx:1.27", container_id),
            ("sidecar", "envoy:1.40", OTHER_ID),
        ],
    )
}

fn k8s(value: &str) -> Selector {
    Selector::new("k8s", value)
}

#[tokio::test]
async fn a_process_in_a_pod_gets_the_pod_and_container_selectors() {
    let s = Setup::new().await;
    s.kubelet.set_pods(vec![web_pod(NODE, ID)]);
    let got = s.attestor().await.attest(s.peer()).await.unwrap();
    let want = [
        "ns:shop",
        "sa:web",
        "pod-name:web-7d4b9",
        &format!("pod-uid:{UID}"),
        "node-name:node-a",
        "pod-label:app:web",
        "pod-label:tier:front",
        "container-name:app",
        "container-image:nginx:1.27",
        "container-image:docker.io/library/nginx:1.27",
    ];
    for w in want {
        assert!(got.contains(&k8s(w)), "{w} missing from {got:?}");
    }
    assert_eq!(got.len(), want.len(), "{got:?}");
    assert!(!got.contains(&k8s("container-name:sidecar")));
}

#[tokio::test]
async fn the_list_is_cached_and_a_host_process_asks_nothing() {
    let s = Setup::new().await;
    s.kubelet.set_pods(vec![web_pod(NODE, ID)]);
    let a = s.attestor().await;
    a.attest(s.peer()).await.unwrap();
    a.attest(s.peer()).await.unwrap();
    assert_eq!(s.kubelet.requests(), 1, "the second call used the cache");

    s.set_cgroup("0::/user.slice/user-1000.slice/session-2.scope\n");
    let fresh = s.attestor().await;
    assert_eq!(
        fresh.attest(s.peer()).await.unwrap(),
        Vec::<Selector>::new()
    );
    assert_eq!(s.kubelet.requests(), 1, "no pod, no request");
}

#[tokio::test]
async fn an_unknown_container_is_looked_up_again_then_refused() {
    let s = Setup::new().await;
    // The pod is there, the caller's container is not (another ID).
    s.kubelet.set_pods(vec![web_pod(NODE, &"b".repeat(64))]);
    let err = s.attestor().await.attest(s.peer()).await.unwrap_err();
    assert!(
        matches!(&err, AttestError::K8s(K8sError::UnknownContainer { pod_uid, .. }) if pod_uid == UID),
        "{err:?}"
    );
    assert!(!err.is_unavailable(), "not permitted, not a retry");
    assert_eq!(
        s.kubelet.requests(),
        3,
        "each attempt fetched a new list despite the cache"
    );
}

#[tokio::test]
async fn a_pod_of_another_node_is_not_this_callers() {
    let s = Setup::new().await;
    s.kubelet.set_pods(vec![web_pod("node-b", ID)]);
    let err = s.attestor().await.attest(s.peer()).await.unwrap_err();
    assert!(
        matches!(err, AttestError::K8s(K8sError::UnknownContainer { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_container_listed_while_retrying_is_accepted() {
    let s = Setup::new().await;
    let settings = K8sSettings {
        poll_attempts: 1000,
        ..s.settings()
    };
    let a = K8sAttestor::start(settings).await.unwrap();
    let peer = s.peer();
    let call = tokio::spawn(async move { a.attest(peer).await });
    // The kubelet lists the pod only after the attestor has seen it absent.
    while s.kubelet.requests() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.kubelet.set_pods(vec![web_pod(NODE, ID)]);
    let got = call.await.unwrap().unwrap();
    assert!(got.contains(&k8s("ns:shop")), "{got:?}");
}

#[tokio::test]
async fn an_unreachable_kubelet_is_retried_then_unavailable() {
    let mut s = Setup::new().await;
    s.kubelet.stop().await;
    let err = s.attestor().await.attest(s.peer()).await.unwrap_err();
    assert!(
        matches!(
            &err,
            AttestError::K8s(K8sError::Kubelet {
                source: KubeletError::Unreachable { .. },
                ..
            })
        ),
        "{err:?}"
    );
    assert!(err.is_unavailable());
}

#[tokio::test]
async fn the_kubelet_must_accept_the_token_and_prove_its_certificate() {
    let s = Setup::new().await;
    s.kubelet.set_pods(vec![web_pod(NODE, ID)]);
    let bad_token = s.kubelet.dir().join("other-token");
    std::fs::write(&bad_token, "not-the-token").unwrap();
    let mut settings = s.settings();
    kubelet(&mut settings).token_file = Some(bad_token);
    let err = K8sAttestor::start(settings)
        .await
        .unwrap()
        .attest(s.peer())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            AttestError::K8s(K8sError::Kubelet {
                source: KubeletError::Status { status: 401, .. },
                ..
            })
        ),
        "{err:?}"
    );

    // A CA that did not issue the kubelet's certificate.
    let other = FakeKubelet::start().await.unwrap();
    let mut settings = s.settings();
    kubelet(&mut settings).ca_file = Some(other.ca_file());
    let err = K8sAttestor::start(settings.clone())
        .await
        .unwrap()
        .attest(s.peer())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            AttestError::K8s(K8sError::Kubelet {
                source: KubeletError::Unreachable { .. },
                ..
            })
        ),
        "{err:?}"
    );
    // skip_verify accepts it.
    kubelet(&mut settings).skip_verify = true;
    let got = K8sAttestor::start(settings)
        .await
        .unwrap()
        .attest(s.peer())
        .await
        .unwrap();
    assert!(got.contains(&k8s("sa:web")));
}

#[tokio::test]
async fn an_answer_larger_than_the_limit_is_refused() {
    let s = Setup::new().await;
    s.kubelet.set_pods(vec![web_pod(NODE, ID); 20]);
    let mut settings = s.settings();
    kubelet(&mut settings).max_response_bytes = 4096;
    let err = K8sAttestor::start(settings)
        .await
        .unwrap()
        .attest(s.peer())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            AttestError::K8s(K8sError::Kubelet {
                source: KubeletError::TooLarge(4096),
                ..
            })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_cgroup_in_no_known_format_is_refused_without_asking() {
    let s = Setup::new().await;
    s.kubelet.set_pods(vec![web_pod(NODE, ID)]);
    s.set_cgroup(&format!("0::/kubepods/burstable/pod{UID}/crun-{ID}\n"));
    let err = s.attestor().await.attest(s.peer()).await.unwrap_err();
    assert!(
        matches!(&err, AttestError::K8s(K8sError::Cgroup { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("crun-"), "{err}");
    assert!(!err.is_unavailable());
    assert_eq!(s.kubelet.requests(), 0);
}

#[tokio::test]
async fn a_process_missing_from_the_proc_root_is_unavailable() {
    let s = Setup::new().await;
    let peer = PeerCred {
        pid: i32::MAX,
        ..s.peer()
    };
    let err = s.attestor().await.attest(peer).await.unwrap_err();
    assert!(matches!(err, AttestError::Proc { .. }), "{err:?}");
}
