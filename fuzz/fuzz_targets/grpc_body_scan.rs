//! The node API's pre-decoding body scanner on arbitrary bytes: it must
//! never panic, never count past its limit by more than the item that
//! tripped it, and give the same answer however the bytes are split into
//! chunks (when only the item count can trip it).

#![no_main]

use libfuzzer_sys::fuzz_target;
use signet_proto::wire_scan::BodyScan;

const MAX_ITEMS: usize = 8;

fuzz_target!(|input: &[u8]| {
    // The first byte picks where to split the rest, so that chunk
    // boundaries are fuzzed too.
    let Some((&split, body)) = input.split_first() else {
        return;
    };

    let mut whole = BodyScan::new(usize::MAX, Some(MAX_ITEMS));
    let whole_result = whole.feed(body);
    assert!(whole.items() <= MAX_ITEMS + 1);

    let mut chunked = BodyScan::new(usize::MAX, Some(MAX_ITEMS));
    let step = usize::from(split).max(1);
    let mut chunked_result = Ok(());
    for part in body.chunks(step) {
        chunked_result = chunked.feed(part);
        if chunked_result.is_err() {
            break;
        }
    }
    assert_eq!(whole_result, chunked_result);
    assert_eq!(whole.items(), chunked.items());

    // The byte cap holds whatever the content.
    let cap = body.len() / 2;
    let mut capped = BodyScan::new(cap, None);
    let over = body.chunks(step).any(|part| capped.feed(part).is_err());
    assert_eq!(over, body.len() > cap);
});
