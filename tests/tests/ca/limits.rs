//! What one caller can make the CA hold: connections (in total, per source
//! address, without a node SVID), request sizes checked before decoding,
//! batch item counts, JWT audiences.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use signet_identity::jwt::{MAX_AUDIENCE_LEN, MAX_AUDIENCES};
use signet_proto::ca::v1 as pb;
use signet_tests::{
    CaOptions, CaProcess, attest_node, crypto_provider, new_key_and_csr, root_store,
};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tonic::Code;

use crate::assert_rejected_not_issued;

/// Longest wait for the CA to close a connection it must close. A bound so
/// that a CA that never closes fails the test instead of hanging it.
const CLOSE_BOUND: Duration = Duration::from_secs(60);

async fn entry_for(ca: &CaProcess, path: &str, node: &str) -> String {
    ca.entry_cli(&[
        "--spiffe-id",
        &ca.id(path),
        "--parent-node",
        node,
        "--selector",
        "unix:uid:1000",
    ])
    .await
    .unwrap()
}

/// A TCP connection to the CA's node port from `source` (another loopback
/// address stands for another host).
async fn tcp_from(ca: &CaProcess, source: [u8; 4]) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("binding a loopback source address");
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], ca.port())))
        .await
        .unwrap()
}

/// Waits until the peer closes `stream` (EOF or reset); panics after
/// [`CLOSE_BOUND`].
async fn closed_by_peer<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, what: &str) {
    let mut buf = [0u8; 256];
    tokio::time::timeout(CLOSE_BOUND, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the CA kept {what} open"));
}

fn anonymous_tls(ca: &CaProcess) -> TlsConnector {
    let roots = ca.bundle().unwrap().x509_authorities().to_vec();
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(root_store(&roots).unwrap())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_flood_of_idle_connections_does_not_starve_a_node_or_the_admin() {
    let ca = CaProcess::start(
        CaOptions::default()
            .flag("max-connections-per-ip", "50")
            .flag("max-unauthenticated-connections", "100")
            .flag("tls-handshake-timeout", "2s")
            .flag("unauthenticated-timeout", "3s"),
    )
    .await
    .unwrap();

    // A few thousand idle TCP connections that never start TLS, from
    // another "host" (well under this process's descriptor limit).
    let mut flood = Vec::new();
    for _ in 0..3000 {
        flood.push(tcp_from(&ca, [127, 0, 0, 2]).await);
    }

    // A legitimate node from its own address is served meanwhile...
    let node = attest_node(&ca, "node-a").await.unwrap();
    let entry = entry_for(&ca, "/web", "node-a").await;
    let mut client = ca.node_client(Some(node.tls_identity())).await.unwrap();
    let results = client
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            items: vec![pb::SignRequestItem {
                entry_id: entry,
                csr: new_key_and_csr().unwrap().1,
                ttl_seconds: 0,
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    crate::svid_of(&results[0]);
    // ...and so is the administrator.
    ca.mint_cli(&ca.id("/minted"), "minted", &[]).await.unwrap();

    // Every flood connection is closed by the CA: those over the
    // per-address cap at once, the others when their handshake times out.
    for (i, stream) in flood.iter_mut().enumerate() {
        closed_by_peer(stream, &format!("flood connection {i}")).await;
    }
}

#[tokio::test]
async fn unauthenticated_connections_are_capped_per_address_and_closed_when_idle() {
    let ca = CaProcess::start(
        CaOptions::default()
            .flag("max-connections-per-ip", "20")
            .flag("unauthenticated-timeout", "15s"),
    )
    .await
    .unwrap();
    let tls = anonymous_tls(&ca);
    let name = ServerName::try_from("localhost").unwrap();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..30 {
        let tcp = tcp_from(&ca, [127, 0, 0, 3]).await;
        match tls.connect(name.clone(), tcp).await {
            Ok(mut s) => {
                // Under TLS 1.3 a refused connection may still finish the
                // client side of the handshake; the first read tells.
                let mut byte = [0u8; 1];
                match tokio::time::timeout(Duration::from_millis(200), s.read(&mut byte)).await {
                    Ok(Ok(0) | Err(_)) => refused += 1,
                    _ => held.push(s),
                }
            }
            Err(_) => refused += 1,
        }
    }
    assert_eq!(
        held.len(),
        20,
        "exactly max_connections_per_ip connections without a node SVID stay open"
    );
    assert_eq!(refused, 10);

    // Another address is not affected by the first one's cap.
    let node = attest_node(&ca, "node-a").await.unwrap();
    assert!(node.spiffe_id.ends_with("/signet/node/node-a"));

    // Idle connections without a node SVID end after their lifetime.
    for (i, stream) in held.iter_mut().enumerate() {
        closed_by_peer(stream, &format!("unauthenticated connection {i}")).await;
    }
    // And their places come back.
    let tcp = tcp_from(&ca, [127, 0, 0, 3]).await;
    tls.connect(name, tcp)
        .await
        .expect("a new connection from that address is accepted again");
}

#[tokio::test]
async fn calls_without_a_node_svid_are_refused_before_their_body_is_read() {
    // Encoding the requests below takes this (debug) client a while: keep
    // its unauthenticated connection open meanwhile.
    let ca = CaProcess::start(CaOptions::default().flag("unauthenticated-timeout", "10m"))
        .await
        .unwrap();
    let pid = ca.pid().unwrap();
    let mut anonymous = ca.node_client(None).await.unwrap();

    // ~4 MB of empty items: two bytes each on the wire, far more decoded.
    let empty_items = pb::BatchSignX509SvidRequest {
        items: vec![pb::SignRequestItem::default(); 2_000_000],
    };
    let before = rss_kib(pid);
    let mark = ca.audit_mark().unwrap();
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut c = anonymous.clone();
        let req = empty_items.clone();
        calls.push(tokio::spawn(
            async move { c.batch_sign_x509_svid(req).await },
        ));
    }
    for call in calls {
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }
    let after = rss_kib(pid);
    eprintln!(
        "CA RSS around 8 concurrent unauthenticated 4 MB BatchSign calls: {before} KiB -> {after} KiB"
    );
    assert_rejected_not_issued(&ca, mark, "sign_batch");

    // AttestNode is open to everyone, but small.
    let err = anonymous
        .attest_node(pb::AttestNodeRequest {
            join_token: "x".repeat(100 * 1024),
            csr: vec![],
            k8s_psat_token: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
}

#[tokio::test]
async fn a_batch_is_bounded_by_its_item_count_before_decoding() {
    let ca = CaProcess::start(CaOptions::default().flag("max-batch", "10"))
        .await
        .unwrap();
    let pid = ca.pid().unwrap();
    let node = attest_node(&ca, "node-a").await.unwrap();
    let mut client = ca.node_client(Some(node.tls_identity())).await.unwrap();
    let mark = ca.audit_mark().unwrap();
    let before = rss_kib(pid);
    let err = client
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            items: vec![pb::SignRequestItem::default(); 2_000_000],
        })
        .await
        .unwrap_err();
    let after = rss_kib(pid);
    eprintln!(
        "CA RSS around one authenticated 4 MB batch of empty items: {before} KiB -> {after} KiB"
    );
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("limit is 10"), "{err:?}");
    assert_rejected_not_issued(&ca, mark, "sign_batch");
}

#[tokio::test]
async fn jwt_audiences_are_limited_in_count_and_length() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let node = attest_node(&ca, "node-a").await.unwrap();
    let entry = entry_for(&ca, "/web", "node-a").await;
    let mut client = ca.node_client(Some(node.tls_identity())).await.unwrap();
    let mint = |audience: Vec<String>| pb::MintJwtSvidRequest {
        entry_id: entry.clone(),
        audience,
        ttl_seconds: 0,
    };

    let at_limit: Vec<String> = (0..MAX_AUDIENCES)
        .map(|i| format!("{i:0>width$}", width = MAX_AUDIENCE_LEN))
        .collect();
    let token = client
        .mint_jwt_svid(mint(at_limit.clone()))
        .await
        .unwrap()
        .into_inner()
        .token;
    assert!(token.len() <= signet_identity::jwt::MAX_TOKEN_LEN);

    let mut too_many = at_limit;
    too_many.push("one-more".into());
    for (what, audience) in [
        ("too many audiences", too_many),
        (
            "an audience too long",
            vec!["a".repeat(MAX_AUDIENCE_LEN + 1)],
        ),
    ] {
        let mark = ca.audit_mark().unwrap();
        let err = client.mint_jwt_svid(mint(audience)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert_rejected_not_issued(&ca, mark, "mint_jwt_svid");
    }

    // 300,000 audiences do not even reach the CA's logic.
    let err = client
        .mint_jwt_svid(mint(vec!["a".into(); 300_000]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
}

#[tokio::test]
async fn connections_per_node_are_capped() {
    let ca = CaProcess::start(CaOptions::default().flag("max-connections-per-node", "3"))
        .await
        .unwrap();
    let node = attest_node(&ca, "node-a").await.unwrap();
    let list = |mut c: signet_proto::ca::v1::node_client::NodeClient<tonic::transport::Channel>| async move {
        c.list_authorized_entries(pb::ListAuthorizedEntriesRequest {})
            .await
            .map(|_| c)
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        let client = ca.node_client(Some(node.tls_identity())).await.unwrap();
        held.push(list(client).await.expect("within the per-node cap"));
    }
    // A fourth connection with the same node SVID is closed after its
    // handshake: its call fails at the transport.
    let fourth = ca.node_client(Some(node.tls_identity())).await;
    if let Ok(client) = fourth {
        let err = list(client).await.expect_err("over the per-node cap");
        assert!(
            // The close reaches the client as a transport failure; which
            // code hyper's error maps to depends on when it lands.
            matches!(
                err.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled
            ),
            "{err:?}"
        );
    }
    // Another node is not affected.
    let other = attest_node(&ca, "node-b").await.unwrap();
    list(ca.node_client(Some(other.tls_identity())).await.unwrap())
        .await
        .unwrap();

    // Closing one gives its place back (the close reaches the CA shortly).
    drop(held.pop());
    let deadline = std::time::Instant::now() + CLOSE_BOUND;
    loop {
        if let Ok(client) = ca.node_client(Some(node.tls_identity())).await
            && list(client).await.is_ok()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the place of a closed connection never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
