//! What the Workload API refuses: a request without the security header,
//! and a caller that matches no entry. Neither disturbs anyone else.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use signet_proto::workload::{JwtsvidRequest, X509BundlesRequest, X509svidRequest};
use signet_tests::binary;

use crate::{Node, WAIT, me};

/// Our proto's requests, with the header set to `value` (none for `None`).
fn with_header<T>(message: T, value: Option<&'static str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = value {
        request
            .metadata_mut()
            .insert("workload.spiffe.io", value.parse().unwrap());
    }
    request
}

#[tokio::test]
async fn a_request_without_the_security_header_is_invalid_argument() {
    let node = Node::start(&[]).await;
    node.entry("/web", &me(), &[]).await;
    node.wait_for_svid("/web").await;
    let mut raw = node.raw_client().await;

    for header in [None, Some("false"), Some("TRUE")] {
        let status = raw
            .fetch_x509svid(with_header(X509svidRequest {}, header))
            .await
            .expect_err("FetchX509SVID without `workload.spiffe.io: true` must fail");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "header {header:?}: {status:?}"
        );
        let status = raw
            .fetch_jwtsvid(with_header(
                JwtsvidRequest {
                    audience: vec!["db".into()],
                    spiffe_id: String::new(),
                },
                header,
            ))
            .await
            .expect_err("FetchJWTSVID without the header must fail");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        let status = raw
            .fetch_x509_bundles(with_header(X509BundlesRequest {}, header))
            .await
            .expect_err("FetchX509Bundles without the header must fail");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }

    // The same connection still serves a proper request.
    let mut stream = raw
        .fetch_x509svid(with_header(X509svidRequest {}, Some("true")))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("a first response");
    assert_eq!(first.svids[0].spiffe_id, node.ca.id("/web"));
}

/// `signet agent svid fetch --output json` run as uid/gid `id` through
/// setpriv: the SPIFFE ID and serial of its default SVID, or the error.
async fn fetch_as(id: u32, socket: &Path) -> Result<(String, String), String> {
    let id = id.to_string();
    let output = tokio::process::Command::new("setpriv")
        .args(["--reuid", &id, "--regid", &id, "--clear-groups"])
        .arg(binary("signet").unwrap())
        .args(["--output", "json", "agent", "--socket"])
        .arg(socket)
        .args(["svid", "fetch"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("running setpriv: {e}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let svid = &json["svids"][0];
    Ok((
        svid["spiffe_id"].as_str().unwrap().to_owned(),
        svid["serial"].as_str().unwrap().to_owned(),
    ))
}

#[tokio::test]
async fn a_workload_matching_no_entry_is_denied_and_others_keep_flowing() {
    const OTHER_UID: u32 = 4242;
    let node = Node::start(&[]).await;
    node.entry("/other", &format!("unix:uid:{OTHER_UID}"), &[])
        .await;
    // The agent's directory is 0700 (a temporary directory); the other
    // user must be able to reach the socket inside.
    std::fs::set_permissions(
        node.agent.scratch_dir(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let socket = node.agent.workload_api_socket().to_owned();

    // The other workload gets its SVID (through the CLI, as uid 4242).
    let deadline = Instant::now() + WAIT;
    let before = loop {
        match fetch_as(OTHER_UID, &socket).await {
            Ok(svid) => break svid,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!(
                "uid {OTHER_UID} got no SVID within {WAIT:?}: {e}\n--- agent log ---\n{}",
                node.agent.log()
            ),
        }
    };
    assert_eq!(before.0, node.ca.id("/other"));

    // This process matches nothing: PermissionDenied for X.509 and JWT, as
    // the spiffe crate understands it and on the wire.
    let client = node.client().await;
    let err = client
        .fetch_x509_svid()
        .await
        .expect_err("a workload without an entry got an SVID");
    assert!(
        matches!(err, spiffe::WorkloadApiError::NoIdentityIssued),
        "{err:?}"
    );
    let err = client
        .fetch_jwt_svid(["db"], None)
        .await
        .expect_err("a workload without an entry got a JWT-SVID");
    assert!(
        matches!(err, spiffe::WorkloadApiError::NoIdentityIssued),
        "{err:?}"
    );
    let mut raw = node.raw_client().await;
    let status = raw
        .fetch_x509svid(with_header(X509svidRequest {}, Some("true")))
        .await
        .expect_err("denied on the wire too");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // Bundles are public: a caller without an identity still gets them.
    assert_eq!(client.fetch_x509_bundles().await.unwrap().len(), 1);

    // Nothing else changed: the agent runs, and the other workload still
    // gets the very same SVID (no re-issue, no revocation).
    assert!(node.agent.pid().is_some());
    let after = fetch_as(OTHER_UID, &socket).await.unwrap();
    assert_eq!(after, before);
}
