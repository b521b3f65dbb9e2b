//! A bundle fetched from another trust domain's endpoint, on arbitrary
//! bytes, after a last good bundle: whatever is accepted belongs to the
//! relationship's trust domain, holds an X.509 authority, and moves the
//! sequence forward; nothing panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use signet_identity::bundle::federated::{Update, check_update};
use signet_identity::{TrustBundle, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(td) = TrustDomain::new("remote.example") else {
        return;
    };
    // The first byte picks the last good sequence, so that both the
    // first-fetch path and the ordering rule are reached.
    let (last, body) = match data.split_first() {
        Some((0, rest)) => (None, rest),
        Some((seq, rest)) => {
            let mut last = TrustBundle::new(td.clone());
            last.set_sequence(u64::from(*seq));
            (Some(last), rest)
        }
        None => return,
    };
    match check_update(&td, last.as_ref(), body) {
        Ok(Update::Replace(b)) => {
            assert_eq!(b.trust_domain(), &td);
            assert!(!b.x509_authorities().is_empty());
            if let Some(last) = &last {
                assert!(b.sequence() > last.sequence());
            }
        }
        Ok(Update::Unchanged) => assert!(last.is_some()),
        Err(_) => {}
    }
});
