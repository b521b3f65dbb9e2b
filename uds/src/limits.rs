//! Caps on what one local user can hold open on a unix socket: connections
//! (checked at accept, from SO_PEERCRED) and concurrent streams across all of
//! its connections (a tower layer keyed by the same uid).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;
use tonic::transport::server::UdsConnectInfo;

/// Who holds a permit: a uid, or `None` for a peer without credentials.
pub type Owner = Option<u32>;

/// Counts what each owner holds, with a cap in total and per owner.
#[derive(Debug, Clone)]
pub struct Limiter {
    inner: Arc<Mutex<Counts>>,
    max_total: usize,
    max_per_owner: usize,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_owner: HashMap<Owner, usize>,
}

/// Why a permit was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitExceeded {
    #[error("the server-wide cap of {0} is reached")]
    Total(usize),
    #[error("the cap of {0} per user is reached")]
    PerOwner(usize),
}

impl Limiter {
    /// A limiter allowing `max_total` permits, `max_per_owner` to one owner.
    #[must_use]
    pub fn new(max_total: usize, max_per_owner: usize) -> Self {
        Self {
            inner: Arc::default(),
            max_total,
            max_per_owner,
        }
    }

    /// Takes a permit for `owner`, released when the permit is dropped.
    ///
    /// # Errors
    /// The total or the owner's cap is reached.
    pub fn try_acquire(&self, owner: Owner) -> Result<Permit, LimitExceeded> {
        let mut counts = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.max_total {
            return Err(LimitExceeded::Total(self.max_total));
        }
        let held = counts.per_owner.entry(owner).or_insert(0);
        if *held >= self.max_per_owner {
            return Err(LimitExceeded::PerOwner(self.max_per_owner));
        }
        *held += 1;
        counts.total += 1;
        Ok(Permit {
            limiter: self.inner.clone(),
            owner,
        })
    }

    /// Permits held now by `owner`.
    #[must_use]
    pub fn held_by(&self, owner: Owner) -> usize {
        let counts = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        counts.per_owner.get(&owner).copied().unwrap_or(0)
    }
}

/// One unit of a [`Limiter`]'s capacity, given back on drop.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<Mutex<Counts>>,
    owner: Owner,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(held) = counts.per_owner.get_mut(&self.owner) {
            *held -= 1;
            if *held == 0 {
                counts.per_owner.remove(&self.owner);
            }
        }
    }
}

/// The uid of the peer a request came from, as tonic recorded it.
fn owner_of<B>(req: &http::Request<B>) -> Owner {
    req.extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .map(|cred| cred.uid())
}

/// A tower layer capping the concurrent streams (requests whose response
/// body is not finished) of one uid across all its connections. A request
/// over the cap is answered RESOURCE_EXHAUSTED without reaching the service.
#[derive(Debug, Clone)]
pub struct StreamLimitLayer {
    limiter: Limiter,
}

impl StreamLimitLayer {
    /// Caps each uid at `per_uid` concurrent streams, all uids at `total`.
    #[must_use]
    pub fn new(total: usize, per_uid: usize) -> Self {
        Self {
            limiter: Limiter::new(total, per_uid),
        }
    }
}

impl<S> tower_layer::Layer<S> for StreamLimitLayer {
    type Service = StreamLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// The service made by [`StreamLimitLayer`].
#[derive(Debug, Clone)]
pub struct StreamLimit<S> {
    inner: S,
    limiter: Limiter,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower_service::Service<http::Request<Body>> for StreamLimit<S>
where
    S: tower_service::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
        >,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let owner = owner_of(&req);
        match self.limiter.try_acquire(owner) {
            Ok(permit) => {
                let response = self.inner.call(req);
                Box::pin(async move {
                    let response = response.await?;
                    Ok(response.map(|body| {
                        Body::new(HoldPermit {
                            body,
                            _permit: permit,
                        })
                    }))
                })
            }
            Err(e) => {
                tracing::debug!(uid = ?owner, error = %e, "refusing a stream");
                let status =
                    tonic::Status::resource_exhausted(format!("too many concurrent streams: {e}"));
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// A response body that holds a stream permit until it is finished or
/// dropped.
struct HoldPermit {
    body: Body,
    _permit: Permit,
}

impl HttpBody for HoldPermit {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
