//! Workload attestation: from the caller of a unix socket to selectors.
//! Every configured `WorkloadAttestor` runs for each caller and their
//! selectors are merged: the unix one always, the Kubernetes pod one
//! ([`k8s`]) when `[k8s_workload]` is set. Their refusals are written to
//! the agent's audit log ([`audit`]).

pub mod audit;
pub mod k8s;
pub mod unix;

use crate::state::Selector;

/// The kernel's view of the process on the other end of a unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Device and inode of the peer's executable when the connection was
    /// accepted, when the serving loop recorded it ([`AcceptedPeer`]).
    pub exe_at_accept: Option<(u64, u64)>,
}

/// A connection's peer as sampled when the agent accepted it
/// ([`unix::accepted`]). The agent's sockets record it through
/// [`unix::accept_hook`], which puts it into every request's extensions, and
/// [`peer_of`] prefers it to tonic's `UdsConnectInfo`: the attestor then
/// refuses a caller whose PID runs another executable than at accept time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptedPeer {
    pub cred: PeerCred,
}

/// Why a caller could not be attested.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The connection carries no peer credentials.
    #[error("the caller's process credentials are not available")]
    NoCredentials,
    /// The process went away or was replaced during attestation (PID reuse).
    #[error("the calling process {0} changed or exited during attestation")]
    ProcessChanged(i32),
    /// Reading /proc failed.
    #[error("cannot inspect process {pid}: {reason}")]
    Proc { pid: i32, reason: String },
    /// The Kubernetes pod attestor refused the caller or could not ask
    /// the kubelet.
    #[error(transparent)]
    K8s(#[from] k8s::K8sError),
}

impl AttestError {
    /// Whether the caller may retry later (UNAVAILABLE) rather than being
    /// not permitted (PERMISSION_DENIED): /proc unreadable, kubelet down.
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::NoCredentials | Self::ProcessChanged(_) => false,
            Self::Proc { .. } => true,
            Self::K8s(e) => e.is_unavailable(),
        }
    }
}

/// Produces the selectors of a calling process.
#[tonic::async_trait]
pub trait WorkloadAttestor: Send + Sync + 'static {
    /// The attestor's name, used in logs.
    fn name(&self) -> &'static str;
    /// Selectors for the process `peer`.
    async fn attest(&self, peer: PeerCred) -> Result<Vec<Selector>, AttestError>;
}

/// Runs every attestor and merges their selectors (sorted, deduplicated).
///
/// # Errors
/// The first attestor error.
pub async fn attest_all(
    attestors: &[std::sync::Arc<dyn WorkloadAttestor>],
    peer: PeerCred,
) -> Result<Vec<Selector>, AttestError> {
    let mut all = Vec::new();
    for a in attestors {
        all.extend(a.attest(peer).await?);
    }
    all.sort();
    all.dedup();
    Ok(all)
}

/// The caller of a gRPC request served on a unix socket, from tonic's
/// connection info (SO_PEERCRED).
///
/// # Errors
/// [`AttestError::NoCredentials`] when the request did not come over a unix
/// socket with credentials.
pub fn peer_of<T>(req: &tonic::Request<T>) -> Result<PeerCred, AttestError> {
    if let Some(accepted) = req.extensions().get::<AcceptedPeer>() {
        return Ok(accepted.cred);
    }
    let info = req
        .extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
        .ok_or(AttestError::NoCredentials)?;
    let cred = info.peer_cred.ok_or(AttestError::NoCredentials)?;
    Ok(PeerCred {
        pid: cred.pid().ok_or(AttestError::NoCredentials)?,
        uid: cred.uid(),
        gid: cred.gid(),
        exe_at_accept: None,
    })
}
