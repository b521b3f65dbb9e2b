//! Certificates, keys and helpers the bundle tests share.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::CertificateDer;
use serde_json::Value;

use super::{BundleError, JwtAuthority, TrustBundle};
use crate::spiffe_id::TrustDomain;

pub(super) use rcgen::{
    BasicConstraints, CertificateParams, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256,
    PKCS_ECDSA_P384_SHA384, PKCS_ED25519, PublicKeyData, SignatureAlgorithm,
};

/// Made with `openssl req -x509 -newkey rsa:2048`: rcgen cannot make RSA
/// keys with ring.
pub(super) const RSA_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIDFzCCAf+gAwIBAgIUb2ZV85xwmXJQ58VZWe/KlV6HexUwDQYJKoZIhvcNAQEL
BQAwGjEYMBYGA1UECgwPc2lnbmV0LXRlc3QtcnNhMCAXDTI2MTEyNTIwNTc0NloY
DzIxMjYxMTAxMjA1NzQ2WjAaMRgwFgYDVQQKDA9zaWduZXQtdGVzdC1yc2EwggEi
MA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQCoYvvKw5X4uysFlzmCZltK8Bjd
/fR5Drv+cn8hRffx7imVz5crHwDtlvv+Jyucvaiu2r3LbMckJQJJtIPNSTtltjIS
upo4/bG1sU1ItMnXTudYACuqFLEdecrXG/sd4Czpo85DVXZPT0/EWdSswmtz3P/p
CEPz9myH9RehnQD55E7VCGMD7w2WIpe0NQqNdqR4zih4bAwCZUCYskN07UrHoEOH
k9DEY/hSP/JwaEw7dC6pqDdqRrKBTcvW9DfoNwbnZbf/qtoAehpsmOfdak8CpfRl
GbbhYoxHnMdeBDVBYYklzFi8S1IjSb6YQbbyswdVqZUJCvarJ38/sof+5as1AgMB
AAGjUzBRMB0GA1UdDgQWBBRC54BIL2TBRq0H9LD/yKJbV1uHXjAfBgNVHSMEGDAW
gBRC54BIL2TBRq0H9LD/yKJbV1uHXjAPBgNVHRMBAf8EBTADAQH/MA0GCSqGSIb3
DQEBCwUAA4IBAQCRVciUrv18qpjHhnvpcMaQhtkzkUUgFzSuWK8JtMhXDivo7qlN
EvjhIbr06ZNewMuNsNKf7W3LVEzqpNiD3/RtNnaXthD/swFzdvoE4Yc4Ai50WoK8
A4DCDO9QH1NrPDU9yB/91QbtEuxoalvrw13h29/eeenPAW0i3nH/0wlrT/POndIb
VRQbJTEEZQKcRjSggK/3gbKEcR4X8CHj0LqSp9DxgsTtXWV952BeYbhZ5vYxbQGz
7HOjfoXUmAPAP8slKyPxZOELvnt92dcXm2g6S6Qz7RlW7FMid8k3bTGKqnwLXVdT
00AVhlc8+qQ27ZSVQoj3Tm9Ppl0gjhcTOylu
-----END CERTIFICATE-----
";

/// `openssl x509 -noout -modulus` of [`RSA_CA_PEM`].
pub(super) const RSA_CA_MODULUS_HEX: &str = "A862FBCAC395F8BB2B05973982665B4AF018DDFDF4790EBBFE727F2145F7F1EE2995CF972B1F00ED96FBFE272B9CBDA8AEDABDCB6CC724250249B483CD493B65B63212BA9A38FDB1B5B14D48B4C9D74EE758002BAA14B11D79CAD71BFB1DE02CE9A3CE4355764F4F4FC459D4ACC26B73DCFFE90843F3F66C87F517A19D00F9E44ED5086303EF0D962297B4350A8D76A478CE28786C0C02654098B24374ED4AC7A0438793D0C463F8523FF270684C3B742EA9A8376A46B2814DCBD6F437E83706E765B7FFAADA007A1A6C98E7DD6A4F02A5F46519B6E1628C479CC75E043541618925CC58BC4B522349BE9841B6F2B30755A995090AF6AB277F3FB287FEE5AB35";

/// Made with `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-521`
/// (ring has no P-521). Its x coordinate starts with a zero byte, which the
/// JWK must keep.
pub(super) const P521_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIICFDCCAXagAwIBAgIUEi8iHJKm6N4FSw14uet/DT8RyYUwCgYIKoZIzj0EAwIw
GzEZMBcGA1UECgwQc2lnbmV0LXRlc3QtcDUyMTAgFw0yNjExMjUyMDU3NDZaGA8y
MTI2MTEwMTIwNTc0NlowGzEZMBcGA1UECgwQc2lnbmV0LXRlc3QtcDUyMTCBmzAQ
BgcqhkjOPQIBBgUrgQQAIwOBhgAEANJXjgDMUKL6U8UOk9QceK7ZEIDxtrI1HvCQ
NJnEBXKW5Y8xgkSYRHidskHCiu4CV5NKtyuYlyoOZf0ntKFqpE5IAdVf64/sgi5F
4r2rNeGSdemaZQR8Y8Bb0j7GdFKIJ8PSjvrd/u9SrdWoJljLxrghuuANzaUhjkjH
3jIpFdI4mFA5o1MwUTAdBgNVHQ4EFgQU4/RPZ70JyM1f4MGCEFZiY/aIEVQwHwYD
VR0jBBgwFoAU4/RPZ70JyM1f4MGCEFZiY/aIEVQwDwYDVR0TAQH/BAUwAwEB/zAK
BggqhkjOPQQDAgOBiwAwgYcCQQ7l0Ftu2O3HZd/hl3YC5ppcB2XQVT6QXva5qypI
w6fn03OvGpu4zNftEJkaJsaQ/RYNMd01rBwwrrXSKzyqjNb3AkIAu4kh0frMV9iN
qG6IPcXY5R6rUg9oOyxzG7HmJtyWrJ4Uzvo81iYzSeMa8A/iw4qYL34OC+Bca8/m
yCk1jclwqG8=
-----END CERTIFICATE-----
";

/// The public point of [`P521_CA_PEM`] as `openssl ec -pubin -text` shows it.
pub(super) const P521_CA_POINT_HEX: &str = "0400d2578e00cc50a2fa53c50e93d41c78aed91080f1b6b2351ef0903499c4057296e58f31824498447\
    89db241c28aee0257934ab72b98972a0e65fd27b4a16aa44e4801d55feb8fec822e45e2bdab35e19275e99a65047c63c05bd23ec674528827\
    c3d28efaddfeef52add5a82658cbc6b821bae00dcda5218e48c7de322915d238985039";

pub(super) fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

pub(super) fn hex(text: &str) -> Vec<u8> {
    let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

pub(super) fn ca(alg: &'static SignatureAlgorithm) -> (KeyPair, CertificateDer<'static>) {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    (key, cert.der().clone())
}

pub(super) fn pem_cert(text: &str) -> CertificateDer<'static> {
    CertificateDer::from(pem::parse(text).unwrap().into_contents())
}

pub(super) fn jwks_value(bundle: &TrustBundle) -> Value {
    serde_json::from_str(&bundle.to_jwks()).unwrap()
}

pub(super) fn decode_url(value: &Value) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(value.as_str().unwrap()).unwrap()
}

/// Two P-256 roots and one P-256 JWT key, sequence 7, hint 300 s.
pub(super) fn sample() -> (TrustBundle, Vec<KeyPair>) {
    let (key1, root1) = ca(&PKCS_ECDSA_P256_SHA256);
    let (key2, root2) = ca(&PKCS_ECDSA_P256_SHA256);
    let jwt_key = KeyPair::generate().unwrap();
    let mut bundle = TrustBundle::new(td())
        .with_x509_authorities([root1, root2])
        .unwrap();
    let jwt = JwtAuthority::new("key-1", &jwt_key.subject_public_key_info()).unwrap();
    assert!(bundle.add_jwt_authority(jwt).unwrap());
    bundle.set_sequence(7);
    bundle.set_refresh_hint(Some(Duration::from_secs(300)));
    (bundle, vec![key1, key2, jwt_key])
}

/// A JWK Set with the given keys, for hand-made inputs.
pub(super) fn set_of(keys: Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap()
}

pub(super) fn x509_jwk(cert: &CertificateDer<'_>) -> Value {
    let bundle = TrustBundle::new(td())
        .with_x509_authorities([cert.clone().into_owned()])
        .unwrap();
    jwks_value(&bundle)["keys"][0].clone()
}

pub(super) fn key_error(bytes: &[u8]) -> BundleError {
    match TrustBundle::from_jwks(td(), bytes) {
        Err(BundleError::InKey { error, .. }) => *error,
        other => panic!("expected a key error, got {other:?}"),
    }
}
