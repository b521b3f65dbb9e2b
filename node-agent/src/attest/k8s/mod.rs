//! The Kubernetes pod workload attestor: from the caller's PID to its pod
//! and container (`/proc/<pid>/cgroup`, [`cgroup`]), then to the pod's
//! metadata (the kubelet's `/pods`, [`kubelet`], or a watch of this node's
//! pods on the API server, [`apiserver`]), then to `k8s` selectors:
//! `ns:`, `sa:`, `pod-name:`, `pod-uid:`, `pod-label:K:V`, `node-name:`,
//! `container-name:`, `container-image:`.
//!
//! A process in no pod (a host process) gets no `k8s` selectors; the unix
//! attestor's still apply. A process whose pod or container the kubelet
//! does not list yet (just started) is looked up again, a few times with
//! short sleeps and a fresh list each time (or, with the API source, as the
//! watch brings changes), before it is refused, as SPIRE's k8s attestor
//! does.

#[cfg(test)]
mod api_tests;
pub mod apiserver;
pub mod cgroup;
pub mod kubelet;
#[cfg(test)]
mod tests;

use std::io::Read as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use self::apiserver::{ApiPodSource, ApiSettings, Lookup};
use self::cgroup::{CgroupError, MAX_CGROUP_FILE, PodContainer};
use self::kubelet::{KubeletClient, KubeletError, KubeletSettings, Pod, PodCache};
use super::unix::UnixAttestor;
use super::{AttestError, PeerCred, WorkloadAttestor};
use crate::state::Selector;

/// The selector type of this attestor.
pub const SELECTOR_TYPE: &str = "k8s";

/// Why the pod attestor refused a caller.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// The cgroup file names a pod in no known form.
    #[error("process {pid}: {source}")]
    Cgroup {
        pid: i32,
        #[source]
        source: CgroupError,
    },
    /// The kubelet does not list the pod or the container, after retries.
    #[error("process {pid}: pod {pod_uid} container {container_id} is not among this node's pods")]
    UnknownContainer {
        pid: i32,
        pod_uid: String,
        container_id: String,
    },
    /// The kubelet could not be asked, after retries.
    #[error("process {pid}: {source}")]
    Kubelet {
        pid: i32,
        #[source]
        source: KubeletError,
    },
    /// The API server's view of this node's pods is not usable (not listed
    /// yet, or unreachable for too long), after retries.
    #[error("process {pid}: {reason}")]
    ApiUnavailable { pid: i32, reason: String },
}

impl K8sError {
    /// Whether the caller should retry later (the kubelet or the API server
    /// is down), rather than being not permitted.
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Kubelet { .. } | Self::ApiUnavailable { .. })
    }

    /// A short name of the refusal, for audit records and metrics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Cgroup { .. } => "cgroup_format",
            Self::UnknownContainer { .. } => "unknown_pod",
            Self::Kubelet { .. } => "kubelet_unavailable",
            Self::ApiUnavailable { .. } => "api_unavailable",
        }
    }
}

/// Why the attestor could not be set up.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Kubelet(#[from] KubeletError),
    #[error("api pod source: {0}")]
    Api(#[from] signet_k8s::K8sError),
}

/// Where pod metadata comes from.
#[derive(Debug, Clone)]
pub enum SourceSettings {
    /// The kubelet's `/pods` (the default).
    Kubelet(KubeletSettings),
    /// A list and watch of this node's pods on the API server.
    Api(ApiSettings),
}

impl SourceSettings {
    /// `kubelet` or `api`, for logs.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Kubelet(_) => "kubelet",
            Self::Api(_) => "api",
        }
    }
}

enum PodSource {
    Kubelet(Box<PodCache>),
    Api(ApiPodSource),
}

/// The attestor's settings (`[k8s_workload]` in the agent's config).
#[derive(Debug, Clone)]
pub struct K8sSettings {
    pub source: SourceSettings,
    /// This node's name: only pods the kubelet places here are considered.
    pub node_name: String,
    /// Where `<pid>/cgroup` and `<pid>/stat` are read (`/proc`).
    pub proc_root: PathBuf,
    /// How long a kubelet pod list is reused.
    pub cache_ttl: Duration,
    /// Lookups of a process's pod before it is refused (at least 1).
    pub poll_attempts: u32,
    /// Sleep between two lookups.
    pub poll_interval: Duration,
}

/// The pod attestor.
pub struct K8sAttestor {
    source: PodSource,
    node_name: String,
    proc: UnixAttestor,
    proc_root: PathBuf,
    poll_attempts: u32,
    poll_interval: Duration,
}

impl K8sAttestor {
    /// Checks the kubelet settings (URL, CA file), or builds the API client
    /// and starts following this node's pods (on the current runtime).
    ///
    /// # Errors
    /// See [`KubeletClient::new`] and [`ApiPodSource::start`].
    pub async fn start(settings: K8sSettings) -> Result<Self, SetupError> {
        let source = match &settings.source {
            SourceSettings::Kubelet(k) => PodSource::Kubelet(Box::new(PodCache::new(
                KubeletClient::new(k.clone())?,
                settings.cache_ttl,
            ))),
            SourceSettings::Api(a) => {
                PodSource::Api(ApiPodSource::start(a, &settings.node_name).await?)
            }
        };
        Ok(Self::with_source(source, settings))
    }

    /// The attestor over an API pod source made by the caller (tests give
    /// it a client of the fake API server).
    #[must_use]
    pub fn with_api_source(source: ApiPodSource, settings: K8sSettings) -> Self {
        Self::with_source(PodSource::Api(source), settings)
    }

    fn with_source(source: PodSource, settings: K8sSettings) -> Self {
        Self {
            source,
            node_name: settings.node_name,
            proc: UnixAttestor::with_roots(settings.proc_root.clone(), PathBuf::from("/etc")),
            proc_root: settings.proc_root,
            poll_attempts: settings.poll_attempts.max(1),
            poll_interval: settings.poll_interval,
        }
    }

    fn read_cgroup(&self, pid: i32) -> Result<String, AttestError> {
        let path = self.proc_root.join(pid.to_string()).join("cgroup");
        let mut text = String::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_CGROUP_FILE as u64 + 1).read_to_string(&mut text))
            .map_err(|e| AttestError::Proc {
                pid,
                reason: format!("{}: {e}", path.display()),
            })?;
        Ok(text)
    }

    async fn find(&self, pid: i32, pc: &PodContainer) -> Result<(Pod, String), K8sError> {
        match &self.source {
            PodSource::Kubelet(cache) => self.find_kubelet(cache, pid, pc).await,
            PodSource::Api(source) => self.find_api(source, pid, pc).await,
        }
    }

    /// The pod and container in the API index, waiting for the watch's
    /// changes up to `poll_attempts * poll_interval` while it is missing or
    /// the index cannot be trusted.
    async fn find_api(
        &self,
        source: &ApiPodSource,
        pid: i32,
        pc: &PodContainer,
    ) -> Result<(Pod, String), K8sError> {
        let mut rx = source.subscribe();
        let deadline = tokio::time::Instant::now() + self.poll_interval * self.poll_attempts;
        loop {
            let lookup = {
                let index = rx.borrow_and_update();
                source.lookup(&index, &pc.pod_uid)
            };
            let unavailable = match lookup {
                Lookup::Found(pod) if pod.spec.node_name == self.node_name => {
                    if let Some((status, _)) = pod.container(&pc.container_id) {
                        let name = status.name.clone();
                        return Ok((*pod, name));
                    }
                    None
                }
                Lookup::Found(_) | Lookup::Missing => None,
                Lookup::Unavailable(reason) => Some(reason),
            };
            tracing::debug!(pid, pod_uid = %pc.pod_uid, ?unavailable, "container not in the pod index yet");
            let changed = tokio::time::timeout_at(deadline, rx.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                // Deadline, or the source task is gone.
                return Err(match unavailable {
                    Some(reason) => K8sError::ApiUnavailable { pid, reason },
                    None if changed.is_ok() => K8sError::ApiUnavailable {
                        pid,
                        reason: "the pod watch stopped".into(),
                    },
                    None => K8sError::UnknownContainer {
                        pid,
                        pod_uid: pc.pod_uid.clone(),
                        container_id: pc.container_id.clone(),
                    },
                });
            }
        }
    }

    /// Finds the pod and container, retrying while the kubelet does not
    /// list them or cannot be reached.
    async fn find_kubelet(
        &self,
        cache: &PodCache,
        pid: i32,
        pc: &PodContainer,
    ) -> Result<(Pod, String), K8sError> {
        let mut seen: Option<Instant> = None;
        let mut last_error = None;
        for attempt in 0..self.poll_attempts {
            if attempt > 0 {
                tokio::time::sleep(self.poll_interval).await;
            }
            match cache.pods(seen).await {
                Ok((at, pods)) => {
                    seen = Some(at);
                    last_error = None;
                    let found = pods
                        .iter()
                        .filter(|p| {
                            p.metadata.uid == pc.pod_uid && p.spec.node_name == self.node_name
                        })
                        .find_map(|p| {
                            p.container(&pc.container_id)
                                .map(|(status, _)| (p.clone(), status.name.clone()))
                        });
                    if let Some(found) = found {
                        return Ok(found);
                    }
                    tracing::debug!(pid, attempt, pod_uid = %pc.pod_uid, "container not listed by the kubelet yet");
                }
                Err(e) => {
                    tracing::debug!(pid, attempt, error = %e, "kubelet lookup failed");
                    seen = None;
                    last_error = Some(e);
                }
            }
        }
        Err(match last_error {
            Some(source) => K8sError::Kubelet { pid, source },
            None => K8sError::UnknownContainer {
                pid,
                pod_uid: pc.pod_uid.clone(),
                container_id: pc.container_id.clone(),
            },
        })
    }
}

/// The selectors of container `container` of `pod`.
#[must_use]
pub fn selectors(pod: &Pod, container: &str) -> Vec<Selector> {
    let s = |v: String| Selector::new(SELECTOR_TYPE, v);
    let m = &pod.metadata;
    let mut out = vec![
        s(format!("ns:{}", m.namespace)),
        s(format!("sa:{}", pod.spec.service_account_name)),
        s(format!("pod-name:{}", m.name)),
        s(format!("pod-uid:{}", m.uid)),
        s(format!("node-name:{}", pod.spec.node_name)),
        s(format!("container-name:{container}")),
    ];
    out.extend(
        m.labels
            .iter()
            .map(|(k, v)| s(format!("pod-label:{k}:{v}"))),
    );
    let statuses = pod
        .status
        .container_statuses
        .iter()
        .chain(&pod.status.init_container_statuses)
        .chain(&pod.status.ephemeral_container_statuses);
    let specs = pod
        .spec
        .containers
        .iter()
        .chain(&pod.spec.init_containers)
        .chain(&pod.spec.ephemeral_containers);
    // The image as written in the pod spec and as the runtime reports it
    // (often the same name, fully qualified).
    let images = statuses
        .filter(|c| c.name == container)
        .map(|c| &c.image)
        .chain(specs.filter(|c| c.name == container).map(|c| &c.image));
    for image in images {
        if !image.is_empty() {
            out.push(s(format!("container-image:{image}")));
        }
    }
    out.sort();
    out.dedup();
    out
}

#[tonic::async_trait]
impl WorkloadAttestor for K8sAttestor {
    fn name(&self) -> &'static str {
        "k8s"
    }

    async fn attest(&self, peer: PeerCred) -> Result<Vec<Selector>, AttestError> {
        let pid = peer.pid;
        let started = self.proc.start_time(pid)?;
        let text = self.read_cgroup(pid)?;
        let Some(pc) =
            cgroup::parse_cgroup_file(&text).map_err(|source| K8sError::Cgroup { pid, source })?
        else {
            return Ok(Vec::new());
        };
        let (pod, container) = self.find(pid, &pc).await?;
        // The PID must still name the process whose cgroup was read.
        match self.proc.start_time(pid) {
            Ok(t) if t == started => {}
            _ => return Err(AttestError::ProcessChanged(pid)),
        }
        let selectors = selectors(&pod, &container);
        tracing::debug!(pid, pod_uid = %pc.pod_uid, container, "attested pod workload");
        Ok(selectors)
    }
}
