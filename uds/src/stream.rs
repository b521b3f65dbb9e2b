//! An accepted connection with the [`Rewriter`] on its read side.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::time::Sleep;
use tonic::transport::server::Connected;

use crate::authority::Rewriter;
use crate::limits::Permit;
use crate::peer::UdsPeer;

/// Bytes read from the client per read call while not inside a pass-through
/// payload: a few frames' worth.
const READ_CHUNK: usize = 16 * 1024;

/// A client connection whose HTTP/2 header blocks are rewritten by a
/// [`Rewriter`] before the server reads them; writes pass through untouched.
///
/// Payloads of other frames (DATA above all) that did not arrive together
/// with their frame header are read straight into the reader's buffer, never
/// copied. A client that has not completed its first header block within the
/// handshake timeout gets an error and the connection ends.
pub struct NormalizedStream<S> {
    inner: S,
    rewriter: Rewriter,
    out: Vec<u8>,
    out_pos: usize,
    chunk: Box<[u8]>,
    failed: Option<io::ErrorKind>,
    handshake: Option<Pin<Box<Sleep>>>,
    accepted: http::Extensions,
    _permit: Option<Permit>,
}

impl<S> std::fmt::Debug for NormalizedStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NormalizedStream")
            .field("rewriter", &self.rewriter)
            .finish_non_exhaustive()
    }
}

impl<S> NormalizedStream<S> {
    /// Wraps `inner`. `handshake_timeout` bounds the time until the client's
    /// first complete header block; `permit` is released when the connection
    /// is dropped.
    pub fn new(inner: S, handshake_timeout: Option<Duration>, permit: Option<Permit>) -> Self {
        Self {
            inner,
            rewriter: Rewriter::new(),
            out: Vec::new(),
            out_pos: 0,
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            failed: None,
            handshake: handshake_timeout.map(|t| Box::pin(tokio::time::sleep(t))),
            accepted: http::Extensions::new(),
            _permit: permit,
        }
    }

    /// Values recorded when the connection was accepted, handed to every
    /// request on it (see [`UdsPeer`]).
    #[must_use]
    pub fn with_accepted(mut self, accepted: http::Extensions) -> Self {
        self.accepted = accepted;
        self
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl Connected for NormalizedStream<UnixStream> {
    type ConnectInfo = UdsPeer;

    /// What tonic gives for a bare `UnixStream`, plus the accept-time
    /// values; [`PeerLayer`](crate::peer::PeerLayer) unpacks both, so that
    /// handlers find the caller's SO_PEERCRED where they always did.
    fn connect_info(&self) -> Self::ConnectInfo {
        UdsPeer {
            uds: self.inner.connect_info(),
            accepted: self.accepted.clone(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for NormalizedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(kind) = this.failed {
                return Poll::Ready(Err(io::Error::from(kind)));
            }
            if let Some(deadline) = &mut this.handshake {
                if this.rewriter.header_blocks() > 0 {
                    this.handshake = None;
                } else if deadline.as_mut().poll(cx).is_ready() {
                    this.failed = Some(io::ErrorKind::TimedOut);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no HTTP/2 request within the handshake timeout",
                    )));
                }
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }

            let pass = this.rewriter.passthrough();
            if pass > 0 {
                // Straight into the reader's buffer: no copy.
                let dst = buf.initialize_unfilled_to(pass.min(buf.remaining()));
                let mut direct = ReadBuf::new(dst);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut direct))?;
                let n = direct.filled().len();
                buf.advance(n);
                this.rewriter.skip(n);
                return Poll::Ready(Ok(()));
            }

            let mut chunk = ReadBuf::new(&mut this.chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            let n = chunk.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(()));
            }
            if let Err(e) = this.rewriter.feed(&this.chunk[..n], &mut this.out) {
                this.failed = Some(io::ErrorKind::InvalidData);
                tracing::debug!(error = %e, "closing a unix-socket connection");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for NormalizedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
