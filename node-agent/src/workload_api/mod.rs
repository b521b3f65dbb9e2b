//! The SPIFFE Workload API server: what a local workload calls, over a unix
//! socket, to get its X.509-SVIDs, JWT-SVIDs and trust bundles.
//!
//! The caller proves nothing itself (the standard forbids requiring it);
//! every call and every stream is attested afresh from the kernel's view of
//! the socket peer, and what it gets is decided by the registration entries
//! its selectors match in the current [`Snapshot`](crate::state::Snapshot).
//! Streams follow the snapshot channel and push a complete new message only
//! when what this caller would receive has changed.

mod socket;
mod stream;
mod view;

#[cfg(test)]
mod tests;

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures::Stream;
use signet_identity::SpiffeId;
use signet_identity::jwt;
use signet_proto::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use signet_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svidRequest, X509svidResponse,
};
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::attest::{AttestError, WorkloadAttestor, attest_all, peer_of};
use crate::state::{JwtSource, Selector, SnapshotRx};

pub use socket::serve;

/// The gRPC metadata key every Workload API request must carry (SPIFFE
/// Workload Endpoint, section 3), against server-side request forgery.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";
/// The only accepted value of [`SECURITY_HEADER`]; the standard says it is
/// case sensitive.
const SECURITY_HEADER_VALUE: &str = "true";

/// The message the `spiffe` crate and SPIRE's clients recognise as "this
/// caller has no identity" (a PermissionDenied status).
const NO_IDENTITY: &str = "no identity issued";

/// Where the current time comes from; tests may move it.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The Workload API service. Cheap to share: everything inside is a channel
/// receiver or an `Arc`.
#[derive(Clone)]
pub struct WorkloadApi {
    snapshots: SnapshotRx,
    attestors: Arc<[Arc<dyn WorkloadAttestor>]>,
    jwt: Arc<dyn JwtSource>,
    clock: Clock,
    /// Set by [`serve`], so that open streams end when the server drains.
    shutdown: Option<watch::Receiver<bool>>,
}

impl std::fmt::Debug for WorkloadApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.attestors.iter().map(|a| a.name()).collect();
        f.debug_struct("WorkloadApi")
            .field("attestors", &names)
            .finish_non_exhaustive()
    }
}

impl WorkloadApi {
    /// A service serving `snapshots` to callers attested by `attestors`, with
    /// JWT-SVIDs minted through `jwt`.
    pub fn new(
        snapshots: SnapshotRx,
        attestors: Vec<Arc<dyn WorkloadAttestor>>,
        jwt: Arc<dyn JwtSource>,
    ) -> Self {
        Self {
            snapshots,
            attestors: attestors.into(),
            jwt,
            clock: Arc::new(SystemTime::now),
            shutdown: None,
        }
    }

    /// Replaces the system clock (for tests of expiry).
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The selectors of the process that sent `req`.
    async fn attest<T>(
        &self,
        req: &Request<T>,
        rpc: &'static str,
    ) -> Result<Vec<Selector>, Status> {
        let peer = peer_of(req).map_err(|e| attest_status(rpc, None, &e))?;
        let selectors = attest_all(&self.attestors, peer)
            .await
            .map_err(|e| attest_status(rpc, Some(peer.pid), &e))?;
        tracing::debug!(
            rpc,
            pid = peer.pid,
            uid = peer.uid,
            ?selectors,
            "workload attested"
        );
        Ok(selectors)
    }

    fn stream_context(&self) -> stream::Context {
        stream::Context {
            snapshots: self.snapshots.clone(),
            shutdown: self.shutdown.clone(),
            clock: self.clock.clone(),
        }
    }
}

/// The one place attestation failures become gRPC statuses. The Workload
/// Endpoint standard (section 6) keeps PermissionDenied for "not permitted"
/// and Unavailable for "the endpoint cannot handle the request now": a caller
/// we cannot identify is the former; /proc we cannot read is the latter, and
/// the client retries with a backoff.
fn attest_status(rpc: &'static str, pid: Option<i32>, error: &AttestError) -> Status {
    tracing::info!(rpc, ?pid, %error, "workload attestation failed");
    crate::metrics::attestation_failed("workload_api", error);
    match error {
        AttestError::NoCredentials | AttestError::ProcessChanged(_) => {
            Status::permission_denied(format!("workload attestation failed: {error}"))
        }
        AttestError::Proc { .. } => {
            Status::unavailable(format!("workload attestation failed: {error}"))
        }
    }
}

/// Bounds what a caller may ask the CA to put in a token: at most
/// [`jwt::MAX_AUDIENCES`] audiences of at most [`jwt::MAX_AUDIENCE_LEN`] bytes.
fn check_audience_limits(audience: &[String]) -> Result<(), Status> {
    if audience.len() > jwt::MAX_AUDIENCES {
        return Err(Status::invalid_argument(format!(
            "at most {} audiences may be requested, not {}",
            jwt::MAX_AUDIENCES,
            audience.len()
        )));
    }
    if audience.iter().any(|a| a.len() > jwt::MAX_AUDIENCE_LEN) {
        return Err(Status::invalid_argument(format!(
            "an audience may be at most {} bytes long",
            jwt::MAX_AUDIENCE_LEN
        )));
    }
    Ok(())
}

/// Rejects requests without `workload.spiffe.io: true` with InvalidArgument,
/// before anything else happens (SPIFFE Workload Endpoint, sections 3 and 6).
///
/// # Errors
/// InvalidArgument when the header is missing or has another value.
pub fn check_security_header(req: Request<()>) -> Result<Request<()>, Status> {
    match req.metadata().get(SECURITY_HEADER) {
        Some(v) if v.as_bytes() == SECURITY_HEADER_VALUE.as_bytes() => Ok(req),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

/// The signature of [`check_security_header`], as the interceptor type.
type HeaderCheck = fn(Request<()>) -> Result<Request<()>, Status>;

/// The Workload API service with the security header check in front of it.
pub type Service = InterceptedService<SpiffeWorkloadApiServer<WorkloadApi>, HeaderCheck>;

/// The service with the security header check in front of it, ready for
/// `tonic::transport::Server::add_service`.
pub fn service(api: WorkloadApi) -> Service {
    SpiffeWorkloadApiServer::with_interceptor(api, check_security_header as HeaderCheck)
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = ResponseStream<X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let selectors = self.attest(&req, "FetchX509SVID").await?;
        // Refuse at once, rather than on the stream, a caller that has no
        // entry at all, so that it sees a plain PermissionDenied.
        let snapshot = self.snapshots.borrow().clone();
        if snapshot.bundle.is_some() && !snapshot.entries.iter().any(|e| e.matches(&selectors)) {
            tracing::info!(?selectors, "FetchX509SVID: caller matches no entry");
            return Err(Status::permission_denied(NO_IDENTITY));
        }
        let mut view = view::X509SvidView::new(selectors);
        let out = stream::follow(self.stream_context(), move |snapshot, now| {
            view.evaluate(snapshot, now)
        });
        Ok(Response::new(out))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        // Bundles are public: any caller we can attest may have them, with or
        // without an identity of its own. The standard describes this RPC as
        // the one for workloads that only validate others.
        let selectors = self.attest(&req, "FetchX509Bundles").await?;
        let out = stream::follow(self.stream_context(), move |snapshot, _| {
            view::x509_bundles(snapshot, &selectors)
        });
        Ok(Response::new(out))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let selectors = self.attest(&req, "FetchJWTSVID").await?;
        let req = req.into_inner();
        if req.audience.is_empty() || req.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        check_audience_limits(&req.audience)?;
        let wanted = if req.spiffe_id.is_empty() {
            None
        } else {
            Some(SpiffeId::parse(&req.spiffe_id).map_err(|e| {
                Status::invalid_argument(format!("invalid spiffe_id {:?}: {e}", req.spiffe_id))
            })?)
        };
        let snapshot =
            crate::state::ready_snapshot(&self.snapshots, std::time::Duration::from_secs(10)).await;
        if snapshot.bundle.is_none() {
            return Err(Status::unavailable(
                "the agent has not received its trust bundle yet",
            ));
        }
        let entries = view::jwt_entries(&snapshot, &selectors, wanted.as_ref());
        if entries.is_empty() {
            tracing::info!(?selectors, spiffe_id = ?wanted, "FetchJWTSVID: caller has no such identity");
            return Err(Status::permission_denied(NO_IDENTITY));
        }
        let fetches = entries.iter().map(|entry| async {
            let token = self.jwt.fetch_jwt(&entry.id, &req.audience).await?;
            Ok::<_, Status>(Jwtsvid {
                spiffe_id: entry.spiffe_id.to_string(),
                svid: token,
                hint: String::new(),
            })
        });
        let svids = futures::future::try_join_all(fetches).await?;
        tracing::debug!(count = svids.len(), audience = ?req.audience, "issued JWT-SVIDs");
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let selectors = self.attest(&req, "FetchJWTBundles").await?;
        let out = stream::follow(self.stream_context(), move |snapshot, _| {
            view::jwt_bundles(snapshot, &selectors)
        });
        Ok(Response::new(out))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        // Like the bundles, validation needs no identity of the caller's own:
        // a workload may only ever verify tokens presented to it.
        let selectors = self.attest(&req, "ValidateJWTSVID").await?;
        let req = req.into_inner();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if req.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        // The subject names the trust domain whose bundle must be used (SPIFFE
        // Workload API, section 6.3); the signature check that follows makes
        // this unverified peek harmless.
        let claims =
            jwt::peek_claims(&req.svid).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let subject = SpiffeId::parse(&claims.sub).map_err(|e| {
            Status::invalid_argument(format!("token subject is not a valid SPIFFE ID: {e}"))
        })?;
        let snapshot = self.snapshots.borrow().clone();
        // A foreign token validates only against the bundle of a trust
        // domain the caller's entries federate with.
        let Some(bundle) = snapshot.bundle_for(&selectors, subject.trust_domain()) else {
            if snapshot.bundle.is_none() {
                return Err(Status::unavailable(
                    "the agent has not received its trust bundle yet",
                ));
            }
            return Err(Status::invalid_argument(format!(
                "no bundle for trust domain {}",
                subject.trust_domain()
            )));
        };
        let verified = jwt::validate(&req.svid, &bundle, Some(&req.audience), (self.clock)())
            .map_err(|e| {
                tracing::debug!(error = %e, "JWT-SVID failed validation");
                Status::invalid_argument(e.to_string())
            })?;
        let claims = view::json_to_struct(verified.claims.to_json())
            .ok_or_else(|| Status::internal("token claims are not a JSON object"))?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: verified.spiffe_id.to_string(),
            claims: Some(claims),
        }))
    }
}
