//! `signet-bundle-endpoint-bench`: requests per second and latency of the
//! CA's SPIFFE bundle endpoint (`GET /` over HTTPS, https_spiffe profile).
//!
//! Prints, from one run on this machine:
//! - the ceiling: the same clients against a bare HTTPS server in this
//!   process (rustls + hyper, the same TLS stack and certificate type,
//!   answering a fixed body of the same size with no work at all);
//! - the real `signet-ca` process's endpoint, with kept-alive connections
//!   and with one new TLS connection per request (what a federated poller
//!   does).
//!
//! Usage: `signet-bundle-endpoint-bench [--seconds N] [--concurrency N]`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use signet_identity::TrustBundle;
use signet_tests::{CaOptions, CaProcess};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

fn arg(name: &str, default: u64) -> anyhow::Result<u64> {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .map(|s| s.parse().with_context(|| format!("{name} takes a number")))
        .transpose()
        .map(|v| v.unwrap_or(default))
}

/// Checks the chain against the CA's roots (webpki, server usage); the
/// SPIFFE ID and hostname are the product's business, not the load's.
#[derive(Debug)]
struct Roots {
    bundle: TrustBundle,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Roots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchors: Vec<_> = self
            .bundle
            .x509_authorities()
            .iter()
            .filter_map(|d| webpki::anchor_from_trusted_cert(d).ok())
            .collect();
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("{e:?}")))?;
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| rustls::Error::General(format!("{e:?}")))?;
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.algs)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.algs)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

fn client_config(bundle: TrustBundle) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algs = provider.signature_verification_algorithms;
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| unreachable!("ring supports the default versions"))
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Roots { bundle, algs }))
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<Sender> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let stream = TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(send)
}

async fn get(send: &mut Sender) -> anyhow::Result<usize> {
    let req = http::Request::get("/")
        .header("host", "localhost")
        .body(Empty::new())?;
    let resp = send.send_request(req).await?;
    anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
    Ok(resp.into_body().collect().await?.to_bytes().len())
}

struct Run {
    label: String,
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i.min(self.latencies.len() - 1)]
    }
}

/// `concurrency` clients, each sending GET / back to back for `dur`, on
/// one kept-alive connection each or a new connection per request.
async fn drive(
    label: &str,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    concurrency: usize,
    dur: Duration,
    reconnect: bool,
) -> anyhow::Result<Run> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut send = connect(addr, tls.clone()).await?;
            while start.elapsed() < dur {
                let t = Instant::now();
                if reconnect {
                    send = connect(addr, tls.clone()).await?;
                }
                let res = get(&mut send).await;
                if res.is_err() && !reconnect {
                    // The server ends kept-alive connections after their
                    // lifetime; a client reconnects.
                    send = connect(addr, tls.clone()).await?;
                    continue;
                }
                res?;
                lat.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = start.elapsed();
    latencies.sort();
    Ok(Run {
        label: label.to_owned(),
        requests: latencies.len(),
        elapsed,
        latencies,
    })
}

/// A bare HTTPS server in this process answering `body` to everything,
/// with the chain and key of a fresh P-256 SVID-like certificate.
async fn bare_server(body: Bytes) -> anyhow::Result<(SocketAddr, TrustBundle)> {
    let td = signet_identity::TrustDomain::new("bench.test")?;
    let ca = signet_identity::testing::TestCa::new(td)?;
    let key = signet_identity::PrivateKey::generate(signet_identity::KeyType::EcdsaP256)?;
    let issued = ca.issue_for(
        &key,
        &signet_identity::SpiffeId::parse("spiffe://bench.test/signet/ca")?,
        &["localhost"],
        std::time::SystemTime::now() - Duration::from_secs(60),
        Duration::from_secs(3600),
    )?;
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.pkcs8_der().to_vec().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(issued.chain, der)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok((addr, ca.bundle().clone()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds = arg("--seconds", 5)?;
    let concurrency = usize::try_from(arg("--concurrency", 16)?)?;
    let dur = Duration::from_secs(seconds);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "# signet-bundle-endpoint-bench: GET / over HTTPS ({cores} cores, {seconds} s per run, {concurrency} concurrent clients)"
    );

    let dir = tempfile::tempdir()?;
    let endpoint: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let config = dir.path().join("ca.toml");
    std::fs::write(
        &config,
        format!("[bundle_endpoint]\nlisten = \"{endpoint}\"\nprofile = \"https_spiffe\"\n"),
    )?;
    let ca =
        CaProcess::start(CaOptions::default().flag("config", config.display().to_string())).await?;
    let ca_tls = client_config(ca.bundle()?);
    let mut probe = connect(endpoint, ca_tls.clone()).await?;
    let body_len = get(&mut probe).await?;
    drop(probe);

    let (bare, bare_bundle) = bare_server(Bytes::from(vec![b' '; body_len])).await?;
    let bare_tls = client_config(bare_bundle);

    let runs = [
        drive(
            "ceiling: bare rustls+hyper server, kept-alive",
            bare,
            bare_tls.clone(),
            concurrency,
            dur,
            false,
        )
        .await?,
        drive(
            "signet-ca bundle endpoint, kept-alive",
            endpoint,
            ca_tls.clone(),
            concurrency,
            dur,
            false,
        )
        .await?,
        drive(
            "ceiling: bare rustls+hyper server, new TLS connection per request",
            bare,
            bare_tls,
            concurrency,
            dur,
            true,
        )
        .await?,
        drive(
            "signet-ca bundle endpoint, new TLS connection per request",
            endpoint,
            ca_tls,
            concurrency,
            dur,
            true,
        )
        .await?,
    ];
    println!("\nbody: {body_len} bytes (the CA's JWKS)\n");
    println!("| run | requests/s | p50 | p99 |");
    println!("|---|---|---|---|");
    for r in &runs {
        println!(
            "| {} | {:.0} | {:.2} ms | {:.2} ms |",
            r.label,
            r.rate(),
            r.pct(0.50).as_secs_f64() * 1e3,
            r.pct(0.99).as_secs_f64() * 1e3
        );
    }
    Ok(())
}
