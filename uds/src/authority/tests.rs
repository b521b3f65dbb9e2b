use loona_hpack::Encoder;

use super::*;

type Headers = Vec<(Vec<u8>, Vec<u8>)>;

const DATA: u8 = 0x0;
const SETTINGS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn request(authority: Option<&str>) -> Headers {
    let mut h: Headers = vec![
        (b":method".to_vec(), b"POST".to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
        (
            b":path".to_vec(),
            b"/SpiffeWorkloadAPI/FetchX509SVID".to_vec(),
        ),
    ];
    if let Some(a) = authority {
        h.push((b":authority".to_vec(), a.as_bytes().to_vec()));
    }
    h.push((b"content-type".to_vec(), b"application/grpc".to_vec()));
    h.push((b"workload.spiffe.io".to_vec(), b"true".to_vec()));
    h
}

fn encode(enc: &mut Encoder<'_>, headers: &Headers) -> Vec<u8> {
    enc.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])))
}

fn with_authority(mut h: Headers, authority: Option<&[u8]>) -> Headers {
    for (n, v) in &mut h {
        if n == b":authority" {
            *v = authority.unwrap().to_vec();
        }
    }
    h
}

/// What the server reads: frames, and header blocks decoded the way h2
/// would decode them (one decoder for the connection).
#[derive(Debug, Default)]
struct Seen {
    frames: Vec<(u8, u8, u32, Vec<u8>)>,
    blocks: Vec<(u32, u8, Headers)>,
}

fn parse_server_side(mut bytes: &[u8]) -> Seen {
    assert!(bytes.starts_with(PREFACE));
    bytes = &bytes[PREFACE.len()..];
    let mut seen = Seen::default();
    let mut decoder = Decoder::new();
    let mut block = Vec::new();
    let mut first_flags = 0;
    while !bytes.is_empty() {
        let len =
            (usize::from(bytes[0]) << 16) | (usize::from(bytes[1]) << 8) | usize::from(bytes[2]);
        let (kind, flags) = (bytes[3], bytes[4]);
        let stream = u32::from_be_bytes(bytes[5..9].try_into().unwrap());
        let payload = bytes[9..9 + len].to_vec();
        bytes = &bytes[9 + len..];
        assert!(len <= MAX_FRAME_PAYLOAD, "frame of {len} bytes");
        if kind == TYPE_HEADERS {
            assert_eq!(flags & FLAG_PADDED, 0, "padding is stripped");
            first_flags = flags;
            let skip = if flags & FLAG_PRIORITY != 0 {
                PRIORITY_LEN
            } else {
                0
            };
            block.extend_from_slice(&payload[skip..]);
        } else if kind == TYPE_CONTINUATION {
            block.extend_from_slice(&payload);
        }
        if (kind == TYPE_HEADERS || kind == TYPE_CONTINUATION) && flags & FLAG_END_HEADERS != 0 {
            // Nothing we forward may add to the server's table.
            assert_eq!(block[0] & 0xc0, 0, "literal without indexing");
            seen.blocks
                .push((stream, first_flags, decoder.decode(&block).unwrap()));
            block.clear();
        }
        seen.frames.push((kind, flags, stream, payload));
    }
    assert!(block.is_empty(), "unterminated header block");
    seen
}

fn rewrite(input: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let mut out = Vec::new();
    Rewriter::new().feed(input, &mut out)?;
    Ok(out)
}

fn connection(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut c = PREFACE.to_vec();
    c.extend(frame(SETTINGS, 0, 0, &[]));
    for f in frames {
        c.extend_from_slice(f);
    }
    c
}

#[test]
fn every_authority_becomes_localhost_and_nothing_else_changes() {
    let cases: [(&str, Option<&str>); 5] = [
        ("grpc-go, tonic, grpc-js", Some("localhost")),
        ("grpc-core >= 1.57", Some("%2Ftmp%2Fx%2Fapi.sock")),
        ("grpc-java", Some("/tmp/x/api.sock")),
        ("a valid host", Some("spire-agent.svc:8081")),
        ("no authority at all", None),
    ];
    for (who, authority) in cases {
        let mut enc = Encoder::new();
        let req = request(authority);
        let block = encode(&mut enc, &req);
        let data = frame(DATA, 0x1, 1, b"\0\0\0\0\0");
        let input = connection(&[
            frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block),
            data.clone(),
        ]);
        let seen = parse_server_side(&rewrite(&input).unwrap());
        let want = authority.map(|_| with_authority(req.clone(), Some(AUTHORITY)));
        let want = want.unwrap_or(req);
        assert_eq!(seen.blocks, vec![(1, FLAG_END_HEADERS, want)], "{who}");
        assert_eq!(seen.frames[0], (SETTINGS, 0, 0, vec![]), "{who}");
        assert_eq!(seen.frames[2], (DATA, 0x1, 1, data[9..].to_vec()), "{who}");
    }
}

#[test]
fn the_clients_dynamic_table_is_followed_across_blocks() {
    // The second request refers to entries the first one added to the
    // client's table; the server must still see full headers.
    let mut enc = Encoder::new();
    let req = request(Some("%2Frun%2Fsignet%2Fagent.sock"));
    let first = encode(&mut enc, &req);
    let second = encode(&mut enc, &req);
    assert!(
        second.len() < first.len() && second.ends_with(&[0x80 | 62]),
        "the encoder indexed nothing: {first:02x?} then {second:02x?}"
    );
    let input = connection(&[
        frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &first),
        frame(TYPE_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 3, &second),
    ]);
    let seen = parse_server_side(&rewrite(&input).unwrap());
    let want = with_authority(req, Some(AUTHORITY));
    assert_eq!(
        seen.blocks,
        vec![
            (1, FLAG_END_HEADERS, want.clone()),
            (3, FLAG_END_HEADERS | FLAG_END_STREAM, want)
        ]
    );
}

#[test]
fn padding_is_stripped_and_priority_kept() {
    let req = request(Some("/tmp/api.sock"));
    let block = encode(&mut Encoder::new(), &req);
    let priority = [0x80, 0, 0, 0, 7];
    let mut payload = vec![3u8];
    payload.extend_from_slice(&priority);
    payload.extend_from_slice(&block);
    payload.extend_from_slice(&[0, 0, 0]);
    let flags = FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM;
    let input = connection(&[frame(TYPE_HEADERS, flags, 5, &payload)]);
    let seen = parse_server_side(&rewrite(&input).unwrap());
    let want_flags = FLAG_END_HEADERS | FLAG_PRIORITY | FLAG_END_STREAM;
    assert_eq!(
        seen.blocks,
        vec![(5, want_flags, with_authority(req, Some(AUTHORITY)))]
    );
    assert_eq!(seen.frames[1].3[..PRIORITY_LEN], priority);
}

#[test]
fn continuation_fragments_are_joined() {
    let req = request(Some("%2Fa.sock"));
    let block = encode(&mut Encoder::new(), &req);
    let (a, rest) = block.split_at(5);
    let (b, c) = rest.split_at(7);
    let input = connection(&[
        frame(
            TYPE_HEADERS,
            FLAG_PADDED,
            1,
            &[[1u8].as_slice(), a, &[0]].concat(),
        ),
        frame(TYPE_CONTINUATION, 0, 1, b),
        frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, c),
    ]);
    let seen = parse_server_side(&rewrite(&input).unwrap());
    assert_eq!(
        seen.blocks,
        vec![(1, FLAG_END_HEADERS, with_authority(req, Some(AUTHORITY)))]
    );
}

#[test]
fn a_large_block_is_split_into_continuations() {
    let mut req = request(Some("%2Fa.sock"));
    for i in 0..6 {
        req.push((format!("x-big-{i}").into_bytes(), vec![b'v'; 8000]));
    }
    let block = encode(&mut Encoder::new(), &req);
    assert!(block.len() > 2 * MAX_FRAME_PAYLOAD);
    let chunks: Vec<&[u8]> = block.chunks(MAX_FRAME_PAYLOAD).collect();
    let last = chunks.len() - 1;
    let frames: Vec<Vec<u8>> = chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let kind = if i == 0 {
                TYPE_HEADERS
            } else {
                TYPE_CONTINUATION
            };
            let flags = if i == last { FLAG_END_HEADERS } else { 0 };
            frame(kind, flags, 1, c)
        })
        .collect();
    let input = connection(&frames);
    let seen = parse_server_side(&rewrite(&input).unwrap());
    let kinds: Vec<(u8, u8)> = seen.frames[1..].iter().map(|f| (f.0, f.1)).collect();
    assert_eq!(
        kinds,
        vec![
            (TYPE_HEADERS, 0),
            (TYPE_CONTINUATION, 0),
            (TYPE_CONTINUATION, FLAG_END_HEADERS)
        ]
    );
    assert_eq!(seen.blocks[0].2, with_authority(req, Some(AUTHORITY)));
}

#[test]
fn any_chunking_of_the_input_gives_the_same_output() {
    let req = request(Some("%2Fa.sock"));
    let block = encode(&mut Encoder::new(), &req);
    let input = connection(&[
        frame(TYPE_HEADERS, 0, 1, &block[..10]),
        frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block[10..]),
        frame(DATA, 0, 1, &[7; 100]),
        frame(0x8, 0, 0, &[0, 0, 1, 0]),
        frame(DATA, 0x1, 1, &[]),
    ]);
    let whole = rewrite(&input).unwrap();
    for size in [1, 2, 9, 10, 33] {
        let mut rw = Rewriter::new();
        let mut out = Vec::new();
        for chunk in input.chunks(size) {
            rw.feed(chunk, &mut out).unwrap();
        }
        assert_eq!(out, whole, "chunks of {size}");
    }
    // Pass-through bytes handed over directly are accounted for.
    let mut rw = Rewriter::new();
    let mut out = Vec::new();
    let data_at = input.len() - 9 - 4 - 9 - 100;
    rw.feed(&input[..data_at], &mut out).unwrap();
    assert_eq!(rw.passthrough(), 100);
    out.extend_from_slice(&input[data_at..data_at + 100]);
    rw.skip(100);
    rw.feed(&input[data_at + 100..], &mut out).unwrap();
    assert_eq!(out, whole);
}

#[test]
fn malformed_input_is_refused() {
    let block = encode(&mut Encoder::new(), &request(Some("x")));
    let too_big = vec![0u8; MAX_HEADER_BLOCK + 1];
    let cases: Vec<(&str, Vec<u8>, RewriteError)> = vec![
        (
            "HTTP/1.1 instead of a preface",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            RewriteError::BadPreface,
        ),
        (
            "padding longer than the frame",
            connection(&[frame(
                TYPE_HEADERS,
                FLAG_PADDED | FLAG_END_HEADERS,
                1,
                &[200, 1, 2],
            )]),
            RewriteError::BadPadding,
        ),
        (
            "PADDED flag on an empty frame",
            connection(&[frame(TYPE_HEADERS, FLAG_PADDED | FLAG_END_HEADERS, 1, &[])]),
            RewriteError::BadPadding,
        ),
        (
            "HEADERS on stream 0",
            connection(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 0, &block)]),
            RewriteError::HeadersOnStreamZero,
        ),
        (
            "DATA inside a header block",
            connection(&[frame(TYPE_HEADERS, 0, 1, &block), frame(DATA, 0, 1, b"x")]),
            RewriteError::InterruptedHeaderBlock,
        ),
        (
            "CONTINUATION on another stream",
            connection(&[
                frame(TYPE_HEADERS, 0, 1, &block),
                frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &[]),
            ]),
            RewriteError::UnexpectedContinuation,
        ),
        (
            "CONTINUATION out of the blue",
            connection(&[frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block)]),
            RewriteError::UnexpectedContinuation,
        ),
        (
            "a frame over the frame size",
            connection(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &too_big)]),
            RewriteError::FrameTooLarge,
        ),
        (
            "a block over the limit in continuations",
            connection(&[
                frame(TYPE_HEADERS, 0, 1, &too_big[..MAX_FRAME_PAYLOAD]),
                frame(TYPE_CONTINUATION, 0, 1, &too_big[..MAX_FRAME_PAYLOAD]),
                frame(TYPE_CONTINUATION, 0, 1, &too_big[..MAX_FRAME_PAYLOAD]),
                frame(TYPE_CONTINUATION, 0, 1, &too_big[..MAX_FRAME_PAYLOAD]),
                frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &too_big[..10]),
            ]),
            RewriteError::HeaderBlockTooLarge,
        ),
        (
            "an index past the tables",
            connection(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0xff, 0x7f])]),
            RewriteError::Hpack("Header index out of bounds".into()),
        ),
        (
            "a table size above what the server allows",
            connection(&[frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS,
                1,
                &[0x3f, 0xe1, 0x7f, 0x82],
            )]),
            RewriteError::Hpack("Dynamic table size exceeds the maximum size".into()),
        ),
    ];
    for (what, input, want) in cases {
        assert_eq!(rewrite(&input).unwrap_err(), want, "{what}");
    }
}

#[test]
fn a_small_block_expanding_past_the_list_limit_is_refused() {
    // One 4000-byte entry in the client's table, then a block of 100
    // one-byte references to it: 400 KB of headers from 100 bytes.
    let mut enc = Encoder::new();
    let fill = encode(&mut enc, &vec![(b"x-fill".to_vec(), vec![b'a'; 4000])]);
    let refs = vec![0x80 | 62u8; 100];
    let input = connection(&[
        frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[encode(&mut enc, &request(None)), fill].concat(),
        ),
        frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &refs),
    ]);
    assert_eq!(
        rewrite(&input).unwrap_err(),
        RewriteError::HeaderListTooLarge
    );
}

#[test]
fn integers_are_encoded_as_rfc7541_says() {
    // RFC 7541 C.1.1-C.1.3.
    let cases: [(usize, u8, &[u8]); 4] = [
        (10, 5, &[0x0a]),
        (1337, 5, &[0x1f, 0x9a, 0x0a]),
        (42, 8, &[0x2a]),
        (127, 7, &[0x7f, 0x00]),
    ];
    for (value, prefix, want) in cases {
        let mut out = Vec::new();
        encode_integer(value, prefix, 0, &mut out);
        assert_eq!(out, want, "{value} with a {prefix}-bit prefix");
    }
}
