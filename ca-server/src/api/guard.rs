//! Checks on node-API calls made before their request bodies are read.
//!
//! A call without a node SVID is refused with UNAUTHENTICATED from its path
//! and the connection's [`PeerInfo`] alone, except `AttestNode` and the health
//! service; its body is never buffered or decoded. Every call's body is then
//! bounded by a per-method size, and a `BatchSignX509Svid` body by its item
//! count, counted on the wire as the bytes arrive: a batch of millions of
//! empty items is refused after `max_batch + 1` of them, before any decoding
//! multiplies its size in memory.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;

use super::tls::PeerInfo;
use crate::ca::{Ca, CaError};

/// Largest `BatchSignX509Svid` request (a full batch of RSA-4096 CSRs fits).
pub const MAX_BATCH_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest `AttestNode` and `RenewNodeSvid` request: a token and one CSR.
pub const MAX_CSR_REQUEST_BYTES: usize = 64 * 1024;
/// Largest `MintJwtSvid` request: an entry ID and the audiences
/// (at most `MAX_AUDIENCES` of `MAX_AUDIENCE_LEN` bytes).
pub const MAX_JWT_REQUEST_BYTES: usize = 16 * 1024;
/// Largest request of every other method (they carry a few scalars).
pub const MAX_SMALL_REQUEST_BYTES: usize = 4 * 1024;

use signet_proto::wire_scan::{BodyScan as Scan, FRAME_HEADER, ScanError};

/// What a method requires of its caller and its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    /// The audit action of a refusal.
    action: &'static str,
    /// Whether a node SVID must authenticate the connection.
    needs_node: bool,
    /// Most bytes of the whole request body.
    max_message: usize,
    /// Whether the body is a batch whose items are counted.
    batch: bool,
}

fn rule_for(path: &str) -> Rule {
    let (action, needs_node, max_message, batch) = match path {
        "/signet.ca.v1.Node/AttestNode" => ("attest_node", false, MAX_CSR_REQUEST_BYTES, false),
        "/signet.ca.v1.Node/RenewNodeSvid" => ("renew_node", true, MAX_CSR_REQUEST_BYTES, false),
        "/signet.ca.v1.Node/BatchSignX509Svid" => {
            ("sign_batch", true, MAX_BATCH_REQUEST_BYTES, true)
        }
        "/signet.ca.v1.Node/MintJwtSvid" => ("mint_jwt_svid", true, MAX_JWT_REQUEST_BYTES, false),
        "/signet.ca.v1.Node/ListAuthorizedEntries" => {
            ("list_entries", true, MAX_SMALL_REQUEST_BYTES, false)
        }
        "/signet.ca.v1.Node/WatchAuthorizedEntries" => {
            ("watch_entries", true, MAX_SMALL_REQUEST_BYTES, false)
        }
        "/signet.ca.v1.Node/WatchBundle" => ("watch_bundle", true, MAX_SMALL_REQUEST_BYTES, false),
        "/signet.ca.v1.Node/ReportStatus" => {
            ("report_status", true, MAX_SMALL_REQUEST_BYTES, false)
        }
        // Every other Node method needs a node, should one be added
        // without a rule here.
        p if p.starts_with("/signet.ca.v1.Node/") => {
            ("node_api", true, MAX_SMALL_REQUEST_BYTES, false)
        }
        // Health checks, and unknown paths (answered UNIMPLEMENTED).
        _ => ("", false, MAX_SMALL_REQUEST_BYTES, false),
    };
    Rule {
        action,
        needs_node,
        max_message: max_message + FRAME_HEADER,
        batch,
    }
}

/// `caller@address` for logs and the audit log.
pub fn caller_label(peer: Option<&PeerInfo>) -> String {
    peer.map_or_else(
        || "unknown".to_owned(),
        |p| match &p.spiffe_id {
            Some(id) => format!("{id}@{}", p.remote),
            None => p.remote.to_string(),
        },
    )
}

/// The tower layer applying [`Guard`] to the node API's router.
#[derive(Clone)]
pub struct GuardLayer {
    ca: Arc<Ca>,
}

impl GuardLayer {
    /// Guards calls to the CA `ca` (its `max_batch` bounds batches).
    #[must_use]
    pub fn new(ca: Arc<Ca>) -> Self {
        Self { ca }
    }
}

impl<S> tower_layer::Layer<S> for GuardLayer {
    type Service = Guard<S>;
    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            ca: self.ca.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    ca: Arc<Ca>,
}

impl<S> tower_service::Service<http::Request<Body>> for Guard<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let rule = rule_for(req.uri().path());
        let peer = req.extensions().get::<PeerInfo>();
        let caller = caller_label(peer);
        if rule.needs_node && peer.and_then(|p| p.spiffe_id.as_ref()).is_none() {
            let e = CaError::Unauthenticated(
                "this call requires a node SVID as TLS client certificate".into(),
            );
            self.ca.audit_rejection(&caller, rule.action, "", &e);
            let status = Status::from(e);
            count_refusal(rule.action, status.code());
            return refuse(status);
        }
        // Held until the call has been answered.
        let batch_permit = match (rule.batch, peer) {
            (true, Some(p)) => match p.batch_slots.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let e = CaError::FailedPrecondition(format!(
                        "at most {} batch requests may be in flight on one connection",
                        super::tls::MAX_BATCHES_PER_CONNECTION
                    ));
                    self.ca.audit_rejection(&caller, rule.action, "", &e);
                    count_refusal(rule.action, tonic::Code::ResourceExhausted);
                    return refuse(Status::resource_exhausted(e.to_string()));
                }
            },
            _ => None,
        };
        let ca = self.ca.clone();
        let action = rule.action;
        let max_items = rule.batch.then(|| ca.config().max_batch);
        let req = req.map(|body| {
            Body::new(Limited {
                inner: body,
                scan: Scan::new(rule.max_message, max_items),
                on_refuse: Some(Box::new(move |status: &Status| {
                    let e = if status.code() == tonic::Code::InvalidArgument {
                        CaError::InvalidArgument(status.message().to_owned())
                    } else {
                        CaError::FailedPrecondition(status.message().to_owned())
                    };
                    ca.audit_rejection(&caller, action, "", &e);
                    count_refusal(action, status.code());
                })),
                failed: false,
            })
        });
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = call.await;
            drop(batch_permit);
            response
        })
    }
}

/// Counts a refusal in the metrics, as `api::node` does for the refusals
/// it makes; health checks and unknown paths are not counted.
fn count_refusal(action: &'static str, code: tonic::Code) {
    if !action.is_empty() {
        crate::metrics::refused(action, code);
    }
}

fn refuse<E: Send + 'static>(
    status: Status,
) -> BoxFuture<'static, Result<http::Response<Body>, E>> {
    Box::pin(std::future::ready(Ok(status.into_http())))
}

type OnRefuse = Box<dyn FnOnce(&Status) + Send>;

/// A request body that fails as soon as [`Scan`] refuses what arrived.
struct Limited {
    inner: Body,
    scan: Scan,
    on_refuse: Option<OnRefuse>,
    failed: bool,
}

impl http_body::Body for Limited {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
            && let Err(status) = this.scan.feed(data).map_err(scan_status)
        {
            this.failed = true;
            tracing::info!(error = %status.message(), "request refused before decoding");
            if let Some(f) = this.on_refuse.take() {
                f(&status);
            }
            return Poll::Ready(Some(Err(status)));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The gRPC status of a body the scanner refused.
fn scan_status(e: ScanError) -> Status {
    match e {
        ScanError::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use signet_proto::ca::v1 as pb;

    use super::*;

    fn framed(msg: &impl Message) -> Vec<u8> {
        let body = msg.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn batch(n: usize, csr_len: usize) -> pb::BatchSignX509SvidRequest {
        pb::BatchSignX509SvidRequest {
            items: (0..n)
                .map(|i| pb::SignRequestItem {
                    entry_id: format!("entry-{i}"),
                    csr: vec![7; csr_len],
                    ttl_seconds: 3600,
                })
                .collect(),
        }
    }

    /// Feeds `bytes` in chunks of `chunk` bytes.
    fn scan(bytes: &[u8], chunk: usize, max_items: usize) -> Result<usize, Status> {
        let mut s = Scan::new(1 << 30, Some(max_items));
        for part in bytes.chunks(chunk) {
            s.feed(part).map_err(scan_status)?;
        }
        Ok(s.items())
    }

    #[test]
    fn counts_items_across_any_chunking() {
        let bytes = framed(&batch(5, 300));
        for chunk in [1, 2, 3, 7, 64, 1000, bytes.len()] {
            assert_eq!(scan(&bytes, chunk, 5).unwrap(), 5, "chunk {chunk}");
            assert_eq!(
                scan(&bytes, chunk, 4).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn empty_items_are_counted_too() {
        let many_empty = pb::BatchSignX509SvidRequest {
            items: vec![pb::SignRequestItem::default(); 10_000],
        };
        let bytes = framed(&many_empty);
        assert_eq!(bytes.len(), FRAME_HEADER + 2 * 10_000);
        assert_eq!(
            scan(&bytes, 4096, 500).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_scanner() {
        // A fixed xorshift stream: random-looking bodies, frame headers with
        // any length, varints of any size, every wire type, any chunking.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2_000 {
            let len = (next() % 512) as usize;
            let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = body.first_mut() {
                // Mostly uncompressed frames, so that the scanner goes on.
                *first &= u8::from(next() % 8 == 0);
            }
            let mut s = Scan::new(1 << 20, Some(3));
            let mut rest = body.as_slice();
            while !rest.is_empty() {
                let k = 1 + (next() as usize % rest.len());
                let (part, tail) = rest.split_at(k);
                if s.feed(part).is_err() {
                    break;
                }
                rest = tail;
            }
            assert!(s.items() <= 4);
        }
    }

    #[test]
    fn the_byte_cap_holds_without_counting() {
        let mut s = Scan::new(10, None);
        s.feed(&[0; 10]).unwrap();
        assert_eq!(
            scan_status(s.feed(&[0]).unwrap_err()).code(),
            tonic::Code::ResourceExhausted
        );
    }

    /// An inner service whose calls never finish: they stay in flight.
    #[derive(Clone)]
    struct Never;

    impl tower_service::Service<http::Request<Body>> for Never {
        type Response = http::Response<Body>;
        type Error = std::convert::Infallible;
        type Future = futures::future::Pending<Result<http::Response<Body>, Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            futures::future::pending()
        }
    }

    fn grpc_status(r: &http::Response<Body>) -> Option<&str> {
        r.headers().get("grpc-status").and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn no_node_svid_is_refused_and_batches_in_flight_are_capped_per_connection() {
        use futures::FutureExt;
        use tower_layer::Layer;
        use tower_service::Service;

        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config::load(
            None,
            crate::config::Settings {
                data_dir: Some(dir.path().join("data")),
                ..Default::default()
            },
        )
        .unwrap();
        let ca = Arc::new(Ca::open(Arc::new(config)).unwrap());
        let mut guard = GuardLayer::new(ca).layer(Never);
        let peer = |node: bool| PeerInfo {
            remote: "127.0.0.1:1".parse().unwrap(),
            spiffe_id: node.then(|| {
                signet_identity::SpiffeId::parse("spiffe://signet.local/signet/node/n").unwrap()
            }),
            not_after: None,
            serial: None,
            batch_slots: Arc::new(tokio::sync::Semaphore::new(
                super::super::tls::MAX_BATCHES_PER_CONNECTION,
            )),
        };
        let request = |peer: &PeerInfo| {
            let mut r = http::Request::builder()
                .uri("/signet.ca.v1.Node/BatchSignX509Svid")
                .body(Body::empty())
                .unwrap();
            r.extensions_mut().insert(peer.clone());
            r
        };

        let anonymous = peer(false);
        let refused = guard.call(request(&anonymous)).await.unwrap();
        assert_eq!(grpc_status(&refused), Some("16"), "UNAUTHENTICATED");

        let node = peer(true);
        let mut in_flight: Vec<_> = (0..super::super::tls::MAX_BATCHES_PER_CONNECTION)
            .map(|_| guard.call(request(&node)))
            .collect();
        for call in &mut in_flight {
            assert!(call.now_or_never().is_none(), "passed to the service");
        }
        let refused = guard.call(request(&node)).await.unwrap();
        assert_eq!(grpc_status(&refused), Some("8"), "RESOURCE_EXHAUSTED");
        // Another connection has its own slots.
        assert!(guard.call(request(&peer(true))).now_or_never().is_none());
        // A finished call gives its slot back.
        drop(in_flight.pop());
        assert!(guard.call(request(&node)).now_or_never().is_none());
    }

    #[test]
    fn rules_cover_the_node_api() {
        assert!(!rule_for("/signet.ca.v1.Node/AttestNode").needs_node);
        assert!(!rule_for("/grpc.health.v1.Health/Check").needs_node);
        for m in [
            "RenewNodeSvid",
            "BatchSignX509Svid",
            "MintJwtSvid",
            "ListAuthorizedEntries",
            "WatchAuthorizedEntries",
            "WatchBundle",
            "ReportStatus",
            "SomethingNew",
        ] {
            assert!(
                rule_for(&format!("/signet.ca.v1.Node/{m}")).needs_node,
                "{m}"
            );
        }
        assert!(rule_for("/signet.ca.v1.Node/BatchSignX509Svid").batch);
    }
}
