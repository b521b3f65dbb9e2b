//! Rewrites the `:authority` of every HTTP/2 request a client sends, at the
//! frame level, before h2 parses it.
//!
//! Over a unix socket, gRPC clients disagree on `:authority`: grpc-core
//! (Python, C++, Ruby, PHP) sends the percent-encoded socket path, grpc-java the
//! raw path, grpc-go and tonic `localhost`, some clients nothing. h2 refuses the
//! first two as malformed and resets every stream with PROTOCOL_ERROR
//! (hyperium/h2#487). On a unix socket the authority names nothing the server
//! could route on, so every request that carries one leaves here with
//! `localhost`; a request without one keeps having none (h2 accepts that). One
//! fixed value means one behaviour whatever the client.
//!
//! How: the client's header blocks (HEADERS plus CONTINUATION frames, padding
//! and priority removed or kept) are decoded with a decoder that keeps the
//! client's HPACK dynamic table, and re-encoded as literals *without indexing*
//! and without Huffman coding. h2's decoder then never holds a table entry, so
//! what we forward never depends on its table state, and the client's
//! references into the dynamic table stay correct because they are resolved
//! by our decoder, which has seen every block the client sent. Every other
//! frame passes through unchanged, and so does the write side.
//!
//! Table sizes: the SETTINGS_HEADER_TABLE_SIZE a client sends limits the
//! *server's* encoder (responses), so it passes through to h2 and does not
//! concern us. The client's encoder is limited by what h2 advertises, the
//! default 4096 ([`CLIENT_TABLE_SIZE`]); our decoder enforces that bound on
//! the client's dynamic table size updates, as h2 would. We never send a size
//! update: h2's table stays empty, whatever its size.
//!
//! Bounds: a header block (the sum of its fragments) larger than
//! [`MAX_HEADER_BLOCK`] or decoding to more than [`MAX_HEADER_LIST`] ends the
//! connection, as does anything malformed. h2 would refuse such input too.

use loona_hpack::Decoder;

/// The connection preface every HTTP/2 client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The largest header block accepted, summed over its fragments.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// The largest decoded header list accepted, counted as RFC 9113 §6.5.2 does
/// (name + value + 32 per field): it bounds what a small block full of
/// references to large table entries can expand to.
pub const MAX_HEADER_LIST: usize = 256 * 1024;
/// Frames we write are never larger than this: the initial
/// SETTINGS_MAX_FRAME_SIZE every HTTP/2 endpoint accepts (RFC 9113 §6.5.2),
/// and the value h2 keeps when tonic does not set `max_frame_size`.
pub const MAX_FRAME_PAYLOAD: usize = 16_384;
/// The HPACK table size h2 advertises (tonic sets no
/// SETTINGS_HEADER_TABLE_SIZE): the largest table the client may use.
pub const CLIENT_TABLE_SIZE: usize = 4096;
/// The value every `:authority` becomes.
pub const AUTHORITY: &[u8] = b"localhost";

/// Buffers larger than this are freed after each header block.
const KEPT_BUFFER: usize = 8 * 1024;
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
const PRIORITY_LEN: usize = 5;
/// RFC 7541 §6.2.2, literal header field without indexing, new name.
const LITERAL_WITHOUT_INDEXING_NEW_NAME: u8 = 0x00;

/// Why a connection's input was refused. The connection is then closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RewriteError {
    #[error("the client did not start with the HTTP/2 connection preface")]
    BadPreface,
    #[error("header block larger than {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
    #[error("header list larger than {MAX_HEADER_LIST} bytes once decoded")]
    HeaderListTooLarge,
    #[error("padding longer than the HEADERS frame")]
    BadPadding,
    #[error("header frame larger than {MAX_FRAME_PAYLOAD} bytes")]
    FrameTooLarge,
    #[error("HEADERS frame on stream 0")]
    HeadersOnStreamZero,
    #[error("a header block was interrupted by another frame")]
    InterruptedHeaderBlock,
    #[error("CONTINUATION frame without a header block in progress")]
    UnexpectedContinuation,
    #[error("HPACK decoding failed: {0}")]
    Hpack(String),
}

/// What the rewriter expects next on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes of the preface have been checked.
    Preface(usize),
    /// Collecting a frame header.
    FrameHeader,
    /// Collecting the payload of a HEADERS or CONTINUATION frame.
    HeaderPayload { remaining: usize },
    /// Forwarding the payload of any other frame unchanged.
    Pass { remaining: usize },
}

/// A header block being collected across HEADERS and CONTINUATION frames.
#[derive(Debug)]
struct Block {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
}

/// The client-to-server half of an HTTP/2 connection, rewritten.
///
/// Feed it what the client sent with [`Rewriter::feed`]; it appends what the
/// server should read to `out`. It never panics on any input (fuzzed).
pub struct Rewriter {
    state: State,
    head: [u8; FRAME_HEADER_LEN],
    head_len: usize,
    /// The frame whose payload is being collected: type and flags.
    frame: (u8, u8, u32),
    payload: Vec<u8>,
    fragments: Vec<u8>,
    block: Option<Block>,
    decoder: Decoder<'static>,
    /// The re-encoded block, kept to reuse its allocation.
    encoded: Vec<u8>,
    blocks: u64,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("state", &self.state)
            .field("blocks", &self.blocks)
            .finish_non_exhaustive()
    }
}

impl Rewriter {
    /// A rewriter for a new connection, expecting the preface.
    #[must_use]
    pub fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(CLIENT_TABLE_SIZE);
        Self {
            state: State::Preface(0),
            head: [0; FRAME_HEADER_LEN],
            head_len: 0,
            frame: (0, 0, 0),
            payload: Vec::new(),
            fragments: Vec::new(),
            block: None,
            decoder,
            encoded: Vec::new(),
            blocks: 0,
        }
    }

    /// How many complete header blocks the client has sent.
    #[must_use]
    pub fn header_blocks(&self) -> u64 {
        self.blocks
    }

    /// How many of the next input bytes are frame payload to forward
    /// unchanged: a caller may hand them to the server itself and then report
    /// them with [`Rewriter::skip`], instead of copying them through `feed`.
    #[must_use]
    pub fn passthrough(&self) -> usize {
        match self.state {
            State::Pass { remaining } => remaining,
            _ => 0,
        }
    }

    /// Records that `n` (at most [`Rewriter::passthrough`]) pass-through bytes
    /// went to the server without going through `feed`.
    pub fn skip(&mut self, n: usize) {
        if let State::Pass { remaining } = self.state {
            let left = remaining.saturating_sub(n);
            self.state = if left == 0 {
                State::FrameHeader
            } else {
                State::Pass { remaining: left }
            };
        }
    }

    /// Consumes all of `input`, appending the rewritten stream to `out`.
    ///
    /// # Errors
    /// The input is not a well-formed HTTP/2 client stream, or exceeds the
    /// bounds in this module. The connection must then be closed; the
    /// rewriter is not usable afterwards.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        while !input.is_empty() {
            match self.state {
                State::Preface(seen) => {
                    let n = (PREFACE.len() - seen).min(input.len());
                    if input[..n] != PREFACE[seen..seen + n] {
                        return Err(RewriteError::BadPreface);
                    }
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if seen + n == PREFACE.len() {
                        State::FrameHeader
                    } else {
                        State::Preface(seen + n)
                    };
                }
                State::FrameHeader => {
                    let n = (FRAME_HEADER_LEN - self.head_len).min(input.len());
                    self.head[self.head_len..self.head_len + n].copy_from_slice(&input[..n]);
                    self.head_len += n;
                    input = &input[n..];
                    if self.head_len == FRAME_HEADER_LEN {
                        self.head_len = 0;
                        self.frame_header(out)?;
                    }
                }
                State::HeaderPayload { remaining } => {
                    let n = remaining.min(input.len());
                    self.payload.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if n == remaining {
                        self.state = State::FrameHeader;
                        self.header_frame(out)?;
                    } else {
                        self.state = State::HeaderPayload {
                            remaining: remaining - n,
                        };
                    }
                }
                State::Pass { remaining } => {
                    let n = remaining.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.skip(n);
                }
            }
        }
        Ok(())
    }

    /// A complete frame header is in `self.head`: decide what its payload is.
    fn frame_header(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let h = self.head;
        let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        let stream_id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        match kind {
            TYPE_HEADERS | TYPE_CONTINUATION => {
                if kind == TYPE_HEADERS && self.block.is_some() {
                    return Err(RewriteError::InterruptedHeaderBlock);
                }
                if kind == TYPE_CONTINUATION
                    && self.block.as_ref().map(|b| b.stream_id) != Some(stream_id)
                {
                    return Err(RewriteError::UnexpectedContinuation);
                }
                // h2 would refuse it too (FRAME_SIZE_ERROR): we never raise
                // SETTINGS_MAX_FRAME_SIZE above its initial value.
                if len > MAX_FRAME_PAYLOAD {
                    return Err(RewriteError::FrameTooLarge);
                }
                self.frame = (kind, flags, stream_id);
                self.payload.clear();
                self.state = State::HeaderPayload { remaining: len };
                if len == 0 {
                    self.state = State::FrameHeader;
                    self.header_frame(out)?;
                }
            }
            _ => {
                if self.block.is_some() {
                    return Err(RewriteError::InterruptedHeaderBlock);
                }
                out.extend_from_slice(&h);
                self.state = if len == 0 {
                    State::FrameHeader
                } else {
                    State::Pass { remaining: len }
                };
            }
        }
        Ok(())
    }

    /// A HEADERS or CONTINUATION payload is complete in `self.payload`.
    fn header_frame(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let (kind, flags, stream_id) = self.frame;
        let payload = std::mem::take(&mut self.payload);
        let fragment = if kind == TYPE_HEADERS {
            if stream_id == 0 {
                return Err(RewriteError::HeadersOnStreamZero);
            }
            let mut rest = &payload[..];
            let mut pad = 0;
            if flags & FLAG_PADDED != 0 {
                let (&p, r) = rest.split_first().ok_or(RewriteError::BadPadding)?;
                pad = usize::from(p);
                rest = r;
            }
            let mut priority = None;
            if flags & FLAG_PRIORITY != 0 {
                let (p, r) = rest
                    .split_first_chunk::<PRIORITY_LEN>()
                    .ok_or(RewriteError::BadPadding)?;
                priority = Some(*p);
                rest = r;
            }
            let end = rest
                .len()
                .checked_sub(pad)
                .ok_or(RewriteError::BadPadding)?;
            self.block = Some(Block {
                stream_id,
                end_stream: flags & FLAG_END_STREAM != 0,
                priority,
            });
            &rest[..end]
        } else {
            &payload[..]
        };
        if self.fragments.len() + fragment.len() > MAX_HEADER_BLOCK {
            return Err(RewriteError::HeaderBlockTooLarge);
        }
        self.fragments.extend_from_slice(fragment);
        // Keep the allocation for the next frame.
        self.payload = payload;
        self.payload.clear();
        if flags & FLAG_END_HEADERS != 0 {
            self.finish_block(out)?;
        }
        Ok(())
    }

    /// The header block is complete: decode, rewrite, re-encode, frame.
    fn finish_block(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let Some(block) = self.block.take() else {
            return Err(RewriteError::UnexpectedContinuation);
        };
        let encoded = &mut self.encoded;
        encoded.clear();
        let mut list_size = 0usize;
        let decoded = self.decoder.decode_with_cb(&self.fragments, |name, value| {
            list_size = list_size.saturating_add(name.len() + value.len() + 32);
            if list_size > MAX_HEADER_LIST {
                return;
            }
            let value: &[u8] = if &*name == b":authority" {
                AUTHORITY
            } else {
                &value
            };
            encoded.push(LITERAL_WITHOUT_INDEXING_NEW_NAME);
            encode_string(&name, encoded);
            encode_string(value, encoded);
        });
        self.fragments.clear();
        decoded.map_err(|e| RewriteError::Hpack(e.to_string()))?;
        if list_size > MAX_HEADER_LIST {
            return Err(RewriteError::HeaderListTooLarge);
        }
        self.blocks += 1;
        write_block(&block, &self.encoded, out);
        // Keep small buffers for the next block, but do not let one large
        // block pin memory for the connection's lifetime.
        for buf in [&mut self.encoded, &mut self.fragments, &mut self.payload] {
            if buf.capacity() > KEPT_BUFFER {
                *buf = Vec::new();
            }
        }
        Ok(())
    }
}

/// Writes `block` as one HEADERS frame and as many CONTINUATION frames as
/// needed, none larger than [`MAX_FRAME_PAYLOAD`], END_HEADERS on the last.
fn write_block(block: &Block, encoded: &[u8], out: &mut Vec<u8>) {
    let prio_len = block.priority.map_or(0, |_| PRIORITY_LEN);
    let first = encoded.len().min(MAX_FRAME_PAYLOAD - prio_len);
    let (head, mut rest) = encoded.split_at(first);
    let mut flags = 0;
    if block.end_stream {
        flags |= FLAG_END_STREAM;
    }
    if block.priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    frame_header(
        out,
        prio_len + head.len(),
        TYPE_HEADERS,
        flags,
        block.stream_id,
    );
    if let Some(p) = block.priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(head);
    while !rest.is_empty() {
        let n = rest.len().min(MAX_FRAME_PAYLOAD);
        let (chunk, r) = rest.split_at(n);
        rest = r;
        let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
        frame_header(out, n, TYPE_CONTINUATION, flags, block.stream_id);
        out.extend_from_slice(chunk);
    }
}

fn frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream_id: u32) {
    // len <= MAX_FRAME_PAYLOAD, which fits in 24 bits.
    let len = u32::try_from(len).unwrap_or(0).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    out.extend_from_slice(&stream_id.to_be_bytes());
}

/// An HPACK string literal without Huffman coding (RFC 7541 §5.2).
fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    encode_integer(s.len(), 7, 0, out);
    out.extend_from_slice(s);
}

/// An HPACK integer with an `prefix`-bit prefix (RFC 7541 §5.1); `first`
/// holds the bits above the prefix in the first octet.
fn encode_integer(mut value: usize, prefix: u8, first: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests;
