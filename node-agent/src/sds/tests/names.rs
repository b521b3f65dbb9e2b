//! Which SDS resource a name asks for.

use super::*;

#[test]
fn names_are_classified_like_istio_and_spire_do() {
    let td = |s: &str| Name::TrustDomain(TrustDomain::new(s).unwrap());
    let cases = [
        ("default", Name::DefaultSvid),
        ("ROOTCA", Name::RootCa),
        ("ALL", Name::AllBundles),
        ("example.org", td("example.org")),
        ("spiffe://example.org", td("example.org")),
        (WEB, Name::Svid(SpiffeId::parse(WEB).unwrap())),
        ("Default", Name::Unknown),
        ("file-cert:/etc/cert.pem~/etc/key.pem", Name::Unknown),
        ("spiffe://Example.org/web", Name::Unknown),
        ("", Name::Unknown),
    ];
    for (name, want) in cases {
        assert_eq!(Name::classify(name), want, "{name:?}");
    }
}
