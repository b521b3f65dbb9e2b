//! The pod workload attestor in the real agent: a real process, run as an
//! unprivileged user, placed in a pod through a test-built /proc root (its
//! cgroup file as the kubelet's systemd driver and containerd make it),
//! fetches an SVID for an entry selected by `k8s:ns` and `k8s:sa` from a
//! fake kubelet's pod list; a process of a container the kubelet does not
//! list is refused, and so is every process once the kubelet is gone.
//!
//! The agent reads `<proc_root>/<pid>/cgroup`, which the test writes
//! between spawning the workload (`sh`, waiting on its stdin) and letting
//! it exec the `signet` CLI, so the PID is the same throughout.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
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

/// Runs `signet agent svid fetch` as a process in container
/// `container_id` of the pod (as uid 65534 when the test runs as root).
async fn fetch_in_container(proc_root: &Path, socket: &Path, container_id: &str) -> Output {
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
    emulate_proc(proc_root, pid, &cgroup_of(container_id)).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").await.unwrap();
    drop(stdin);
    child.wait_with_output().await.unwrap()
}

async fn start(kubelet: &FakeKubelet) -> (Node, std::path::PathBuf) {
    let proc_root = kubelet.dir().join("proc");
    std::fs::create_dir_all(&proc_root).unwrap();
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
    (Node { agent, ca }, proc_root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_process_gets_the_svid_of_its_namespace_and_service_account() {
    let mut kubelet = FakeKubelet::start().await.unwrap();
    kubelet.set_pods(vec![pod_json(
        "shop",
        "web-5f7c9",
        UID,
        "web",
        "node-a",
        &[("app", "web")],
        &[("app", "web:2.1", APP_ID)],
    )]);
    let (node, proc_root) = start(&kubelet).await;
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
        let out = fetch_in_container(&proc_root, &socket, APP_ID).await;
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
    let out = fetch_in_container(&proc_root, &socket, UNLISTED_ID).await;
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
        let out = fetch_in_container(&proc_root, &socket, APP_ID).await;
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
