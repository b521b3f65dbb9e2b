//! What a server learns about a connection when it accepts it, carried to
//! every request of that connection.
//!
//! tonic hands each request the `ConnectInfo` of its connection. Ours,
//! [`UdsPeer`], holds tonic's own [`UdsConnectInfo`] plus whatever the
//! server's [`AcceptHook`] recorded at accept time; [`PeerLayer`] unpacks
//! both into the request's extensions, so that handlers find
//! `UdsConnectInfo` exactly where a bare `UnixStream` would have put it,
//! next to the accept-time values (for the agent: the executable of the
//! process that connected, before it could exec something else).

use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::net::UnixStream;
use tonic::transport::server::UdsConnectInfo;

/// A connection's peer: SO_PEERCRED as tonic reads it, and the values an
/// [`AcceptHook`] recorded when the connection was accepted.
#[derive(Debug, Clone)]
pub struct UdsPeer {
    /// What tonic records for a unix-socket connection.
    pub uds: UdsConnectInfo,
    /// Accept-time values, inserted into every request's extensions.
    pub accepted: http::Extensions,
}

/// Called once per accepted connection, before any byte is read from it;
/// what it returns is added to the extensions of every request on the
/// connection.
#[derive(Clone)]
pub struct AcceptHook(Arc<dyn Fn(&UnixStream) -> http::Extensions + Send + Sync>);

impl AcceptHook {
    /// A hook running `f` on each accepted connection.
    pub fn new(f: impl Fn(&UnixStream) -> http::Extensions + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub(crate) fn run(&self, stream: &UnixStream) -> http::Extensions {
        (self.0)(stream)
    }
}

impl std::fmt::Debug for AcceptHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AcceptHook")
    }
}

/// Unpacks a request's [`UdsPeer`] into `UdsConnectInfo` and the
/// accept-time values.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerLayer;

impl<S> tower_layer::Layer<S> for PeerLayer {
    type Service = PeerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PeerService { inner }
    }
}

/// The service of [`PeerLayer`].
#[derive(Debug, Clone)]
pub struct PeerService<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for PeerService<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Some(peer) = req.extensions_mut().remove::<UdsPeer>() {
            req.extensions_mut().insert(peer.uds);
            req.extensions_mut().extend(peer.accepted);
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower_layer::Layer as _;
    use tower_service::Service as _;

    #[derive(Debug, Clone, PartialEq)]
    struct Tag(u32);

    #[tokio::test]
    async fn requests_see_tonics_info_and_the_accept_time_values() {
        let (a, _b) = UnixStream::pair().unwrap();
        let hook = AcceptHook::new(|s| {
            let mut e = http::Extensions::new();
            e.insert(Tag(s.peer_cred().unwrap().uid()));
            e
        });
        let peer = UdsPeer {
            uds: tonic::transport::server::Connected::connect_info(&a),
            accepted: hook.run(&a),
        };
        let mut svc = PeerLayer.layer(tower_service_fn(|req: http::Request<()>| {
            let info = req.extensions().get::<UdsConnectInfo>().cloned();
            let tag = req.extensions().get::<Tag>().cloned();
            let leftover = req.extensions().get::<UdsPeer>().is_some();
            (
                info.and_then(|i| i.peer_cred).map(|c| c.uid()),
                tag,
                leftover,
            )
        }));
        let mut req = http::Request::new(());
        req.extensions_mut().insert(peer);
        let (uid, tag, leftover) = svc.call(req).await.unwrap();
        let me = a.peer_cred().unwrap().uid();
        assert_eq!(uid, Some(me));
        assert_eq!(tag, Some(Tag(me)));
        assert!(!leftover, "the packed form is not left behind");

        // A request without a peer (another transport) passes untouched.
        let (uid, tag, _) = svc.call(http::Request::new(())).await.unwrap();
        assert_eq!((uid, tag), (None, None));
    }

    type Seen = (Option<u32>, Option<Tag>, bool);

    fn tower_service_fn(
        f: impl Fn(http::Request<()>) -> Seen + Clone,
    ) -> impl tower_service::Service<
        http::Request<()>,
        Response = Seen,
        Error = Infallible,
        Future = std::future::Ready<Result<Seen, Infallible>>,
    > + Clone {
        #[derive(Clone)]
        struct F<G>(G);
        impl<G: Fn(http::Request<()>) -> Seen> tower_service::Service<http::Request<()>> for F<G> {
            type Response = Seen;
            type Error = Infallible;
            type Future = std::future::Ready<Result<Seen, Infallible>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, req: http::Request<()>) -> Self::Future {
                std::future::ready(Ok((self.0)(req)))
            }
        }
        F(f)
    }
}
