//! A fake Kubernetes API server on loopback, faithful to the real one for exactly the
//! calls Signet makes: TokenReview; pods get/list/watch (all namespaces or one, the
//! `spec.nodeName` field selector, resourceVersion, BOOKMARK events, 410 after
//! compaction); nodes and namespaces get/list; ConfigMaps get/create/update with 409 on a
//! stale resourceVersion. Callers must present the bearer token it hands out (401
//! otherwise), and every request is logged so tests can check what was called.

mod handlers;
mod state;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::{broadcast, oneshot};

use state::{Event, State};
pub use state::{FakeToken, Request};

use crate::K8sError;

/// The bearer token callers of the fake must present.
pub const CALLER_TOKEN: &str = "signet-fake-apiserver-caller";

/// A running fake API server; stops when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    events: broadcast::Sender<Event>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: keep serving it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl FakeApiServer {
    /// Starts the server on 127.0.0.1 on a free port, on the current tokio runtime.
    ///
    /// # Errors
    /// [`K8sError::Transport`] when the port cannot be bound.
    pub async fn start() -> Result<Self, K8sError> {
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            events,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| K8sError::Transport(e.to_string()))?;
        let addr = listener
            .local_addr()
            .map_err(|e| K8sError::Transport(e.to_string()))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let app = handlers::router(shared.clone());
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "fake api server stopped");
            }
        });
        Ok(Self {
            addr,
            shared,
            stop: Some(stop),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig that points at this server with the caller token.
    pub fn kubeconfig(&self) -> Result<Kubeconfig, K8sError> {
        serde_json::from_value(self.kubeconfig_json()).map_err(|e| K8sError::Config(e.to_string()))
    }

    fn kubeconfig_json(&self) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url()}}],
            "users": [{"name": "signet", "user": {"token": CALLER_TOKEN}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "signet"}}],
            "current-context": "fake",
        })
    }

    /// Writes the kubeconfig (JSON, which is YAML) to `path` for real binaries.
    ///
    /// # Errors
    /// [`K8sError::Config`] when the file cannot be written.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), K8sError> {
        let text = serde_json::to_string_pretty(&self.kubeconfig_json())
            .map_err(|e| K8sError::Config(e.to_string()))?;
        std::fs::write(path, text).map_err(|e| K8sError::Config(format!("{}: {e}", path.display())))
    }

    /// A kube `Config` pointed at this server.
    ///
    /// # Errors
    /// [`K8sError::Config`] if kube refuses the generated kubeconfig.
    pub async fn config(&self) -> Result<kube::Config, K8sError> {
        kube::Config::from_custom_kubeconfig(self.kubeconfig()?, &KubeConfigOptions::default())
            .await
            .map_err(|e| K8sError::Config(e.to_string()))
    }

    /// A [`crate::KubeApi`] pointed at this server.
    ///
    /// # Errors
    /// As [`FakeApiServer::config`].
    pub async fn client(&self) -> Result<crate::KubeApi, K8sError> {
        crate::KubeApi::from_config(self.config().await?)
    }

    /// Makes `token` known to TokenReview with these claims.
    pub fn add_token(&self, token: &str, claims: FakeToken) {
        self.shared.lock().tokens.insert(token.to_string(), claims);
    }

    /// Whether TokenReview checks that the pod a token is bound to still exists with the
    /// same UID (the real server does; turning it off models its cache lag).
    pub fn set_bound_object_checks(&self, on: bool) {
        self.shared.lock().check_bound_objects = on;
    }

    /// Makes TokenReview answer with the token's own audiences whatever was asked, as
    /// authenticators that ignore `spec.audiences` do.
    pub fn set_ignore_requested_audiences(&self, on: bool) {
        self.shared.lock().ignore_requested_audiences = on;
    }

    /// Creates or replaces a pod (UID and resourceVersion assigned if missing) and tells
    /// watchers. Returns the stored pod.
    pub fn apply_pod(&self, pod: Pod) -> Pod {
        let mut st = self.shared.lock();
        let (stored, ev) = st.apply_pod(pod);
        let _ = self.shared.events.send(ev);
        stored
    }

    /// Deletes a pod and tells watchers; returns it if it existed.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        let mut st = self.shared.lock();
        let (pod, ev) = st.delete_pod(namespace, name)?;
        let _ = self.shared.events.send(ev);
        Some(pod)
    }

    /// Creates or replaces a node (UID assigned if missing).
    pub fn apply_node(&self, node: Node) -> Node {
        self.shared.lock().apply_node(node)
    }

    /// Deletes a node.
    pub fn delete_node(&self, name: &str) {
        self.shared.lock().nodes.remove(name);
    }

    /// Creates a namespace.
    pub fn add_namespace(&self, name: &str) {
        self.shared.lock().add_namespace(name);
    }

    /// Creates or replaces the IdentityPolicy object `name` (signet.dev/v1alpha1) with
    /// `spec` and tells watchers; returns the stored object.
    pub fn apply_identity_policy(&self, name: &str, spec: serde_json::Value) -> serde_json::Value {
        let mut st = self.shared.lock();
        let (obj, ev) = st.apply_identity_policy(name, spec);
        let _ = self.shared.events.send(ev);
        obj
    }

    /// Deletes the IdentityPolicy object `name` and tells watchers.
    pub fn delete_identity_policy(&self, name: &str) {
        let mut st = self.shared.lock();
        if let Some(ev) = st.delete_identity_policy(name) {
            let _ = self.shared.events.send(ev);
        }
    }

    /// An outage: while on, every request is answered 503 and open watches end.
    pub fn set_unavailable(&self, on: bool) {
        self.shared.lock().unavailable = on;
        if on {
            let _ = self.shared.events.send(Event::Close);
        }
    }

    /// Sends a BOOKMARK at the current resourceVersion to every watch that allows them.
    pub fn bookmark(&self) {
        let rv = self.shared.lock().rv;
        let _ = self.shared.events.send(Event::Bookmark(rv));
    }

    /// While `on`, pod list and watch requests answer 500 and open pod
    /// watches are ended, as when the API server loses etcd.
    pub fn set_pods_unavailable(&self, on: bool) {
        self.shared.lock().pods_unavailable = on;
        if on {
            let _ = self.shared.events.send(Event::Close);
        }
    }

    /// Forgets the pod event history, as etcd compaction does: watches from an older
    /// resourceVersion then get 410 Gone.
    pub fn compact(&self) {
        let mut st = self.shared.lock();
        st.compacted_to = st.rv;
        st.pod_events.clear();
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// A ConfigMap as stored.
    pub fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap> {
        self.shared
            .lock()
            .config_maps
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// After the next `n` GETs of this ConfigMap, another writer changes it (bumping its
    /// resourceVersion), so an update based on what was read gets 409 Conflict.
    pub fn interfere_with_config_map(&self, namespace: &str, name: &str, n: usize) {
        self.shared
            .lock()
            .interfere
            .insert((namespace.to_string(), name.to_string()), n);
    }

    /// Every request served so far.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
