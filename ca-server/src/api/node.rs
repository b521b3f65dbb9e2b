//! The node API (`signet.ca.v1.Node`): what node agents call over TLS.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use signet_identity::SpiffeId;
use signet_proto::ca::v1 as pb;
use signet_proto::ca::v1::node_server::Node;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert;
use super::status::blocking;
use super::tls::PeerInfo;
use crate::ca::time::{ttl_from_secs, unix};
use crate::ca::{Ca, CaError, SignItem};
use crate::federation::registry::FederatedBundles;
use crate::metrics;

/// The node API over a shared CA.
pub struct NodeApi {
    ca: Arc<Ca>,
    shutdown: watch::Receiver<bool>,
    federated: Option<watch::Receiver<FederatedBundles>>,
    psat: Option<Arc<crate::k8s::PsatAttestor>>,
}

impl NodeApi {
    pub fn new(ca: Arc<Ca>, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            ca,
            shutdown,
            federated: None,
            psat: None,
        }
    }

    /// Accepts k8s_psat node attestation, checked by `psat`.
    #[must_use]
    pub fn with_psat(mut self, psat: Arc<crate::k8s::PsatAttestor>) -> Self {
        self.psat = Some(psat);
        self
    }

    /// Bundles sent to agents carry these federated bundles.
    #[must_use]
    pub fn with_federated(mut self, federated: watch::Receiver<FederatedBundles>) -> Self {
        self.federated = Some(federated);
        self
    }

    /// `bundle` with the federated bundles.
    fn plus_federated(&self, mut bundle: pb::Bundle) -> pb::Bundle {
        if let Some(f) = &self.federated {
            bundle.federated = crate::federation::api::federated_pb(&f.borrow());
        }
        bundle
    }
}

fn peer<T>(req: &Request<T>) -> Option<&PeerInfo> {
    req.extensions().get::<PeerInfo>()
}

fn caller_label<T>(req: &Request<T>) -> String {
    super::guard::caller_label(peer(req))
}

/// The serial of the connection's client certificate.
fn serial_of<T>(req: &Request<T>) -> Option<String> {
    peer(req).and_then(|p| p.serial.clone())
}

/// The calling node, from its verified client certificate, which must be
/// the node's current SVID or the one it was renewed from.
fn node_of<T>(ca: &Ca, req: &Request<T>) -> Result<SpiffeId, CaError> {
    let id = peer(req).and_then(|p| p.spiffe_id.clone()).ok_or_else(|| {
        CaError::Unauthenticated("this call requires a node SVID as TLS client certificate".into())
    })?;
    if credential_expired(ca, req) {
        return Err(CaError::Unauthenticated(
            "the node SVID this connection was opened with has expired; reconnect with the current one".into(),
        ));
    }
    ca.authorize_node_svid(&id, serial_of(req).as_deref())?;
    Ok(id)
}

/// Resolves when `node`'s SVID `serial` is no longer honoured (evicted,
/// banned, attested again), with the reason.
async fn revoked(
    ca: &Ca,
    events: &mut broadcast::Receiver<SpiffeId>,
    node: &SpiffeId,
    serial: Option<&str>,
) -> CaError {
    loop {
        match events.recv().await {
            Ok(changed) if &changed != node => continue,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                if let Err(e) = ca.authorize_node_svid(node, serial) {
                    return e;
                }
            }
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// When the connection's client certificate expires.
fn credential_deadline<T>(req: &Request<T>) -> Option<std::time::SystemTime> {
    peer(req).and_then(|p| p.not_after)
}

fn credential_expired<T>(ca: &Ca, req: &Request<T>) -> bool {
    credential_deadline(req).is_some_and(|t| t <= ca.now())
}

/// Sleeps until the connection's credential expires (forever without one).
async fn until(ca: &Ca, deadline: Option<std::time::SystemTime>) {
    match deadline {
        Some(t) => tokio::time::sleep(t.duration_since(ca.now()).unwrap_or_default()).await,
        None => std::future::pending().await,
    }
}

fn expired_status() -> Status {
    Status::unauthenticated(
        "the node SVID this stream was opened with has expired; reconnect with the current one",
    )
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Node for NodeApi {
    async fn attest_node(
        &self,
        req: Request<pb::AttestNodeRequest>,
    ) -> Result<Response<pb::AttestNodeResponse>, Status> {
        let caller = caller_label(&req);
        let body = req.into_inner();
        let ca = self.ca.clone();
        let (id, cert) = if body.k8s_psat_token.is_empty() {
            metrics::timed(
                "attest_node",
                blocking(move || ca.attest_node(&body.join_token, &body.csr, &caller)),
            )
            .await?
        } else {
            let checked = match (&self.psat, body.join_token.is_empty()) {
                (_, false) => Err(CaError::InvalidArgument(
                    "send either a join token or a k8s_psat token, not both".into(),
                )),
                (None, true) => Err(CaError::FailedPrecondition(
                    "k8s_psat attestation is not configured on this CA ([k8s])".into(),
                )),
                (Some(psat), true) => psat.attest(&body.k8s_psat_token).await,
            };
            metrics::timed(
                "attest_node",
                blocking(move || ca.attest_k8s_node(checked, &body.csr, &caller)),
            )
            .await?
        };
        Ok(Response::new(pb::AttestNodeResponse {
            svid: Some(convert::svid(&id, &cert)),
            bundle: Some(self.plus_federated(convert::node_bundle(&self.ca.node_bundle()))),
        }))
    }

    async fn renew_node_svid(
        &self,
        req: Request<pb::RenewNodeSvidRequest>,
    ) -> Result<Response<pb::RenewNodeSvidResponse>, Status> {
        let node = match node_of(&self.ca, &req) {
            Ok(n) => n,
            Err(e) => return Err(self.refuse(&req, "renew_node", e)),
        };
        let ca = self.ca.clone();
        let serial = serial_of(&req);
        let csr = req.into_inner().csr;
        let node2 = node.clone();
        let cert = metrics::timed(
            "renew_node",
            blocking(move || ca.renew_node(&node2, serial.as_deref(), &csr)),
        )
        .await?;
        Ok(Response::new(pb::RenewNodeSvidResponse {
            svid: Some(convert::svid(&node, &cert)),
        }))
    }

    async fn batch_sign_x509_svid(
        &self,
        req: Request<pb::BatchSignX509SvidRequest>,
    ) -> Result<Response<pb::BatchSignX509SvidResponse>, Status> {
        let node = match node_of(&self.ca, &req) {
            Ok(n) => n,
            Err(e) => return Err(self.refuse(&req, "sign_batch", e)),
        };
        let items: Vec<SignItem> = req
            .into_inner()
            .items
            .into_iter()
            .map(|i| SignItem {
                entry_id: i.entry_id,
                csr: i.csr,
                ttl: ttl_from_secs(i.ttl_seconds),
            })
            .collect();
        let ca = self.ca.clone();
        let ids: Vec<String> = items.iter().map(|i| i.entry_id.clone()).collect();
        let results = metrics::timed(
            "sign_x509_svid",
            blocking(move || ca.sign_batch(&node, &items)),
        )
        .await?;
        let results = results
            .into_iter()
            .zip(ids)
            .map(|(r, entry_id)| pb::SignResult {
                entry_id,
                result: Some(match r {
                    Ok((id, cert)) => pb::sign_result::Result::Svid(convert::svid(&id, &cert)),
                    Err(e) => pb::sign_result::Result::Error(pb::ItemError {
                        code: super::status::code_of(&e) as i32,
                        message: e.to_string(),
                    }),
                }),
            })
            .collect();
        Ok(Response::new(pb::BatchSignX509SvidResponse { results }))
    }

    async fn list_authorized_entries(
        &self,
        req: Request<pb::ListAuthorizedEntriesRequest>,
    ) -> Result<Response<pb::ListAuthorizedEntriesResponse>, Status> {
        let node = node_of(&self.ca, &req).map_err(|e| self.refuse(&req, "list_entries", e))?;
        let ca = self.ca.clone();
        let (entries, revision) = blocking(move || ca.authorized_entries(&node)).await?;
        Ok(Response::new(pb::ListAuthorizedEntriesResponse {
            entries: entries.iter().map(convert::any_entry).collect(),
            revision,
        }))
    }

    type WatchAuthorizedEntriesStream = BoxStream<pb::AuthorizedEntriesUpdate>;

    async fn watch_authorized_entries(
        &self,
        req: Request<pb::WatchAuthorizedEntriesRequest>,
    ) -> Result<Response<Self::WatchAuthorizedEntriesStream>, Status> {
        let node = node_of(&self.ca, &req).map_err(|e| self.refuse(&req, "watch_entries", e))?;
        let deadline = credential_deadline(&req);
        let serial = serial_of(&req);
        let (tx, rx) = mpsc::channel(4);
        let ca = self.ca.clone();
        let mut events = ca.node_events();
        let mut revisions = ca.watch_entries();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut sent: HashMap<String, pb::Entry> = HashMap::new();
            let mut first = true;
            loop {
                revisions.borrow_and_update();
                let (ca2, node2) = (ca.clone(), node.clone());
                let update = match blocking(move || ca2.authorized_entries(&node2)).await {
                    Ok((entries, revision)) => diff(
                        &mut sent,
                        entries.iter().map(convert::any_entry).collect(),
                        revision,
                        first,
                    ),
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                if let Some(update) = update
                    && tx.send(Ok(update)).await.is_err()
                {
                    return;
                }
                first = false;
                tokio::select! {
                    changed = revisions.changed() => if changed.is_err() { return },
                    _ = shutdown.changed() => {
                        let _ = tx.send(Err(pb::drain_status())).await;
                        return;
                    }
                    _ = tx.closed() => return,
                    _ = until(&ca, deadline) => {
                        let _ = tx.send(Err(expired_status())).await;
                        return;
                    }
                    e = revoked(&ca, &mut events, &node, serial.as_deref()) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn mint_jwt_svid(
        &self,
        req: Request<pb::MintJwtSvidRequest>,
    ) -> Result<Response<pb::MintJwtSvidResponse>, Status> {
        self.mint_jwt(req).await
    }

    async fn report_status(
        &self,
        req: Request<pb::ReportStatusRequest>,
    ) -> Result<Response<pb::ReportStatusResponse>, Status> {
        let node = node_of(&self.ca, &req).map_err(|e| self.refuse(&req, "report_status", e))?;
        let body = req.into_inner();
        let ca = self.ca.clone();
        blocking(move || {
            ca.report_status(
                &node,
                body.bundle_sequence,
                body.svid_count,
                &body.chains_through,
            )
        })
        .await?;
        Ok(Response::new(pb::ReportStatusResponse {}))
    }

    type WatchBundleStream = BoxStream<pb::Bundle>;

    async fn watch_bundle(
        &self,
        req: Request<pb::WatchBundleRequest>,
    ) -> Result<Response<Self::WatchBundleStream>, Status> {
        let node = node_of(&self.ca, &req).map_err(|e| self.refuse(&req, "watch_bundle", e))?;
        let deadline = credential_deadline(&req);
        let serial = serial_of(&req);
        let ca = self.ca.clone();
        let mut events = ca.node_events();
        let (tx, rx) = mpsc::channel(4);
        let mut bundles = self.ca.watch_node_bundle();
        let mut federated = self.federated.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _connected = metrics::agent_connected();
            // Activation waits for the agents that hold this stream open.
            let _registered = ca.agent_connected(&node);
            loop {
                let current = crate::federation::api::add_federated(
                    convert::node_bundle(&bundles.borrow_and_update()),
                    federated.as_mut(),
                );
                if tx.send(Ok(current)).await.is_err() {
                    return;
                }
                tokio::select! {
                    changed = bundles.changed() => if changed.is_err() { return },
                    () = crate::federation::api::changed(&mut federated) => {}
                    // Draining: tell the agent to move to another replica.
                    _ = shutdown.changed() => {
                        let _ = tx.send(Err(pb::drain_status())).await;
                        return;
                    }
                    _ = tx.closed() => return,
                    _ = until(&ca, deadline) => {
                        let _ = tx.send(Err(expired_status())).await;
                        return;
                    }
                    e = revoked(&ca, &mut events, &node, serial.as_deref()) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl NodeApi {
    async fn mint_jwt(
        &self,
        req: Request<pb::MintJwtSvidRequest>,
    ) -> Result<Response<pb::MintJwtSvidResponse>, Status> {
        let node = node_of(&self.ca, &req).map_err(|e| self.refuse(&req, "mint_jwt_svid", e))?;
        let body = req.into_inner();
        let ttl = ttl_from_secs(body.ttl_seconds);
        let ca = self.ca.clone();
        let (id, token, expires) = metrics::timed(
            "mint_jwt_svid",
            blocking(move || ca.mint_jwt(&node, &body.entry_id, &body.audience, ttl)),
        )
        .await?;
        Ok(Response::new(pb::MintJwtSvidResponse {
            spiffe_id: id.to_string(),
            token,
            expires_at: unix(expires),
        }))
    }

    fn refuse<T>(&self, req: &Request<T>, action: &'static str, e: CaError) -> Status {
        metrics::refused(action, super::status::code_of(&e));
        self.ca.audit_rejection(&caller_label(req), action, "", &e);
        Status::from(e)
    }
}

/// What changed since the last message of a stream; `None` when nothing did.
fn diff(
    sent: &mut HashMap<String, pb::Entry>,
    now: Vec<pb::Entry>,
    revision: u64,
    snapshot: bool,
) -> Option<pb::AuthorizedEntriesUpdate> {
    let mut upserted = Vec::new();
    let mut current = HashMap::with_capacity(now.len());
    for e in now {
        if snapshot || sent.get(&e.id) != Some(&e) {
            upserted.push(e.clone());
        }
        current.insert(e.id.clone(), e);
    }
    let mut removed_ids: Vec<String> = sent
        .keys()
        .filter(|id| !current.contains_key(*id))
        .cloned()
        .collect();
    removed_ids.sort();
    *sent = current;
    if !snapshot && upserted.is_empty() && removed_ids.is_empty() {
        return None;
    }
    Some(pb::AuthorizedEntriesUpdate {
        snapshot,
        upserted,
        removed_ids,
        revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: &str, rev: u64) -> pb::Entry {
        pb::Entry {
            id: id.into(),
            revision: rev,
            ..Default::default()
        }
    }

    #[test]
    fn diff_sends_a_snapshot_then_only_changes() {
        let mut sent = HashMap::new();
        let first = diff(&mut sent, vec![e("a", 1), e("b", 2)], 2, true).unwrap();
        assert!(first.snapshot);
        assert_eq!(first.upserted.len(), 2);
        assert!(diff(&mut sent, vec![e("a", 1), e("b", 2)], 3, false).is_none());
        let next = diff(&mut sent, vec![e("a", 1), e("c", 4)], 4, false).unwrap();
        assert!(!next.snapshot);
        assert_eq!(next.upserted, vec![e("c", 4)]);
        assert_eq!(next.removed_ids, vec!["b".to_owned()]);
    }
}
