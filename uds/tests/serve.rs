//! A tonic server (the standard health service) served by `signet_uds::serve`
//! on a real unix socket, called by a raw HTTP/2 client that sends what the
//! various gRPC implementations send as `:authority`, by h2 as a client, and
//! by grpcio when a Python interpreter is given (SIGNET_PYTHON).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use loona_hpack::{Decoder, Encoder};
use signet_uds::{NormalizedStream, ServeOptions};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tonic::service::Routes;

/// Bounds every wait in these tests; reaching it is a failure, not a figure.
const WAIT: Duration = Duration::from_secs(20);
const CHECK: &str = "/grpc.health.v1.Health/Check";
const WATCH: &str = "/grpc.health.v1.Health/Watch";
/// A gRPC message frame holding an empty HealthCheckRequest (service "").
const EMPTY_MESSAGE: &[u8] = &[0, 0, 0, 0, 0];
const CHILD_SOCKET_ENV: &str = "SIGNET_UDS_TEST_CHILD_SOCKET";

struct Server {
    _dir: tempfile::TempDir,
    path: PathBuf,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), signet_uds::ServeError>>,
}

impl Server {
    async fn start(options: ServeOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Reachable by the unprivileged client of the multi-user test.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("api.sock");
        let bound = signet_uds::bind(&path, 0o666).await.unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(signet_uds::serve(
            bound,
            Routes::new(health),
            options,
            stop_rx,
        ));
        Self {
            _dir: dir,
            path,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(!self.path.exists(), "the socket was not removed");
    }
}

/// What came back on one stream.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Response headers and trailers, merged.
    Headers(Vec<(String, String)>),
    /// The stream was reset with this HTTP/2 error code.
    Reset(u32),
    /// The connection ended first.
    Closed,
}

impl Outcome {
    fn grpc_status(&self) -> Option<&str> {
        match self {
            Outcome::Headers(h) => h
                .iter()
                .find(|(n, _)| n == "grpc-status")
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

/// An HTTP/2 client written from RFC 9113, so that it can send any
/// `:authority` (h2 and tonic refuse to send the ones under test).
struct RawConn {
    io: UnixStream,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
    buf: Vec<u8>,
}

impl RawConn {
    async fn open(path: &Path) -> std::io::Result<Self> {
        let mut io = UnixStream::connect(path).await?;
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(0x4, 0, 0, &[]));
        io.write_all(&hello).await?;
        Ok(Self {
            io,
            decoder: Decoder::new(),
            encoder: Encoder::new(),
            buf: Vec::new(),
        })
    }

    async fn request(&mut self, stream: u32, authority: Option<&[u8]>, path: &str) {
        let mut headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.as_bytes()),
        ];
        if let Some(a) = authority {
            headers.push((b":authority", a));
        }
        headers.push((b"content-type", b"application/grpc"));
        headers.push((b"te", b"trailers"));
        let block = self.encoder.encode(headers);
        let mut out = frame(0x1, 0x4, stream, &block);
        out.extend(frame(0x0, 0x1, stream, EMPTY_MESSAGE));
        // The server may already have closed the connection.
        let _ = self.io.write_all(&out).await;
    }

    async fn read_frame(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let f: Vec<u8> = self.buf.drain(..9 + len).collect();
                    let stream = u32::from_be_bytes(f[5..9].try_into().unwrap()) & 0x7fff_ffff;
                    return Some((f[3], f[4], stream, f[9..].to_vec()));
                }
            }
            let mut chunk = [0u8; 16384];
            match self.io.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until `stream` ends, answering SETTINGS and skipping other
    /// streams' frames.
    async fn outcome(&mut self, stream: u32) -> Outcome {
        tokio::time::timeout(WAIT, async {
            let mut headers = Vec::new();
            loop {
                let Some((kind, flags, id, payload)) = self.read_frame().await else {
                    return Outcome::Closed;
                };
                match kind {
                    0x4 if flags & 0x1 == 0 => {
                        let _ = self.io.write_all(&frame(0x4, 0x1, 0, &[])).await;
                    }
                    // Header blocks of every stream go through one decoder.
                    0x1 => {
                        let decoded = self.decoder.decode(&payload).unwrap();
                        if id == stream {
                            headers.extend(decoded.into_iter().map(|(n, v)| {
                                (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
                            }));
                            if flags & 0x1 != 0 {
                                return Outcome::Headers(headers);
                            }
                        }
                    }
                    0x0 if id == stream && flags & 0x1 != 0 => return Outcome::Headers(headers),
                    0x3 if id == stream => {
                        return Outcome::Reset(u32::from_be_bytes(
                            payload[..4].try_into().unwrap(),
                        ));
                    }
                    0x7 => return Outcome::Closed,
                    _ => {}
                }
            }
        })
        .await
        .unwrap()
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

async fn call(path: &Path, authority: Option<&[u8]>) -> Outcome {
    let mut conn = RawConn::open(path).await.unwrap();
    conn.request(1, authority, CHECK).await;
    conn.outcome(1).await
}

fn authorities(socket: &Path) -> Vec<(&'static str, Option<Vec<u8>>)> {
    let raw = socket.to_str().unwrap();
    let encoded = raw.replace('/', "%2F");
    vec![
        ("grpc-go, tonic, grpc-js", Some(b"localhost".to_vec())),
        (
            "grpc-core >= 1.57",
            Some(encoded.trim_start_matches("%2F").as_bytes().to_vec()),
        ),
        ("grpc-swift", Some(encoded.into_bytes())),
        ("grpc-java", Some(raw.as_bytes().to_vec())),
        ("no authority", None),
    ]
}

#[tokio::test]
async fn every_clients_authority_is_served() {
    let server = Server::start(ServeOptions::default()).await;
    for (who, authority) in authorities(&server.path) {
        let outcome = call(&server.path, authority.as_deref()).await;
        assert_eq!(outcome.grpc_status(), Some("0"), "{who}: {outcome:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn without_the_normaliser_h2_refuses_the_socket_path() {
    // The control: the failure the normaliser exists for.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let incoming = futures::stream::unfold(listener, |l| async move {
        let conn = l.accept().await.map(|(s, _)| s);
        Some((conn, l))
    });
    let (_reporter, health) = tonic_health::server::health_reporter();
    let (stop, mut stop_rx) = watch::channel(false);
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            }),
    );
    let encoded = path.to_str().unwrap().replace('/', "%2F");
    assert_eq!(
        call(&path, Some(encoded.as_bytes())).await,
        Outcome::Reset(0x1),
        "PROTOCOL_ERROR"
    );
    assert_eq!(
        call(&path, Some(b"localhost")).await.grpc_status(),
        Some("0")
    );
    stop.send_replace(true);
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn connections_over_the_per_uid_cap_are_closed() {
    let options = ServeOptions {
        max_connections_per_uid: 2,
        ..ServeOptions::default()
    };
    let server = Server::start(options).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = RawConn::open(&server.path).await.unwrap();
        conn.request(1, Some(b"localhost"), CHECK).await;
        assert_eq!(conn.outcome(1).await.grpc_status(), Some("0"));
        held.push(conn);
    }
    let mut over = RawConn::open(&server.path).await.unwrap();
    over.request(1, Some(b"localhost"), CHECK).await;
    assert_eq!(over.outcome(1).await, Outcome::Closed);

    // A connection that ends gives its place back.
    drop(held.pop());
    let served = tokio::time::timeout(WAIT, async {
        loop {
            if call(&server.path, Some(b"localhost")).await.grpc_status() == Some("0") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(served.is_ok(), "the freed place was never reused");
    drop(held);
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_never_sends_a_request_is_dropped() {
    let options = ServeOptions {
        handshake_timeout: Duration::from_millis(300),
        ..ServeOptions::default()
    };
    let server = Server::start(options).await;
    // Connected, but silent: not even the preface.
    let mut silent = UnixStream::connect(&server.path).await.unwrap();
    let mut buf = [0u8; 64];
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // the server's SETTINGS
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the silent connection was never closed");
    server.stop().await;
}

#[tokio::test]
async fn streams_over_the_per_uid_cap_get_resource_exhausted() {
    let options = ServeOptions {
        max_streams_per_uid: 2,
        ..ServeOptions::default()
    };
    let server = Server::start(options).await;
    let mut first = RawConn::open(&server.path).await.unwrap();
    let mut second = RawConn::open(&server.path).await.unwrap();
    // Two open Watch streams, on two connections of the same uid.
    first.request(1, Some(b"localhost"), WATCH).await;
    second.request(1, Some(b"localhost"), WATCH).await;
    for conn in [&mut first, &mut second] {
        // The first answer of a Watch: response headers and one message.
        loop {
            let (kind, flags, id, payload) = conn.read_frame().await.unwrap();
            if kind == 0x1 {
                // Keeps the decoder's table in step with the server's.
                conn.decoder.decode(&payload).unwrap();
            }
            if kind == 0x0 && id == 1 {
                break;
            }
            if kind == 0x4 && flags & 0x1 == 0 {
                let _ = conn.io.write_all(&frame(0x4, 0x1, 0, &[])).await;
            }
        }
    }
    first.request(3, Some(b"localhost"), CHECK).await;
    assert_eq!(first.outcome(3).await.grpc_status(), Some("8"));

    // Ending one Watch frees a place.
    drop(second);
    let served = tokio::time::timeout(WAIT, async {
        let mut id = 5;
        loop {
            first.request(id, Some(b"localhost"), CHECK).await;
            if first.outcome(id).await.grpc_status() == Some("0") {
                return;
            }
            id += 2;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(served.is_ok(), "the freed stream was never reusable");
    drop(first);
    server.stop().await;
}

/// One uid holding every connection it may have does not keep another uid
/// out. The other uid is a child process (this test binary, running
/// [`child_calls_as_another_user`]) with uid and gid 65534.
#[tokio::test]
async fn a_flooding_uid_does_not_lock_out_another() {
    assert!(
        is_root(),
        "this test runs a client as another uid, which needs root (as the test command does)"
    );
    let options = ServeOptions {
        max_connections_per_uid: 4,
        ..ServeOptions::default()
    };
    let server = Server::start(options).await;
    let mut flood = Vec::new();
    for _ in 0..4 {
        let mut conn = RawConn::open(&server.path).await.unwrap();
        conn.request(1, Some(b"localhost"), CHECK).await;
        assert_eq!(conn.outcome(1).await.grpc_status(), Some("0"));
        flood.push(conn);
    }
    assert_eq!(
        call(&server.path, Some(b"localhost")).await,
        Outcome::Closed
    );

    let exe = std::env::current_exe().unwrap();
    let path = server.path.clone();
    let output = tokio::task::spawn_blocking(move || {
        use std::os::unix::process::CommandExt as _;
        std::process::Command::new(exe)
            .args([
                "--exact",
                "child_calls_as_another_user",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_SOCKET_ENV, &path)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the other uid was not served: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    drop(flood);
    server.stop().await;
}

/// Run only by [`a_flooding_uid_does_not_lock_out_another`], as another uid.
#[tokio::test]
#[ignore = "run by a_flooding_uid_does_not_lock_out_another as another user"]
async fn child_calls_as_another_user() {
    let path = PathBuf::from(std::env::var_os(CHILD_SOCKET_ENV).unwrap());
    assert!(!is_root());
    let outcome = call(&path, Some(b"localhost")).await;
    assert_eq!(outcome.grpc_status(), Some("0"), "{outcome:?}");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// h2 as a client: Huffman-coded strings, its dynamic table across
/// requests, and CONTINUATION for a block over 16 KiB, through the
/// normaliser into h2 as a server.
#[tokio::test]
async fn h2_client_to_h2_server_through_the_normaliser() {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let mut conn = h2::server::handshake(NormalizedStream::new(server_io, None, None))
            .await
            .unwrap();
        let mut seen = Vec::new();
        while let Some(req) = conn.accept().await {
            let (req, mut respond) = req.unwrap();
            seen.push(req.headers().clone());
            assert_eq!(req.uri().authority().map(|a| a.as_str()), Some("localhost"));
            let response = http::Response::builder().status(200).body(()).unwrap();
            respond.send_response(response, true).unwrap();
        }
        seen
    });
    let (mut client, conn) = h2::client::handshake(client_io).await.unwrap();
    let driver = tokio::spawn(conn);
    let big = "v".repeat(20_000);
    for i in 0..3 {
        let request = http::Request::builder()
            .method("POST")
            .uri("http://localhost/grpc.health.v1.Health/Check")
            .header("workload.spiffe.io", "true")
            .header("x-request", i.to_string())
            .header("x-big", big.as_str())
            .body(())
            .unwrap();
        client = client.ready().await.unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        assert_eq!(response.await.unwrap().status(), 200);
    }
    drop(client);
    let seen = tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
    assert_eq!(seen.len(), 3);
    for (i, headers) in seen.iter().enumerate() {
        assert_eq!(headers["workload.spiffe.io"], "true");
        assert_eq!(headers["x-request"], i.to_string().as_str());
        assert_eq!(headers["x-big"], big.as_str());
    }
    driver.abort();
}

/// grpcio (grpc-core), which sends the percent-encoded socket path, calls
/// Check with raw bytes: no generated stubs needed.
#[tokio::test]
async fn grpcio_is_served() {
    let python = std::env::var_os("SIGNET_PYTHON")
        .expect("SIGNET_PYTHON must name a Python with grpcio (scripts/test.sh sets it)");
    let server = Server::start(ServeOptions::default()).await;
    let script = r#"
import sys, grpc
with grpc.insecure_channel("unix:" + sys.argv[1]) as ch:
    check = ch.unary_unary("/grpc.health.v1.Health/Check")
    print("reply", check(b"", timeout=10).hex())
"#;
    let path = server.path.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .args(["-c", script])
            .arg(&path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    // HealthCheckResponse { status: SERVING (1) }.
    assert!(
        stdout.contains("reply 0801"),
        "grpcio failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    server.stop().await;
}
