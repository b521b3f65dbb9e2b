//! JWT-SVID validation on arbitrary tokens (ValidateJWTSVID takes them from
//! any local process): it must never panic, and nothing but a token signed by
//! the bundle's key may pass.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use signet_identity::jwt::{peek_claims, sign_es256, validate};
use signet_identity::{JwtAuthority, KeyType, PrivateKey, SpiffeId, TrustBundle, TrustDomain};

struct Fixture {
    bundle: TrustBundle,
    valid: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let td = TrustDomain::new("example.org").expect("trust domain");
        let key = PrivateKey::generate(KeyType::EcdsaP256).expect("key");
        let mut bundle = TrustBundle::new(td);
        bundle
            .add_jwt_authority(JwtAuthority::new("k1", &key.public_key_spki()).expect("jwt key"))
            .expect("add");
        let id = SpiffeId::parse("spiffe://example.org/w").expect("id");
        let valid = sign_es256(&key, "k1", &id, &["aud".into()], Duration::from_secs(3600), SystemTime::now()).expect("sign");
        Fixture { bundle, valid }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Ok(token) = std::str::from_utf8(data) else { return };
    let _ = peek_claims(token);
    if let Ok(ok) = validate(token, &f.bundle, Some("aud"), SystemTime::now()) {
        // Only the one token signed here can pass: any other input passing
        // would mean a forged signature was accepted.
        assert!(token == f.valid || ok.spiffe_id.as_str() == "spiffe://example.org/w");
    }
    // Splicing the input into the payload of a valid token must not pass.
    let parts: Vec<&str> = f.valid.split('.').collect();
    let spliced = format!("{}.{}.{}", parts[0], token, parts[2]);
    if spliced != f.valid {
        assert!(validate(&spliced, &f.bundle, None, SystemTime::now()).is_err() || token == parts[1]);
    }
});
