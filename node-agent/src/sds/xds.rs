//! The xDS protocol for one SDS stream: state of the world (`StreamSecrets`)
//! and incremental (`DeltaSecrets`), each a small state machine driven by one
//! loop that waits for the client, a new snapshot, the next SVID expiry or
//! shutdown.
//!
//! Both remember the version of every resource last sent, so a resource is
//! pushed again only when its content changes: an ACK asks for nothing, and a
//! NACK is logged but the rejected content is not resent (it would only be
//! rejected again); the next real change is sent.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as DeltaResource,
};
use envoy_types::pb::google::protobuf::value::Kind;
use futures::Stream;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::{Status, Streaming};
use tracing::{Instrument as _, Span};

use super::resources::{
    Caller, Resolved, SECRET_TYPE_URL, Subscription, check_names, combined_version,
};
use crate::state::{Selector, SnapshotRx};

/// The response stream of a streaming RPC.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The node metadata key with which SPIRE lets an Envoy ask for plain
/// `trusted_ca` validation contexts instead of the SPIFFE validator.
const DISABLE_SPIFFE_VALIDATION_KEY: &str = "disable_spiffe_cert_validation";

/// How long to sleep when nothing is due: effectively forever, re-armed on
/// every event.
const IDLE: Duration = Duration::from_secs(24 * 60 * 60);

/// One variant of the xDS protocol.
pub(crate) trait Protocol: Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;

    fn node(request: &Self::Request) -> Option<&Node>;

    /// Handles a request from the client; returns what to send, if anything.
    fn on_request(
        &mut self,
        request: Self::Request,
        caller: &Caller<'_>,
    ) -> Result<Option<Self::Response>, Status>;

    /// Re-evaluates after the snapshot changed or an SVID expired; returns a
    /// push if something the client subscribed to changed.
    fn on_change(&mut self, caller: &Caller<'_>) -> Option<Self::Response>;
}

/// Whether a node asks for the SPIFFE validator (`Some(true)`), for plain
/// `trusted_ca` (`Some(false)`), or says nothing. Booleans and the strings
/// SPIRE's parser accepts are understood.
pub(crate) fn spiffe_validator_wanted(node: &Node) -> Option<bool> {
    let value = node
        .metadata
        .as_ref()?
        .fields
        .get(DISABLE_SPIFFE_VALIDATION_KEY)?;
    let disabled = match value.kind.as_ref()? {
        Kind::BoolValue(b) => *b,
        Kind::StringValue(s) => match s.as_str() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
            "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
            _ => return None,
        },
        _ => return None,
    };
    Some(!disabled)
}

pub(crate) fn check_type_url(type_url: &str) -> Result<(), Status> {
    // Envoy always sets it; an empty one is taken to mean secrets.
    if type_url.is_empty() || type_url == SECRET_TYPE_URL {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "this server serves only {SECRET_TYPE_URL}, not {type_url}"
        )))
    }
}

fn names(resources: &[Resolved]) -> Vec<&str> {
    resources.iter().map(|r| r.name.as_str()).collect()
}

/// State of the world: every response carries every available resource of
/// the subscription.
#[derive(Debug, Default)]
pub(crate) struct Sotw {
    /// `None` until the first request.
    subscription: Option<Subscription>,
    /// Resource name to the version last sent.
    sent: HashMap<String, String>,
    last_nonce: Option<String>,
    responses: u64,
}

impl Sotw {
    fn respond(&mut self, resources: Vec<Resolved>) -> Option<DiscoveryResponse> {
        // Envoy rejects an SDS response without resources; not answering
        // leaves it waiting (up to its initial_fetch_timeout), which is right
        // for a secret that does not exist yet.
        if resources.is_empty() {
            return None;
        }
        self.responses += 1;
        let nonce = self.responses.to_string();
        let version_info = combined_version(&resources);
        tracing::info!(version = %version_info, %nonce, resources = ?names(&resources), "sending secrets");
        for r in &resources {
            self.sent.insert(r.name.clone(), r.version.clone());
        }
        self.last_nonce = Some(nonce.clone());
        Some(DiscoveryResponse {
            version_info,
            resources: resources.into_iter().map(Resolved::into_any).collect(),
            type_url: SECRET_TYPE_URL.to_owned(),
            nonce,
            ..DiscoveryResponse::default()
        })
    }
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn on_request(
        &mut self,
        request: DiscoveryRequest,
        caller: &Caller<'_>,
    ) -> Result<Option<DiscoveryResponse>, Status> {
        check_type_url(&request.type_url)?;
        check_names(&request.resource_names, 0)?;
        if let Some(last) = &self.last_nonce
            && request.response_nonce != *last
        {
            // The client has not seen our latest response yet; it will
            // answer that one, with its current subscription.
            tracing::debug!(nonce = %request.response_nonce, expected = %last, "ignoring a request with a stale nonce");
            return Ok(None);
        }
        match &request.error_detail {
            Some(error) => tracing::warn!(
                resources = ?request.resource_names,
                nonce = %request.response_nonce,
                kept_version = %request.version_info,
                code = error.code,
                error = %error.message,
                "Envoy rejected the secrets sent (NACK); not resending them until they change"
            ),
            None if self.last_nonce.is_some() => {
                tracing::debug!(version = %request.version_info, "Envoy accepted the secrets (ACK)");
            }
            None => {}
        }
        let subscription = Subscription::from_names(&request.resource_names);
        if self.subscription.as_ref() == Some(&subscription) {
            return Ok(None);
        }
        tracing::debug!(resources = ?request.resource_names, "subscribed");
        let resources = subscription.resolve(caller, true, &self.sent);
        self.subscription = Some(subscription);
        Ok(self.respond(resources))
    }

    fn on_change(&mut self, caller: &Caller<'_>) -> Option<DiscoveryResponse> {
        let resources = self
            .subscription
            .as_ref()?
            .resolve(caller, false, &self.sent);
        if resources
            .iter()
            .all(|r| self.sent.get(&r.name) == Some(&r.version))
        {
            return None;
        }
        self.respond(resources)
    }
}

/// Incremental: subscriptions change by difference, and only the resources
/// whose version the client does not have are sent.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    started: bool,
    subscription: Subscription,
    /// Resource name to the version the client has: sent by us, or declared
    /// in `initial_resource_versions` when it reconnected.
    known: HashMap<String, String>,
    last_nonce: Option<String>,
    responses: u64,
}

impl Delta {
    fn push_changes(
        &mut self,
        caller: &Caller<'_>,
        report: bool,
    ) -> Option<DeltaDiscoveryResponse> {
        if !self.started {
            return None;
        }
        let changed: Vec<Resolved> = self
            .subscription
            .resolve(caller, report, &self.known)
            .into_iter()
            .filter(|r| self.known.get(&r.name) != Some(&r.version))
            .collect();
        if changed.is_empty() {
            return None;
        }
        self.responses += 1;
        let nonce = self.responses.to_string();
        let system_version_info = combined_version(&changed);
        tracing::info!(version = %system_version_info, %nonce, resources = ?names(&changed), "sending secrets");
        for r in &changed {
            self.known.insert(r.name.clone(), r.version.clone());
        }
        self.last_nonce = Some(nonce.clone());
        Some(DeltaDiscoveryResponse {
            system_version_info,
            resources: changed
                .into_iter()
                .map(|r| DeltaResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.into_any()),
                    ..DeltaResource::default()
                })
                .collect(),
            type_url: SECRET_TYPE_URL.to_owned(),
            nonce,
            ..DeltaDiscoveryResponse::default()
        })
    }
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn on_request(
        &mut self,
        mut request: DeltaDiscoveryRequest,
        caller: &Caller<'_>,
    ) -> Result<Option<DeltaDiscoveryResponse>, Status> {
        check_type_url(&request.type_url)?;
        // Each request is bounded, and so is what stays subscribed.
        check_names(&request.resource_names_unsubscribe, 0)?;
        check_names(&request.resource_names_subscribe, 0)?;
        if !self.started {
            self.started = true;
            let initial = std::mem::take(&mut request.initial_resource_versions);
            let names: Vec<&String> = initial.keys().collect();
            check_names(&names, 0)?;
            self.known.extend(initial);
            // A first request that names nothing is the legacy wildcard.
            self.subscription.wildcard = request.resource_names_subscribe.is_empty();
        }
        // Subscription changes count whatever the nonce: in the incremental
        // protocol they are differences and cannot be replayed later.
        for name in request.resource_names_subscribe {
            if name == "*" {
                self.subscription.wildcard = true;
            } else {
                self.subscription.names.insert(name);
            }
        }
        for name in request.resource_names_unsubscribe {
            if name == "*" {
                self.subscription.wildcard = false;
            } else {
                self.subscription.names.remove(&name);
                self.known.remove(&name);
            }
        }
        check_names::<String>(&[], self.subscription.names.len())?;
        if !request.response_nonce.is_empty() {
            match (&request.error_detail, &self.last_nonce) {
                (_, Some(last)) if *last != request.response_nonce => {
                    tracing::debug!(nonce = %request.response_nonce, expected = %last, "answer to an older response");
                }
                (Some(error), _) => tracing::warn!(
                    nonce = %request.response_nonce,
                    code = error.code,
                    error = %error.message,
                    "Envoy rejected the secrets sent (NACK); not resending them until they change"
                ),
                (None, _) => {
                    tracing::debug!(nonce = %request.response_nonce, "Envoy accepted the secrets (ACK)")
                }
            }
        }
        Ok(self.push_changes(caller, true))
    }

    fn on_change(&mut self, caller: &Caller<'_>) -> Option<DeltaDiscoveryResponse> {
        self.push_changes(caller, false)
    }
}

enum Event<R> {
    Shutdown,
    Inbound(Result<Option<R>, Status>),
    /// `false` when the snapshot publisher is gone.
    Snapshot(bool),
    Expiry,
}

/// Runs one stream: the caller is attested already, `selectors` are its.
pub(crate) struct Driver<P: Protocol> {
    inbound: Streaming<P::Request>,
    protocol: P,
    snapshots: SnapshotRx,
    snapshots_open: bool,
    shutdown: Option<watch::Receiver<bool>>,
    selectors: Arc<[Selector]>,
    spiffe_validator: bool,
    finished: bool,
}

impl<P: Protocol> Driver<P> {
    pub(crate) fn new(
        inbound: Streaming<P::Request>,
        protocol: P,
        snapshots: SnapshotRx,
        shutdown: Option<watch::Receiver<bool>>,
        selectors: Vec<Selector>,
    ) -> Self {
        Self {
            inbound,
            protocol,
            snapshots,
            snapshots_open: true,
            shutdown,
            selectors: selectors.into(),
            spiffe_validator: true,
            finished: false,
        }
    }

    /// The responses, each produced inside `span`. The stream is dropped
    /// (and the work stops) when the client goes away.
    pub(crate) fn into_stream(self, span: Span) -> ResponseStream<P::Response> {
        let stream = Box::pin(futures::stream::unfold(self, move |mut driver| {
            async move {
                let item = driver.next().await?;
                Some((item, driver))
            }
            .instrument(span.clone())
        }));
        crate::metrics::counted("sds", stream)
    }

    async fn next(&mut self) -> Option<Result<P::Response, Status>> {
        if self.finished {
            return None;
        }
        loop {
            let snapshot = self.snapshots.borrow().clone();
            let expiry = Caller::new(&snapshot, &self.selectors, SystemTime::now(), true)
                .next_expiry()
                .map(instant_of);
            let event = tokio::select! {
                biased;
                () = shutdown_signalled(&mut self.shutdown) => Event::Shutdown,
                message = self.inbound.message() => Event::Inbound(message),
                changed = self.snapshots.changed(), if self.snapshots_open => Event::Snapshot(changed.is_ok()),
                () = tokio::time::sleep_until(expiry.unwrap_or_else(|| Instant::now() + IDLE)), if expiry.is_some() => Event::Expiry,
            };
            let response = match event {
                Event::Shutdown => {
                    tracing::debug!("ending the stream: the agent is shutting down");
                    return None;
                }
                Event::Inbound(Ok(Some(request))) => {
                    if let Some(wanted) = P::node(&request).and_then(spiffe_validator_wanted) {
                        self.spiffe_validator = wanted;
                    }
                    // borrow(), not borrow_and_update(): a change not yet
                    // seen must still wake the Snapshot branch.
                    let snapshot = self.snapshots.borrow().clone();
                    let caller = Caller::new(
                        &snapshot,
                        &self.selectors,
                        SystemTime::now(),
                        self.spiffe_validator,
                    );
                    match self.protocol.on_request(request, &caller) {
                        Ok(response) => response,
                        Err(status) => {
                            tracing::warn!(%status, "ending the stream: bad request");
                            self.finished = true;
                            return Some(Err(status));
                        }
                    }
                }
                Event::Inbound(Ok(None)) => {
                    tracing::debug!("the client closed the stream");
                    return None;
                }
                Event::Inbound(Err(status)) => {
                    tracing::debug!(%status, "the stream failed");
                    return None;
                }
                Event::Snapshot(false) => {
                    // Keep serving the last snapshot; shutdown ends the stream.
                    self.snapshots_open = false;
                    None
                }
                Event::Snapshot(true) | Event::Expiry => {
                    let snapshot = self.snapshots.borrow_and_update().clone();
                    let caller = Caller::new(
                        &snapshot,
                        &self.selectors,
                        SystemTime::now(),
                        self.spiffe_validator,
                    );
                    self.protocol.on_change(&caller)
                }
            };
            if let Some(response) = response {
                return Some(Ok(response));
            }
        }
    }
}

/// Resolves when shutdown is signalled or its sender is gone; never without
/// a receiver.
pub(crate) async fn shutdown_signalled(shutdown: &mut Option<watch::Receiver<bool>>) {
    match shutdown {
        Some(rx) => {
            // Err: the sender is gone, so nothing can keep us running.
            let _ = rx.wait_for(|stop| *stop).await;
        }
        None => std::future::pending().await,
    }
}

fn instant_of(at: SystemTime) -> Instant {
    Instant::now() + at.duration_since(SystemTime::now()).unwrap_or_default()
}
