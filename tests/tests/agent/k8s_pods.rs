//! The pod workload attestor in the real agent: a real process, run as an
//! unprivileged user, placed in a pod's container, fetches an SVID for an
//! entry selected by `k8s:ns` and `k8s:sa` from a fake kubelet's pod list;
//! a process of a container the kubelet does not list is refused, and so
//! is every process once the kubelet is gone.
//!
//! Two placements: a test-built /proc root (its cgroup file as the
//! kubelet's systemd driver and containerd make it), and real cgroups made
//! by the test (cgroupfs layout) read by the agent from the real /proc. The
//! workload is `sh` waiting on its stdin: the test places its PID, then
//! lets it exec the `signet` CLI, so the PID is the same throughout.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use signet_tests::{
    AgentProcess, CaOptions, CaProcess, FakeKubelet, binary, emulate_proc, pod_json,
};
use tokio::io::AsyncWriteExt as _;

use crate::{Node, WAIT};

const NOBODY: u32 = 65534;
const UID: &str = "0b6f3e2a-7c41-4d8e-9a25-6e1f4c3b2d10";
const UID_: &str = "0b6f3e2a_7c41_4d8e_9a25_6e1f4c3b2d10";
const APP_ID: &str = "3e5a7c9b1d2f4a6c8e0b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a4c";
const UNLISTED_ID: &str = "f00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeed";

fn cgroup_of(container_id: &str) -> String {
    format!(
        "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{container_id}.scope\n"
    )
}

/// How a workload process is put in a pod's container.
enum Placement {
    /// A test-built /proc root that the agent reads instead of /proc.
    ProcRoot(PathBuf),
    /// Real cgroups: `<hierarchy>/kubepods/besteffort/pod<uid>/<id>` (the
    /// cgroupfs driver's layout), the agent reading the real /proc.
    Cgroups(PathBuf),
}

impl Placement {
    /// Real cgroups when this process may create them (root, with a
    /// writable cgroup v2 root or v1 `pids` hierarchy), else `None`.
    fn real_cgroups() -> Option<Self> {
        let candidates = [
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup/pids",
        ];
        candidates.iter().find_map(|root| {
            let root = Path::new(root);
            // cgroup v2 needs controllers delegated to move processes freely;
            // a v1 hierarchy has cgroup.procs and no cgroup.controllers.
            if !root.join("cgroup.procs").exists() {
                return None;
            }
            let probe = root.join("signet-k8s-probe");
            std::fs::create_dir(&probe).ok()?;
            let usable = probe.join("cgroup.procs").exists();
            let _ = std::fs::remove_dir(&probe);
            usable.then(|| Self::Cgroups(root.to_owned()))
        })
    }

    fn container_dir(root: &Path, container_id: &str) -> PathBuf {
        root.join("kubepods/besteffort")
            .join(format!("pod{UID}"))
            .join(container_id)
    }

    fn agent_proc_root(&self) -> PathBuf {
        match self {
            Self::ProcRoot(p) => p.clone(),
            Self::Cgroups(_) => PathBuf::from("/proc"),
        }
    }

    fn place(&self, pid: u32, container_id: &str) {
        match self {
            Self::ProcRoot(root) => emulate_proc(root, pid, &cgroup_of(container_id)).unwrap(),
            Self::Cgroups(root) => {
                let dir = Self::container_dir(root, container_id);
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
                let seen = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
                assert!(seen.contains(container_id), "{seen}");
            }
        }
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        if let Self::Cgroups(root) = self {
            // Empty once the workloads exited; shared parents may stay.
            for id in [APP_ID, UNLISTED_ID] {
                let dir = Self::container_dir(root, id);
                let _ = std::fs::remove_dir(&dir);
            }
            let pod = root.join("kubepods/besteffort").join(format!("pod{UID}"));
            for dir in [pod, root.join("kubepods/besteffort"), root.join("kubepods")] {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// Runs `signet agent svid fetch` as a process in container
/// `container_id` of the pod (as uid 65534 when the test runs as root).
async fn fetch_in_container(placement: &Placement, socket: &Path, container_id: &str) -> Output {
    let signet = binary("signet").unwrap();
    let mut cmd = if std::fs::metadata("/proc/self").unwrap().uid() == 0 {
        let mut c = tokio::process::Command::new("setpriv");
        c.args([
            format!("--reuid={NOBODY}"),
            format!("--regid={NOBODY}"),
            "--clear-groups".to_owned(),
            "/bin/sh".to_owned(),
        ]);
        c
    } else {
        tokio::process::Command::new("/bin/sh")
    };
    let mut child = cmd
        .args([
            "-c",
            "read go && exec \"$0\" agent svid fetch --socket \"$1\"",
        ])
        .arg(&signet)
        .arg(socket)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    placement.place(pid, container_id);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").await.unwrap();
    drop(stdin);
    child.wait_with_output().await.unwrap()
}

async fn start(kubelet: &FakeKubelet, placement: &Placement) -> Node {
    let proc_root = placement.agent_proc_root();
    let config = kubelet.dir().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[k8s_workload]\nkubelet_url = {:?}\nkubelet_ca_file = {:?}\nkubelet_token_file = {:?}\n\
             node_name = \"node-a\"\nproc_root = {:?}\npoll_attempts = 3\npoll_interval = \"100ms\"\ncache_ttl = \"1s\"\n",
            kubelet.url(),
            kubelet.ca_file(),
            kubelet.token_file(),
            proc_root,
        ),
    )
    .unwrap();
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let agent = AgentProcess::start(&ca, "node-a", &["--config", config.to_str().unwrap()])
        .await
        .unwrap();
    // The sockets live in the scratch directory; let uid 65534 reach them.
    std::fs::set_permissions(agent.scratch_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    Node { agent, ca }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_process_gets_the_svid_of_its_namespace_and_service_account() {
    let kubelet = FakeKubelet::start().await.unwrap();
    let proc_root = kubelet.dir().join("proc");
    std::fs::create_dir_all(&proc_root).unwrap();
    pod_workload_scenario(kubelet, Placement::ProcRoot(proc_root)).await;
}

/// The same with real cgroups, where this machine lets the test make them
/// (root and a writable hierarchy); elsewhere it says so and uses a /proc
/// root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_in_a_real_pod_cgroup_is_attested_from_the_real_proc() {
    let kubelet = FakeKubelet::start().await.unwrap();
    let placement = Placement::real_cgroups().unwrap_or_else(|| {
        eprintln!("cannot create cgroups here: using a test-built /proc root instead");
        let proc_root = kubelet.dir().join("proc");
        std::fs::create_dir_all(&proc_root).unwrap();
        Placement::ProcRoot(proc_root)
    });
    pod_workload_scenario(kubelet, placement).await;
}

async fn pod_workload_scenario(mut kubelet: FakeKubelet, placement: Placement) {
    kubelet.set_pods(vec![pod_json(
        "shop",
        "web-5f7c9",
        UID,
        "web",
        "node-a",
        &[("app", "web")],
        &[("app", "web:2.1", APP_ID)],
    )]);
    let node = start(&kubelet, &placement).await;
    node.entry(
        "/ns/shop/sa/web",
        "k8s:ns:shop",
        &["--selector", "k8s:sa:web"],
    )
    .await;
    // A control that needs a label the pod does not carry.
    node.entry(
        "/ns/shop/sa/admin",
        "k8s:ns:shop",
        &["--selector", "k8s:pod-label:app:admin"],
    )
    .await;
    let id = node.ca.id("/ns/shop/sa/web");
    let socket = node.agent.workload_api_socket().to_owned();

    let deadline = Instant::now() + WAIT;
    let out = loop {
        let out = fetch_in_container(&placement, &socket, APP_ID).await;
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&id) {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "no SVID for {id}: {}\n{}\n{}\n--- agent log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            node.agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains(&node.ca.id("/ns/shop/sa/admin")),
        "{stdout}"
    );

    // A container of the same pod that the kubelet does not list.
    let out = fetch_in_container(&placement, &socket, UNLISTED_ID).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&id));
    assert!(
        stderr.contains("PermissionDenied") || stderr.to_lowercase().contains("permission"),
        "{stderr}"
    );
    assert!(
        node.agent.log().contains("is not among this node's pods"),
        "{}",
        node.agent.log()
    );

    // The kubelet goes away: after the cached list expires, callers are
    // refused as unavailable, with nothing issued.
    kubelet.stop().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let out = fetch_in_container(&placement, &socket, APP_ID).await;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!String::from_utf8_lossy(&out.stdout).contains(&id));
            assert!(
                stderr.contains("Unavailable") || stderr.contains("unreachable"),
                "{stderr}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "still served without a kubelet");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `api` pod source in the real agent, against the fake API server:
/// a workload whose pod does not exist yet is refused (and audited), is
/// served once the pod is added while it waits, is refused after the pod
/// is deleted, is refused as unavailable while the API server is down, and
/// is served again after the outage, when the agent's watch gets 410 (the
/// history was compacted meanwhile) and it lists again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_source_follows_pods_added_deleted_and_relisted_after_410() {
    use signet_k8s::fake::FakeApiServer;
    use signet_k8s::k8s_openapi::api::core::v1::Pod;

    let server = FakeApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let proc_root = dir.path().join("proc");
    std::fs::create_dir_all(&proc_root).unwrap();
    let placement = Placement::ProcRoot(proc_root.clone());
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[k8s_workload]\nsource = \"api\"\nkubeconfig = {kubeconfig:?}\nnode_name = \"node-a\"\n\
             proc_root = {proc_root:?}\npoll_attempts = 30\npoll_interval = \"100ms\"\n\
             api_max_staleness = \"1s\"\napi_max_backoff = \"200ms\"\n",
        ),
    )
    .unwrap();
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let agent = AgentProcess::start(&ca, "node-a", &["--config", config.to_str().unwrap()])
        .await
        .unwrap();
    std::fs::set_permissions(agent.scratch_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let node = Node { agent, ca };
    node.entry(
        "/ns/shop/sa/web",
        "k8s:ns:shop",
        &["--selector", "k8s:sa:web"],
    )
    .await;
    let id = node.ca.id("/ns/shop/sa/web");
    let socket = node.agent.workload_api_socket().to_owned();
    let pod = || -> Pod {
        serde_json::from_value(pod_json(
            "shop",
            "web-0",
            UID,
            "web",
            "node-a",
            &[],
            &[("app", "web:2.1", APP_ID)],
        ))
        .unwrap()
    };
    let served =
        |out: &Output| out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&id);
    let explain = |out: &Output| {
        format!(
            "{}\n{}\n{}\n--- agent log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            node.agent.log()
        )
    };

    // No such pod: refused once the retries are spent.
    let out = fetch_in_container(&placement, &socket, APP_ID).await;
    assert!(!out.status.success(), "{}", explain(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PermissionDenied")
            || String::from_utf8_lossy(&out.stderr)
                .to_lowercase()
                .contains("permission"),
        "{}",
        explain(&out)
    );

    // The pod is added after the workload started asking: it is served.
    let waiting = {
        let (placement, socket) = (Placement::ProcRoot(proc_root.clone()), socket.clone());
        tokio::spawn(async move { fetch_in_container(&placement, &socket, APP_ID).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.apply_pod(pod());
    let out = waiting.await.unwrap();
    assert!(served(&out), "{}", explain(&out));

    // Deleted: refused.
    server.delete_pod("shop", "web-0");
    let deadline = Instant::now() + WAIT;
    loop {
        let out = fetch_in_container(&placement, &socket, APP_ID).await;
        if !out.status.success() {
            assert!(!String::from_utf8_lossy(&out.stdout).contains(&id));
            break;
        }
        assert!(Instant::now() < deadline, "still served after the delete");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The API server loses etcd; the pod comes back meanwhile and the
    // history is compacted. Past the staleness limit callers are told to
    // retry later.
    server.set_pods_unavailable(true);
    server.apply_pod(pod());
    server.compact();
    let deadline = Instant::now() + WAIT;
    loop {
        let out = fetch_in_container(&placement, &socket, APP_ID).await;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if stderr.contains("Unavailable") || stderr.contains("unreachable") {
            assert!(!out.status.success());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never unavailable: {}",
            explain(&out)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Back: the watch from the old version gets 410; the agent lists again.
    server.set_pods_unavailable(false);
    let deadline = Instant::now() + WAIT;
    loop {
        let out = fetch_in_container(&placement, &socket, APP_ID).await;
        if served(&out) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not served after the outage: {}",
            explain(&out)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lists = server
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/pods" && !r.query.contains("watch=true"))
        .count();
    assert!(lists >= 2, "listed once only: {:?}", server.requests());
    // The agent asked for nothing but its node's pods, as AGENT_RBAC says.
    for r in server.requests() {
        assert!(r.query.contains("spec.nodeName%3Dnode-a"), "{r:?}");
        let (group, resource, verb) = r.rbac().unwrap();
        assert!(
            signet_k8s::rbac::allowed(signet_k8s::rbac::AGENT_RBAC, &group, &resource, &verb),
            "{r:?}"
        );
    }

    // Every refusal is in the audit log, in the data directory, 0600.
    let audit = node.agent.data_dir().join("audit.jsonl");
    let deadline = Instant::now() + WAIT;
    let records: Vec<serde_json::Value> = loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let records: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if records.iter().any(|r| r["reason"] == "api_unavailable") {
            break records;
        }
        assert!(Instant::now() < deadline, "audit log: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(std::fs::metadata(&audit).unwrap().mode() & 0o777, 0o600);
    let reasons: Vec<&str> = records
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"unknown_pod"), "{reasons:?}");
    for r in &records {
        assert_eq!(r["event"], "workload_refused", "{r}");
        assert_eq!(r["attestor"], "k8s", "{r}");
        assert!(r["pid"].as_i64().unwrap() > 0, "{r}");
        assert!(r["time"].as_str().is_some(), "{r}");
    }
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(!text.contains(signet_k8s::fake::CALLER_TOKEN));
}
