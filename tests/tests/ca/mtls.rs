//! Two workloads with minted SVIDs talk mutual TLS with stock rustls and
//! nothing but the bundle; a client whose SVID comes from another CA, even
//! one of the same trust domain, is refused.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, ServerName};
use signet_tests::{
    CaOptions, CaProcess, crypto_provider, mtls_client_config, mtls_server_config, root_store,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Bound on every network step, so a refusal cannot turn into a hang.
const STEP: Duration = Duration::from_secs(10);

/// The single URI SAN of a certificate.
fn uri_san(cert: &CertificateDer<'_>) -> String {
    let uris = crate::uri_sans(cert);
    assert_eq!(uris.len(), 1, "{uris:?}");
    uris[0].clone()
}

/// Accepts one connection: handshake, read "ping", answer "pong". Returns
/// the client's SPIFFE ID, or why the server refused the connection.
async fn serve_one(listener: TcpListener, acceptor: TlsAcceptor) -> Result<String, String> {
    let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
    let mut tls = acceptor
        .accept(tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(uri_san)
        .ok_or("no client certificate")?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if &buf != b"ping" {
        return Err(format!("unexpected bytes {buf:?}"));
    }
    tls.write_all(b"pong")
        .await
        .map_err(|e| format!("write: {e}"))?;
    tls.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
    Ok(peer)
}

/// One round trip as a client: returns the server's SPIFFE ID.
async fn ping(port: u16, config: Arc<ClientConfig>) -> Result<String, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = TlsConnector::from(config)
        .connect(ServerName::try_from("server.test").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let server = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(uri_san)
        .ok_or("no server certificate")?;
    tls.write_all(b"ping")
        .await
        .map_err(|e| format!("write: {e}"))?;
    // With TLS 1.3 the client's handshake completes before the server has
    // judged the client certificate: a refusal shows up here.
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if &buf != b"pong" {
        return Err(format!("unexpected bytes {buf:?}"));
    }
    Ok(server)
}

/// Runs `serve_one` against `ping` with `client`: (server's view, client's view).
async fn exchange(
    acceptor: &TlsAcceptor,
    client: Arc<ClientConfig>,
) -> (Result<String, String>, Result<String, String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(tokio::time::timeout(
        STEP,
        serve_one(listener, acceptor.clone()),
    ));
    let client = tokio::time::timeout(STEP, ping(port, client))
        .await
        .unwrap_or_else(|_| Err("client timed out".into()));
    let server = server
        .await
        .unwrap()
        .unwrap_or_else(|_| Err("server timed out".into()));
    (server, client)
}

#[tokio::test]
async fn minted_svids_authenticate_each_other_and_a_foreign_ca_is_refused() {
    // Two CAs of the same trust domain: only signatures tell them apart.
    let (ca, other) = tokio::join!(
        CaProcess::start(CaOptions::default()),
        CaProcess::start(CaOptions::default())
    );
    let (ca, other) = (ca.unwrap(), other.unwrap());
    let server_id = ca.id("/server");
    let client_id = ca.id("/client");
    let server = ca
        .mint_cli(
            &server_id,
            "server",
            &["--dns-name", "server.test", "--ttl", "1h"],
        )
        .await
        .unwrap();
    let client = ca.mint_cli(&client_id, "client", &[]).await.unwrap();
    let foreign = other.mint_cli(&client_id, "foreign", &[]).await.unwrap();
    assert_ne!(client.roots, foreign.roots, "two CAs must not share a root");

    let acceptor = TlsAcceptor::from(
        mtls_server_config(&server.roots, server.chain.clone(), server.key().unwrap()).unwrap(),
    );

    // The good pair.
    let good =
        mtls_client_config(&client.roots, client.chain.clone(), client.key().unwrap()).unwrap();
    let (server_view, client_view) = exchange(&acceptor, good).await;
    assert_eq!(server_view, Ok(client_id.clone()), "server side");
    assert_eq!(client_view, Ok(server_id.clone()), "client side");

    // Same SPIFFE ID, another CA: the server must refuse it.
    let forged =
        mtls_client_config(&client.roots, foreign.chain.clone(), foreign.key().unwrap()).unwrap();
    let (server_view, client_view) = exchange(&acceptor, forged).await;
    assert!(
        server_view
            .as_ref()
            .is_err_and(|e| e.starts_with("handshake")),
        "the server accepted a client certificate from another CA: {server_view:?}"
    );
    assert!(
        client_view.is_err(),
        "the exchange completed with a foreign client certificate: {client_view:?}"
    );

    // No client certificate at all.
    let anonymous = Arc::new(
        ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(root_store(&client.roots).unwrap())
            .with_no_client_auth(),
    );
    let (server_view, client_view) = exchange(&acceptor, anonymous).await;
    assert!(
        server_view
            .as_ref()
            .is_err_and(|e| e.starts_with("handshake"))
            && client_view.is_err(),
        "a client without a certificate got through: server {server_view:?}, client {client_view:?}"
    );
}

#[tokio::test]
async fn the_ca_serves_its_own_svid_with_the_reserved_ca_id_on_the_node_port() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let roots = ca.bundle().unwrap().x509_authorities().to_vec();
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(root_store(&roots).unwrap())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", ca.port())).await.unwrap();
    let tls = tokio::time::timeout(
        STEP,
        TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .unwrap()
    .expect("stock rustls accepts the CA's certificate for localhost");
    let chain: Vec<CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .unwrap()
        .iter()
        .map(|c| c.clone().into_owned())
        .collect();
    // The reserved CA identity as the one URI SAN (agents require it after
    // bootstrap), beside the DNS name clients ask for.
    let reserved = signet_identity::reserved::ca_server_id(ca.trust_domain());
    assert_eq!(reserved.as_str(), ca.id("/signet/ca"));
    crate::assert_leaf_profile(&chain[0], reserved.as_str(), &["localhost"]);
    let (ok, out) =
        signet_tests::openssl_verify(signet_tests::Purpose::SslServer, &ca.bundle_path(), &chain)
            .unwrap();
    assert!(ok, "openssl refused the CA's server certificate:\n{out}");
}
