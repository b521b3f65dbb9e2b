//! The HTTP/2 `:authority` rewriter on arbitrary client bytes (after a valid
//! preface): it must never panic; feeding the input in pieces must give the
//! same result as feeding it whole; and whatever it forwards must be frames
//! whose header blocks decode with a fresh HPACK decoder (nothing we send is
//! indexed), carry `:authority: localhost` if any, and fit in 16 KiB frames.

#![no_main]

use libfuzzer_sys::fuzz_target;
use signet_uds::authority::{AUTHORITY, MAX_FRAME_PAYLOAD, PREFACE, Rewriter};

fuzz_target!(|data: &[u8]| {
    let Some((&split, body)) = data.split_first() else {
        return;
    };
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(body);

    let mut whole = Vec::new();
    let result = Rewriter::new().feed(&input, &mut whole);

    let mut pieces = Vec::new();
    let mut rewriter = Rewriter::new();
    let mut chunked = Ok(());
    for chunk in input.chunks(usize::from(split).max(1)) {
        chunked = rewriter.feed(chunk, &mut pieces);
        if chunked.is_err() {
            break;
        }
    }
    assert_eq!(result.is_ok(), chunked.is_ok(), "chunking changed the verdict");
    if result.is_err() {
        return;
    }
    assert_eq!(whole, pieces, "chunking changed the output");
    check_forwarded(&whole[PREFACE.len()..]);
});

fn check_forwarded(mut out: &[u8]) {
    let mut decoder = loona_hpack::Decoder::new();
    let mut block = Vec::new();
    while out.len() >= 9 {
        let len = (usize::from(out[0]) << 16) | (usize::from(out[1]) << 8) | usize::from(out[2]);
        let (kind, flags) = (out[3], out[4]);
        if out.len() < 9 + len {
            return; // the input ended inside this frame
        }
        let payload = &out[9..9 + len];
        out = &out[9 + len..];
        if kind != 0x1 && kind != 0x9 {
            continue;
        }
        assert!(len <= MAX_FRAME_PAYLOAD, "a header frame of {len} bytes");
        assert_eq!(flags & 0x8, 0, "padding forwarded");
        let skip = if kind == 0x1 && flags & 0x20 != 0 { 5 } else { 0 };
        block.extend_from_slice(&payload[skip..]);
        if flags & 0x4 != 0 {
            let headers = decoder.decode(&block).expect("a forwarded block decodes");
            for (name, value) in headers {
                if name == b":authority" {
                    assert_eq!(value, AUTHORITY);
                }
            }
            block.clear();
        }
    }
}
