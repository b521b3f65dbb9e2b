//! CSR intake on arbitrary bytes: the CA's first contact with a request must
//! reject garbage with an error, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use signet_identity::x509::csr::VerifiedCsr;

fuzz_target!(|data: &[u8]| {
    let _ = VerifiedCsr::from_der(data);
});
