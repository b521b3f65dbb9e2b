//! The kubelet's `/pods` endpoint: the pods of this node, as the kubelet
//! sees them, over HTTPS (the authenticated port, 10250, with a bearer
//! token) or plain HTTP (the read-only port, 10255, off in most clusters).
//!
//! One request at a time, bounded in time and size; the answer is kept for
//! a short TTL so that a burst of workloads costs one request.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Deserialize;

/// Why the kubelet's pod list could not be had.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// The URL is not `http(s)://host[:port]/path`.
    #[error("invalid kubelet url {0:?}")]
    Url(String),
    /// The CA or token file cannot be read or holds nothing usable.
    #[error("cannot read {what} {path}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// An https URL with neither a CA file nor `skip_verify`.
    #[error("an https kubelet url needs a CA file (kubelet_ca_file) or kubelet_skip_verify")]
    NoTrust,
    /// TLS settings refused by rustls.
    #[error("kubelet tls settings: {0}")]
    Tls(#[from] rustls::Error),
    /// Connect, handshake, request or body failed.
    #[error("kubelet {url} unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// No answer within the timeout.
    #[error("kubelet {0} did not answer within {1:?}")]
    Timeout(String, Duration),
    /// An answer other than 200.
    #[error("kubelet {url} answered {status}")]
    Status { url: String, status: u16 },
    /// A body larger than the limit.
    #[error("kubelet answer larger than {0} bytes")]
    TooLarge(usize),
    /// A body that is not a pod list.
    #[error("kubelet answer is not a pod list: {0}")]
    Json(String),
}

/// How to reach the kubelet.
#[derive(Debug, Clone)]
pub struct KubeletSettings {
    /// `https://127.0.0.1:10250/pods` by default.
    pub url: String,
    /// PEM roots for the kubelet's serving certificate (https).
    pub ca_file: Option<PathBuf>,
    /// A bearer token, re-read on every request (projected tokens rotate).
    pub token_file: Option<PathBuf>,
    /// Accept any kubelet certificate. Off by default.
    pub skip_verify: bool,
    /// Connect + request + body.
    pub timeout: Duration,
    /// Largest body accepted.
    pub max_response_bytes: usize,
}

/// The parts of a pod the attestor reads (the kubelet sends core/v1 Pods).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub service_account_name: String,
    #[serde(default)]
    pub node_name: String,
    #[serde(default)]
    pub containers: Vec<Container>,
    #[serde(default)]
    pub init_containers: Vec<Container>,
    #[serde(default)]
    pub ephemeral_containers: Vec<Container>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Container {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub image: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default)]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub init_container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub image: String,
    /// `<runtime>://<id>`, empty until the container was created.
    #[serde(default, rename = "containerID")]
    pub container_id: String,
}

#[derive(Debug, Deserialize)]
struct PodList {
    #[serde(default)]
    items: Vec<Pod>,
}

impl Pod {
    /// The status and spec of the container whose ID is `id`.
    #[must_use]
    pub fn container(&self, id: &str) -> Option<(&ContainerStatus, Option<&Container>)> {
        let s = &self.status;
        let status = s
            .container_statuses
            .iter()
            .chain(&s.init_container_statuses)
            .chain(&s.ephemeral_container_statuses)
            .find(|c| {
                c.container_id
                    .split_once("://")
                    .is_some_and(|(_, cid)| cid == id)
            })?;
        let spec = self
            .spec
            .containers
            .iter()
            .chain(&self.spec.init_containers)
            .chain(&self.spec.ephemeral_containers)
            .find(|c| c.name == status.name);
        Some((status, spec))
    }
}

/// Parses a `/pods` answer.
///
/// # Errors
/// [`KubeletError::Json`].
pub fn parse_pod_list(body: &[u8]) -> Result<Vec<Pod>, KubeletError> {
    serde_json::from_slice::<PodList>(body)
        .map(|l| l.items)
        .map_err(|e| KubeletError::Json(e.to_string()))
}

/// Fetches `/pods` from the kubelet.
pub struct KubeletClient {
    settings: KubeletSettings,
    uri: hyper::Uri,
    host: String,
    port: u16,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletClient")
            .field("url", &self.settings.url)
            .finish_non_exhaustive()
    }
}

impl KubeletClient {
    /// Checks the settings and reads the CA file.
    ///
    /// # Errors
    /// A bad URL, an unreadable or empty CA file, https with neither a CA
    /// file nor `skip_verify`.
    pub fn new(settings: KubeletSettings) -> Result<Self, KubeletError> {
        let bad = || KubeletError::Url(settings.url.clone());
        let uri: hyper::Uri = settings.url.parse().map_err(|_| bad())?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad()),
        };
        let host = uri
            .host()
            .ok_or_else(bad)?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            Some(tokio_rustls::TlsConnector::from(tls_config(&settings)?))
        } else {
            None
        };
        Ok(Self {
            settings,
            uri,
            host,
            port,
            tls,
        })
    }

    /// One `GET /pods`, within the timeout.
    ///
    /// # Errors
    /// See [`KubeletError`].
    pub async fn pods(&self) -> Result<Vec<Pod>, KubeletError> {
        let timeout = self.settings.timeout;
        match tokio::time::timeout(timeout, self.fetch()).await {
            Ok(r) => r,
            Err(_) => Err(KubeletError::Timeout(self.settings.url.clone(), timeout)),
        }
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> KubeletError {
        KubeletError::Unreachable {
            url: self.settings.url.clone(),
            reason: e.to_string(),
        }
    }

    async fn fetch(&self) -> Result<Vec<Pod>, KubeletError> {
        let token = match &self.settings.token_file {
            Some(path) => Some(read_token(path)?),
            None => None,
        };
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| self.unreachable(e))?;
        let body = match &self.tls {
            Some(tls) => {
                let name =
                    ServerName::try_from(self.host.clone()).map_err(|e| self.unreachable(e))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| self.unreachable(e))?;
                self.request(stream, token).await?
            }
            None => self.request(tcp, token).await?,
        };
        parse_pod_list(&body)
    }

    async fn request<S>(&self, stream: S, token: Option<String>) -> Result<Bytes, KubeletError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unreachable(e))?;
        let driver = tokio::spawn(conn);
        let path = self
            .uri
            .path_and_query()
            .map_or("/pods", |p| p.as_str())
            .to_owned();
        let authority = self
            .uri
            .authority()
            .map(ToString::to_string)
            .unwrap_or_default();
        let mut req = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(t) = token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| self.unreachable(e))?;
        let result = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| self.unreachable(e))?;
            if resp.status() != hyper::StatusCode::OK {
                return Err(KubeletError::Status {
                    url: self.settings.url.clone(),
                    status: resp.status().as_u16(),
                });
            }
            let max = self.settings.max_response_bytes;
            Limited::new(resp.into_body(), max)
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        KubeletError::TooLarge(max)
                    } else {
                        self.unreachable(e)
                    }
                })
        }
        .await;
        driver.abort();
        result
    }
}

/// Most bytes read from a token file.
const MAX_TOKEN: u64 = 64 * 1024;

fn read_token(path: &std::path::Path) -> Result<String, KubeletError> {
    use std::io::Read as _;
    let err = |reason: String| KubeletError::File {
        what: "token file",
        path: path.to_owned(),
        reason,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN).read_to_string(&mut text))
        .map_err(|e| err(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() || token.contains(|c: char| c.is_ascii_control() || c == ' ') {
        return Err(err("empty or not a token".into()));
    }
    Ok(token.to_owned())
}

fn tls_config(settings: &KubeletSettings) -> Result<Arc<ClientConfig>, KubeletError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let config = if settings.skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate { provider }))
            .with_no_client_auth()
    } else {
        let path = settings.ca_file.as_ref().ok_or(KubeletError::NoTrust)?;
        let file_err = |reason: String| KubeletError::File {
            what: "kubelet CA file",
            path: path.clone(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
        let mut store = RootCertStore::empty();
        for cert in pem::parse_many(&pem).map_err(|e| file_err(e.to_string()))? {
            if cert.tag() == "CERTIFICATE" {
                store.add(CertificateDer::from(cert.into_contents()))?;
            }
        }
        if store.is_empty() {
            return Err(file_err("no certificate in it".into()));
        }
        builder.with_root_certificates(store).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// `skip_verify`: any certificate, but the handshake signatures are still
/// checked (the peer holds the key of the certificate it sent).
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The last pod list and when it was fetched; refreshed by one caller at a
/// time.
pub struct PodCache {
    client: KubeletClient,
    ttl: Duration,
    current: tokio::sync::Mutex<Option<(Instant, Arc<Vec<Pod>>)>>,
}

impl PodCache {
    #[must_use]
    pub fn new(client: KubeletClient, ttl: Duration) -> Self {
        Self {
            client,
            ttl,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// The pod list, fetched again when older than the TTL, or when
    /// `fresher_than` is given and the list is not newer than it (a caller
    /// that missed and wants a list fetched after its miss).
    ///
    /// # Errors
    /// The kubelet's error when a fetch was needed and failed.
    pub async fn pods(
        &self,
        fresher_than: Option<Instant>,
    ) -> Result<(Instant, Arc<Vec<Pod>>), KubeletError> {
        let mut current = self.current.lock().await;
        if let Some((at, pods)) = current.as_ref() {
            let fresh = at.elapsed() < self.ttl && fresher_than.is_none_or(|t| *at > t);
            if fresh {
                return Ok((*at, pods.clone()));
            }
        }
        let pods = Arc::new(self.client.pods().await?);
        let at = Instant::now();
        *current = Some((at, pods.clone()));
        Ok((at, pods))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_list_as_the_kubelet_sends_it() {
        let body = br#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[{
          "metadata":{"name":"web-0","namespace":"shop","uid":"u1","labels":{"app":"web"}},
          "spec":{"serviceAccountName":"web","nodeName":"n1","containers":[{"name":"app","image":"nginx:1.27"}],
                  "initContainers":[{"name":"init","image":"busybox"}]},
          "status":{"phase":"Running","containerStatuses":[{"name":"app","image":"docker.io/library/nginx:1.27",
              "imageID":"sha256:aa","containerID":"containerd://abc","ready":true}],
              "initContainerStatuses":[{"name":"init","image":"busybox","containerID":"containerd://def"}]}}]}"#;
        let pods = parse_pod_list(body).unwrap();
        assert_eq!(pods.len(), 1);
        let pod = &pods[0];
        assert_eq!(pod.spec.service_account_name, "web");
        let (status, spec) = pod.container("abc").unwrap();
        assert_eq!(status.name, "app");
        assert_eq!(spec.unwrap().image, "nginx:1.27");
        assert_eq!(pod.container("def").unwrap().0.name, "init");
        assert!(pod.container("ab").is_none(), "whole IDs only");
        assert!(pod.container("containerd://abc").is_none());
        assert!(parse_pod_list(b"not json").is_err());
        assert!(parse_pod_list(b"null").is_err());
        assert!(parse_pod_list(b"{\"items\":{}}").is_err());
    }

    #[test]
    fn bad_settings_are_refused_before_any_request() {
        let base = KubeletSettings {
            url: "https://127.0.0.1:10250/pods".into(),
            ca_file: None,
            token_file: None,
            skip_verify: false,
            timeout: Duration::from_secs(1),
            max_response_bytes: 1024,
        };
        assert!(matches!(
            KubeletClient::new(base.clone()),
            Err(KubeletError::NoTrust)
        ));
        let missing = KubeletSettings {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..base.clone()
        };
        assert!(matches!(
            KubeletClient::new(missing),
            Err(KubeletError::File { .. })
        ));
        for url in ["ftp://x/pods", "127.0.0.1:10250", "not a url"] {
            let s = KubeletSettings {
                url: url.into(),
                ..base.clone()
            };
            assert!(
                matches!(KubeletClient::new(s), Err(KubeletError::Url(_))),
                "{url}"
            );
        }
        let skip = KubeletSettings {
            skip_verify: true,
            ..base
        };
        assert!(KubeletClient::new(skip).is_ok());
    }
}
