//! The agent as an unprivileged workload meets it: a user other than root
//! reaches the default socket (finding 5.7), and a process that execs a
//! registered binary after connecting does not get that binary's identity
//! (finding 5.2).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use signet_proto::workload::X509svidRequest;
use signet_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use signet_tests::{AgentProcess, CaOptions, CaProcess, binary};
use tonic::transport::{Endpoint, Uri};

use crate::{Node, WAIT};

const NOBODY: u32 = 65534;

fn setpriv(uid: u32) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".to_owned(),
    ]);
    cmd
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

#[tokio::test]
async fn a_non_root_user_fetches_its_svid_from_the_default_socket() {
    assert!(
        running_as_root(),
        "this test starts a client as uid {NOBODY}"
    );
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let agent = AgentProcess::start_with_default_sockets(&ca, "node-a", &[])
        .await
        .unwrap();
    let node = Node { agent, ca };
    node.entry("/nobody", &format!("unix:uid:{NOBODY}"), &[])
        .await;
    let id = node.ca.id("/nobody");
    let signet = binary("signet").unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        // No socket flag and no SPIFFE_ENDPOINT_SOCKET: the defaults of the
        // agent and the CLI must meet.
        let out = setpriv(NOBODY)
            .arg(&signet)
            .args(["agent", "svid", "fetch"])
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && stdout.contains(&id) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "uid {NOBODY} got no SVID: {}\n{stdout}\n{}\n--- agent log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            node.agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let public = Path::new(signet_tests::DEFAULT_PUBLIC_DIR);
    assert_eq!(
        std::fs::metadata(public).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(
        std::fs::metadata(public.join("api.sock"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o666
    );
}

/// Waits until `pid` runs `exe`.
async fn wait_for_exe(pid: u32, exe: &Path) {
    let deadline = Instant::now() + WAIT;
    while std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .as_deref()
        != Some(exe)
    {
        assert!(
            Instant::now() < deadline,
            "pid {pid} never ran {}",
            exe.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn exec_after_connect_does_not_earn_the_binarys_identity() {
    assert!(
        running_as_root(),
        "this test starts a workload as uid {NOBODY}"
    );
    let node = Node::start(&[]).await;
    // The scratch directory holds the sockets; let uid 65534 reach them.
    let scratch = node.agent.scratch_dir().to_owned();
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sleep = std::fs::canonicalize("/usr/bin/sleep").unwrap();
    // The finding's entry: selected by the path of `sleep` alone.
    node.entry(
        "/sleep-only",
        &format!("unix:path:{}", sleep.display()),
        &[],
    )
    .await;
    // A control the relay is entitled to, so that the test sees answers.
    node.entry("/nobody", &format!("unix:uid:{NOBODY}"), &[])
        .await;

    let script: PathBuf = scratch.join("exec_relay.py");
    std::fs::write(&script, include_str!("../../helpers/exec_relay.py")).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The relay's own directory, where uid 65534 may write.
    let relay_dir = scratch.join("relay");
    std::fs::create_dir(&relay_dir).unwrap();
    std::os::unix::fs::chown(&relay_dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let relay = relay_dir.join("relay.sock");
    let child = setpriv(NOBODY)
        .arg("/usr/bin/python3")
        .arg(&script)
        .arg(node.agent.workload_api_socket())
        .arg(&relay)
        .arg(&sleep)
        .arg("30")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let connector = child.id();
    let _stop = StopByPid {
        connector: child,
        relay_pid: relay_dir.join("relay.sock.pid"),
    };
    wait_for_exe(connector, &sleep).await;
    let deadline = Instant::now() + WAIT;
    while !relay.exists() {
        assert!(Instant::now() < deadline, "the relay never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The relay's socket file appears at bind(), a moment before listen():
    // a connection refused in between is tried again.
    let channel = loop {
        let path = relay.clone();
        let connected = Endpoint::from_static("http://workload.invalid")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await;
        match connected {
            Ok(channel) => break channel,
            Err(e) => {
                assert!(Instant::now() < deadline, "the relay never accepted: {e:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let mut client = SpiffeWorkloadApiClient::new(channel);
    let nobody = node.ca.id("/nobody");
    let sleep_only = node.ca.id("/sleep-only");
    let deadline = Instant::now() + WAIT;
    // The agent recorded the connector's executable (python) when it
    // accepted the connection; the PID now runs `sleep`, so every call on
    // that connection is refused, whatever entries python or sleep match.
    let refusal = loop {
        let mut request = tonic::Request::new(X509svidRequest {});
        request
            .metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
        let answer = match client.fetch_x509svid(request).await {
            Ok(r) => r.into_inner().message().await,
            Err(e) => Err(e),
        };
        match answer {
            Err(status) if status.code() == tonic::Code::PermissionDenied => break status,
            Ok(Some(m)) => {
                let ids: Vec<&str> = m.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
                panic!(
                    "a connection whose connector exec'd was served {ids:?} (not {nobody} nor {sleep_only} may be)"
                );
            }
            other => {
                assert!(
                    Instant::now() < deadline,
                    "the relay got no refusal: {other:?}\n--- agent log ---\n{}",
                    node.agent.log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(refusal.message().contains("changed"), "{refusal:?}");
    assert!(
        node.agent
            .log()
            .contains("another executable than when it connected"),
        "{}",
        node.agent.log()
    );
    assert!(
        node.agent.log().contains("selects only by unix:path"),
        "{}",
        node.agent.log()
    );
}

/// Stops the connector (now `sleep`) and the relay by their PIDs, also when
/// the test fails.
struct StopByPid {
    connector: std::process::Child,
    relay_pid: PathBuf,
}

impl Drop for StopByPid {
    fn drop(&mut self) {
        let _ = self.connector.kill();
        let _ = self.connector.wait();
        if let Ok(pid) = std::fs::read_to_string(&self.relay_pid) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
    }
}
