//! Envoy SDS v3 (`envoy.service.secret.v3.SecretDiscoveryService`) on a unix
//! socket, so that Envoy gets its SVIDs and trust bundles from the agent
//! without a file or a sidecar helper.
//!
//! Envoy sends no credentials on SDS streams: the caller is identified by the
//! kernel (SO_PEERCRED), attested like a Workload API caller, and served only
//! what its selectors entitle it to. See [`resources`] for the names it may
//! ask for and [`xds`] for the protocol.

mod resources;
mod xds;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument as _, Span};

pub use resources::{
    ALL_BUNDLES, DEFAULT_SVID, MAX_RESOURCE_NAME_LEN, MAX_RESOURCE_NAMES, ROOT_CA, SECRET_TYPE_URL,
    SPIFFE_VALIDATOR, SPIFFE_VALIDATOR_TYPE_URL,
};
pub use xds::ResponseStream;

use crate::attest::{AttestError, PeerCred, WorkloadAttestor, attest_all, peer_of};
use crate::state::{Selector, SnapshotRx};
use resources::{Caller, Subscription, combined_version};
use xds::{Delta, Driver, Sotw, check_type_url, spiffe_validator_wanted};

/// Any local process may connect; attestation decides what it gets.
const SOCKET_MODE: u32 = 0o666;
/// How long open connections may take to close after shutdown is signalled.
/// Streams end at once; this only bounds a client that will not hang up.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// The SDS service: reads snapshots, attests every caller.
pub struct SdsServer {
    snapshots: SnapshotRx,
    attestors: Vec<Arc<dyn WorkloadAttestor>>,
    /// Set by [`serve`], so that open streams end on shutdown instead of
    /// holding the server's graceful shutdown open forever.
    shutdown: Option<watch::Receiver<bool>>,
}

impl SdsServer {
    pub fn new(snapshots: SnapshotRx, attestors: Vec<Arc<dyn WorkloadAttestor>>) -> Self {
        Self {
            snapshots,
            attestors,
            shutdown: None,
        }
    }

    /// Attests the caller and checks it has at least one registration entry.
    async fn admit(
        &self,
        peer: Result<PeerCred, AttestError>,
        rpc: &'static str,
    ) -> Result<(Span, Vec<Selector>), Status> {
        let peer = peer.map_err(|e| {
            tracing::warn!(rpc, error = %e, "refusing an SDS caller");
            attest_status(&e)
        })?;
        let span = tracing::info_span!("sds", rpc, pid = peer.pid, uid = peer.uid);
        let selectors = attest_all(&self.attestors, peer)
            .instrument(span.clone())
            .await
            .map_err(|e| {
                span.in_scope(|| tracing::warn!(error = %e, "workload attestation failed"));
                attest_status(&e)
            })?;
        // A caller arriving while the agent starts waits for its first sync
        // instead of being told it has no identity.
        let snapshot =
            crate::state::ready_snapshot(&self.snapshots, std::time::Duration::from_secs(10)).await;
        if snapshot.entries_for(&selectors).is_empty() {
            span.in_scope(|| {
                tracing::warn!(?selectors, "no registration entry matches the caller");
            });
            return Err(Status::permission_denied(
                "no identity is registered for the calling process",
            ));
        }
        span.in_scope(|| tracing::debug!(?selectors, "caller admitted"));
        Ok((span, selectors))
    }
}

/// Attestation errors as gRPC statuses, with the same codes as the Workload
/// API: a caller that cannot be identified is not permitted; /proc that
/// cannot be read (most often, the caller exited) is worth a retry.
fn attest_status(error: &AttestError) -> Status {
    crate::metrics::attestation_failed("sds", error);
    let message = format!("workload attestation failed: {error}");
    match error {
        AttestError::NoCredentials | AttestError::ProcessChanged(_) => {
            Status::permission_denied(message)
        }
        AttestError::Proc { .. } => Status::unavailable(message),
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for SdsServer {
    type StreamSecretsStream = ResponseStream<DiscoveryResponse>;
    type DeltaSecretsStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let peer = peer_of(&request);
        let (span, selectors) = self.admit(peer, "StreamSecrets").await?;
        let driver = Driver::new(
            request.into_inner(),
            Sotw::default(),
            self.snapshots.clone(),
            self.shutdown.clone(),
            selectors,
        );
        Ok(Response::new(driver.into_stream(span)))
    }

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        let peer = peer_of(&request);
        let (span, selectors) = self.admit(peer, "DeltaSecrets").await?;
        let driver = Driver::new(
            request.into_inner(),
            Delta::default(),
            self.snapshots.clone(),
            self.shutdown.clone(),
            selectors,
        );
        Ok(Response::new(driver.into_stream(span)))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let peer = peer_of(&request);
        let (span, selectors) = self.admit(peer, "FetchSecrets").await?;
        let request = request.into_inner();
        check_type_url(&request.type_url)?;
        resources::check_names(&request.resource_names, 0)?;
        let spiffe_validator = request
            .node
            .as_ref()
            .and_then(spiffe_validator_wanted)
            .unwrap_or(true);
        let snapshot = self.snapshots.borrow().clone();
        let caller = Caller::new(&snapshot, &selectors, SystemTime::now(), spiffe_validator);
        let resources = span.in_scope(|| {
            Subscription::from_names(&request.resource_names).resolve(
                &caller,
                true,
                &std::collections::HashMap::new(),
            )
        });
        if resources.is_empty() {
            return Err(Status::not_found(
                "none of the requested secrets is available",
            ));
        }
        Ok(Response::new(DiscoveryResponse {
            version_info: combined_version(&resources),
            resources: resources.into_iter().map(|r| r.into_any()).collect(),
            type_url: SECRET_TYPE_URL.to_owned(),
            ..DiscoveryResponse::default()
        }))
    }
}

/// Binds the unix socket (replacing a stale one, creating its directory, mode
/// 0666: attestation, not file permissions, decides what a caller gets),
/// serves SDS until `shutdown` turns true (or its sender is dropped), then
/// removes the socket if it is still ours. Connections still open
/// [`DRAIN_DEADLINE`] after shutdown are dropped.
///
/// # Errors
/// The socket cannot be bound (another server is live on it, or the path is
/// not a socket), or the server fails.
pub async fn serve(
    socket: PathBuf,
    mut server: SdsServer,
    shutdown: watch::Receiver<bool>,
) -> Result<(), signet_uds::SocketError> {
    let bound = signet_uds::bind(&socket, SOCKET_MODE).await?;
    server.shutdown = Some(shutdown.clone());
    tracing::info!(socket = %socket.display(), "serving Envoy SDS");
    let options = signet_uds::ServeOptions {
        drain_deadline: Some(DRAIN_DEADLINE),
        on_accept: Some(crate::attest::unix::accept_hook()),
        ..signet_uds::ServeOptions::default()
    };
    let result = signet_uds::serve(
        bound,
        Routes::new(SecretDiscoveryServiceServer::new(server)),
        options,
        shutdown,
    )
    .await;
    tracing::info!("SDS server stopped");
    Ok(result?)
}
