//! Serving tonic services on a bound unix socket, with the `:authority`
//! normaliser and the limits on every connection.

use std::time::{Duration, Instant};

use futures::Stream;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tonic::service::Routes;

use crate::bind::BoundSocket;
use crate::limits::{Limiter, StreamLimitLayer};
use crate::peer::{AcceptHook, PeerLayer};
use crate::stream::NormalizedStream;

/// Default cap on open connections to one socket, all users together.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default cap on open connections of one uid.
pub const DEFAULT_MAX_CONNECTIONS_PER_UID: usize = 64;
/// Default SETTINGS_MAX_CONCURRENT_STREAMS of each connection.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 100;
/// Default cap on concurrent streams of one uid across its connections.
pub const DEFAULT_MAX_STREAMS_PER_UID: usize = 256;
/// Default cap on concurrent streams, all users together.
pub const DEFAULT_MAX_STREAMS: usize = 4096;
/// Default time a client has from connecting to its first complete request
/// headers.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default HTTP/2 PING interval on idle connections.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// Default wait for a PING's answer before the connection is closed.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// First and longest pause after a failing `accept` (EMFILE and the like).
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));
/// At most one warning about refused connections per this interval.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How a socket is served. [`ServeOptions::default`] holds the defaults above.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub max_connections: usize,
    pub max_connections_per_uid: usize,
    pub max_streams_per_connection: u32,
    pub max_streams: usize,
    pub max_streams_per_uid: usize,
    pub handshake_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// After shutdown is signalled, connections still open this long later
    /// are dropped; `None` waits for them.
    pub drain_deadline: Option<Duration>,
    /// Runs on each accepted connection before it is served; what it
    /// records reaches every request of the connection.
    pub on_accept: Option<AcceptHook>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_uid: DEFAULT_MAX_CONNECTIONS_PER_UID,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            max_streams: DEFAULT_MAX_STREAMS,
            max_streams_per_uid: DEFAULT_MAX_STREAMS_PER_UID,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            drain_deadline: None,
            on_accept: None,
        }
    }
}

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("the socket's listener was already taken")]
    NoListener,
    #[error("the gRPC server failed: {0}")]
    Server(#[from] tonic::transport::Error),
}

/// Serves `routes` on `socket` until `shutdown` turns true or its sender is
/// dropped, then drains (bounded by [`ServeOptions::drain_deadline`]) and
/// removes the socket if it is still ours.
///
/// # Errors
/// The listener was taken already, or the server fails.
pub async fn serve(
    mut socket: BoundSocket,
    routes: Routes,
    options: ServeOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let listener = socket.take_listener().ok_or(ServeError::NoListener)?;
    let incoming = incoming(listener, &options);
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(options.max_streams_per_connection)
        .http2_keepalive_interval(Some(options.keepalive_interval))
        .http2_keepalive_timeout(Some(options.keepalive_timeout))
        .layer(PeerLayer)
        .layer(StreamLimitLayer::new(
            options.max_streams,
            options.max_streams_per_uid,
        ))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, signalled(shutdown.clone()));
    let result = match options.drain_deadline {
        None => server.await,
        Some(deadline) => {
            tokio::select! {
                result = server => result,
                () = async {
                    signalled(shutdown).await;
                    tokio::time::sleep(deadline).await;
                } => {
                    tracing::warn!(socket = %socket.path().display(), "connections did not close in time; dropping them");
                    Ok(())
                }
            }
        }
    };
    drop(socket);
    Ok(result?)
}

async fn signalled(mut shutdown: watch::Receiver<bool>) {
    // A dropped sender also means the process is going away.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

struct Accept {
    listener: UnixListener,
    connections: Limiter,
    handshake_timeout: Duration,
    on_accept: Option<AcceptHook>,
    backoff: Duration,
    refused: u64,
    last_refusal_log: Option<Instant>,
}

/// The accepted connections, wrapped, each holding a connection permit of
/// its peer's uid. Connections over a cap are closed at once. A failing
/// accept (out of file descriptors above all) is retried after a pause that
/// doubles up to a second, instead of in a busy loop.
pub(crate) fn incoming(
    listener: UnixListener,
    options: &ServeOptions,
) -> impl Stream<Item = Result<NormalizedStream<UnixStream>, std::convert::Infallible>> + use<> {
    let state = Accept {
        listener,
        connections: Limiter::new(options.max_connections, options.max_connections_per_uid),
        handshake_timeout: options.handshake_timeout,
        on_accept: options.on_accept.clone(),
        backoff: ACCEPT_BACKOFF.0,
        refused: 0,
        last_refusal_log: None,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            let stream = match st.listener.accept().await {
                Ok((stream, _)) => {
                    st.backoff = ACCEPT_BACKOFF.0;
                    stream
                }
                Err(e) => {
                    tracing::warn!(error = %e, pause = ?st.backoff, "accepting a connection failed");
                    tokio::time::sleep(st.backoff).await;
                    st.backoff = (st.backoff * 2).min(ACCEPT_BACKOFF.1);
                    continue;
                }
            };
            let uid = stream.peer_cred().ok().map(|c| c.uid());
            match st.connections.try_acquire(uid) {
                Ok(permit) => {
                    // Sampled before the first byte is read: what the peer
                    // was when it connected, not what it may exec into.
                    let accepted = st
                        .on_accept
                        .as_ref()
                        .map(|hook| hook.run(&stream))
                        .unwrap_or_default();
                    let conn =
                        NormalizedStream::new(stream, Some(st.handshake_timeout), Some(permit))
                            .with_accepted(accepted);
                    return Some((Ok(conn), st));
                }
                Err(e) => {
                    drop(stream);
                    st.refused += 1;
                    let now = Instant::now();
                    if st
                        .last_refusal_log
                        .is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_INTERVAL)
                    {
                        tracing::warn!(uid = ?uid, error = %e, refused_so_far = st.refused, "refusing unix-socket connections");
                        st.last_refusal_log = Some(now);
                    }
                }
            }
        }
    })
}
