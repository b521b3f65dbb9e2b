//! SPIFFE ID parsing on arbitrary text: whatever parses must print back to the
//! same text, parse again to an equal value, and rebuild from its parts.

#![no_main]

use libfuzzer_sys::fuzz_target;
use signet_identity::{SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    // Trust domain names have their own parser; it must not panic either.
    let _ = TrustDomain::new(input);

    let Ok(id) = SpiffeId::parse(input) else {
        return;
    };
    let printed = id.to_string();
    assert_eq!(printed, input, "a parsed id prints as its input");
    assert_eq!(SpiffeId::parse(&printed).as_ref(), Ok(&id));

    let td = id.trust_domain();
    assert!(id.is_member_of(td));
    assert_eq!(TrustDomain::new(td.as_str()).as_ref(), Ok(td));
    assert_eq!(TrustDomain::new(&td.id_string()).as_ref(), Ok(td));
    assert_eq!(SpiffeId::from_path(td, id.path()).as_ref(), Ok(&id));
    let segments: Vec<&str> = id.path().split('/').skip(1).collect();
    assert_eq!(SpiffeId::from_segments(td, &segments).as_ref(), Ok(&id));
});
