//! The socket: shutdown, permissions, stale files.

use super::*;

#[tokio::test]
async fn shutdown_ends_open_streams_cleanly_and_removes_the_socket() {
    let ca = Ca::new(TD);
    let h = Harness::start(web_snapshot(1, &ca, ca.svid("e-web", WEB))).await;
    let mut s = h.open(&["default"]).await;
    let r = s.next().await;
    s.ack(&r).await;
    h.shutdown.send_replace(true);
    let end = timeout(PATIENCE, s.responses.message()).await.unwrap();
    assert!(matches!(end, Ok(None)), "{end:?}");
    h.stop().await;
}

#[tokio::test]
async fn the_socket_is_world_writable_and_stale_sockets_are_replaced() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sds.sock");

    // Stale: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let live = signet_uds::bind(&path, SOCKET_MODE).await.unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o666);

    // Live: refused, and left alone.
    assert!(signet_uds::bind(&path, SOCKET_MODE).await.is_err());
    drop(live);

    // Not a socket: refused, and left alone.
    let file = dir.path().join("file");
    std::fs::write(&file, b"keep me").unwrap();
    assert!(signet_uds::bind(&file, SOCKET_MODE).await.is_err());
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}
