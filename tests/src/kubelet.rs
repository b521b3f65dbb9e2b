//! A fake kubelet: `GET /pods` over HTTPS on loopback, answering the pod
//! list the test sets, to a caller with the right bearer token only (as the
//! kubelet's authenticated port does). Its serving certificate is issued by
//! a CA of its own, written to `ca.pem` beside the token file.
//!
//! It runs as a task of the test, not as a process: the kubelet is not a
//! Signet binary.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// The fake kubelet; stopped when dropped.
pub struct FakeKubelet {
    url: String,
    dir: tempfile::TempDir,
    pods: Arc<Mutex<Vec<Value>>>,
    requests: Arc<AtomicUsize>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FakeKubelet {
    /// Starts on a free loopback port with no pods.
    ///
    /// # Errors
    /// Certificates, files, the listener.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let token = "fake-kubelet-token-0123456789";
        std::fs::write(dir.path().join("token"), format!("{token}\n"))?;

        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fake-kubelet-ca");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem())?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate()?;
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])?;
        let cert = params.signed_by(&key, &issuer)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://{}/pods", listener.local_addr()?);

        let pods: Arc<Mutex<Vec<Value>>> = Arc::default();
        let requests: Arc<AtomicUsize> = Arc::default();
        let (p, r) = (pods.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let (pods, requests) = (p.clone(), r.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let answer = answer(&req, token, &pods, &requests);
                        async move { Ok::<_, std::convert::Infallible>(answer) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(Self {
            url,
            dir,
            pods,
            requests,
            task: Some(task),
        })
    }

    /// `https://127.0.0.1:PORT/pods`.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The PEM file of the CA that issued the serving certificate.
    #[must_use]
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A file holding the token the fake accepts.
    #[must_use]
    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    /// A scratch directory that lives as long as the fake.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the pod list.
    pub fn set_pods(&self, pods: Vec<Value>) {
        *self
            .pods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = pods;
    }

    /// `/pods` requests answered with 200 so far.
    #[must_use]
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Stops listening: connections are then refused.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn answer(
    req: &hyper::Request<hyper::body::Incoming>,
    token: &str,
    pods: &Mutex<Vec<Value>>,
    requests: &AtomicUsize,
) -> hyper::Response<Full<Bytes>> {
    let status = |code: u16, body: &str| {
        let mut resp = hyper::Response::new(Full::new(Bytes::from(body.to_owned())));
        *resp.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or_default();
        resp
    };
    let authorized = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {token}"));
    if !authorized {
        return status(401, "Unauthorized");
    }
    if req.method() != hyper::Method::GET || req.uri().path() != "/pods" {
        return status(404, "404 page not found");
    }
    let items = pods
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    requests.fetch_add(1, Ordering::SeqCst);
    let list = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items});
    let mut resp = status(200, &list.to_string());
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A running pod as the kubelet lists it: one container per
/// `(name, image, container ID)`, run by containerd.
#[must_use]
pub fn pod_json(
    namespace: &str,
    name: &str,
    uid: &str,
    service_account: &str,
    node: &str,
    labels: &[(&str, &str)],
    containers: &[(&str, &str, &str)],
) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
        .collect();
    json!({
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "labels": labels},
        "spec": {
            "serviceAccountName": service_account,
            "nodeName": node,
            "containers": containers.iter().map(|(n, image, _)| json!({"name": n, "image": image})).collect::<Vec<_>>(),
        },
        "status": {
            "phase": "Running",
            "containerStatuses": containers.iter().map(|(n, image, id)| json!({
                "name": n,
                "image": format!("docker.io/library/{image}"),
                "imageID": format!("docker.io/library/{image}@sha256:{}", "0".repeat(64)),
                "containerID": format!("containerd://{id}"),
                "ready": true,
            })).collect::<Vec<_>>(),
        },
    })
}

/// A test-built `/proc`: `<root>/<pid>/stat` copied from the real process
/// (the attestor's PID-reuse check reads it) and `<root>/<pid>/cgroup` as
/// the kubelet's cgroup driver would have made it.
///
/// # Errors
/// The process is gone, or the files cannot be written.
pub fn emulate_proc(root: &Path, pid: u32, cgroup: &str) -> anyhow::Result<()> {
    let dir = root.join(pid.to_string());
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(format!("/proc/{pid}/stat"), dir.join("stat"))?;
    std::fs::write(dir.join("cgroup"), cgroup)?;
    Ok(())
}
