//! Trust bundle parsing (PEM or JWK Set, sniffed) on arbitrary bytes: whatever
//! parses must survive a trip through the JWK Set form unchanged, and its
//! X.509 authorities a trip through PEM.

#![no_main]

use libfuzzer_sys::fuzz_target;
use signet_identity::bundle::MAX_BUNDLE_LEN;
use signet_identity::{TrustBundle, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(td) = TrustDomain::new("example.org") else {
        return;
    };
    let Ok(bundle) = TrustBundle::parse(td.clone(), data) else {
        return;
    };

    let jwks = bundle.to_jwks();
    // The written form can outgrow the input limit (pretty printing, JWK key
    // members); such a bundle is not expected to read back.
    if jwks.len() <= MAX_BUNDLE_LEN {
        let again = match TrustBundle::from_jwks(td.clone(), jwks.as_bytes()) {
            Ok(again) => again,
            Err(e) => panic!("a written JWK Set does not read back: {e}\n{jwks}"),
        };
        assert_eq!(again.x509_authorities(), bundle.x509_authorities());
        assert_eq!(again, bundle);
    }

    if !bundle.x509_authorities().is_empty() {
        let pem = bundle.to_pem();
        if pem.len() <= MAX_BUNDLE_LEN {
            let again = match TrustBundle::from_pem(td, pem.as_bytes()) {
                Ok(again) => again,
                Err(e) => panic!("written PEM does not read back: {e}\n{pem}"),
            };
            assert_eq!(again.x509_authorities(), bundle.x509_authorities());
        }
    }
});
