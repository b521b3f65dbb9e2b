//! The trust bundles the Workload API serves, as PEM or as SPIFFE bundles.

use std::collections::BTreeMap;

use anyhow::{Context as _, anyhow, bail};
use signet_identity::{TrustBundle, TrustDomain};
use signet_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, X509BundlesRequest, X509BundlesResponse,
};

use super::client::{self, Client, request};
use super::svid::split_der;
use crate::output;

/// How `bundle show` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BundleFormat {
    /// The X.509 authorities as PEM certificates.
    Pem,
    /// A SPIFFE bundle (JWK Set) with the X.509 and the JWT authorities.
    Jwks,
}

/// `signet agent bundle show`.
///
/// # Errors
/// A failed call, a bundle that does not parse, or a choice of trust domain
/// the agent does not serve.
pub async fn show(
    client: &mut Client,
    format: BundleFormat,
    trust_domain: Option<&TrustDomain>,
) -> anyhow::Result<()> {
    const X509: &str = "FetchX509Bundles";
    let mut stream = client::call(
        X509,
        client.fetch_x509_bundles(request(X509BundlesRequest {})),
    )
    .await?;
    let x509 = client::first(X509, &mut stream).await?;
    let jwt = match format {
        BundleFormat::Pem => None,
        BundleFormat::Jwks => {
            const JWT: &str = "FetchJWTBundles";
            let mut stream =
                client::call(JWT, client.fetch_jwt_bundles(request(JwtBundlesRequest {}))).await?;
            Some(client::first(JWT, &mut stream).await?)
        }
    };
    let bundles = bundles_from(x509, jwt)?;
    output::print(&render(&bundles, format, trust_domain)?)
}

/// One bundle per trust domain, from the X.509 bundles and, when given, the
/// JWT bundles, both keyed by the trust domain's SPIFFE ID.
fn bundles_from(
    x509: X509BundlesResponse,
    jwt: Option<JwtBundlesResponse>,
) -> anyhow::Result<BTreeMap<TrustDomain, TrustBundle>> {
    let mut bundles = BTreeMap::new();
    for (key, der) in x509.bundles {
        let td = trust_domain_of(&key)?;
        let certs = split_der(&der).with_context(|| format!("X.509 bundle of {key}"))?;
        let bundle = TrustBundle::new(td.clone())
            .with_x509_authorities(certs)
            .with_context(|| format!("X.509 bundle of {key}"))?;
        bundles.insert(td, bundle);
    }
    for (key, jwks) in jwt.map(|j| j.bundles).unwrap_or_default() {
        let td = trust_domain_of(&key)?;
        let parsed = TrustBundle::from_jwks(td.clone(), &jwks)
            .with_context(|| format!("JWT bundle of {key}"))?;
        let bundle = bundles
            .entry(td.clone())
            .or_insert_with(|| TrustBundle::new(td));
        for authority in parsed.jwt_authorities() {
            bundle
                .add_jwt_authority(authority.clone())
                .with_context(|| format!("JWT bundle of {key}"))?;
        }
        bundle.set_sequence(parsed.sequence());
        bundle.set_refresh_hint(parsed.refresh_hint());
    }
    Ok(bundles)
}

fn trust_domain_of(key: &str) -> anyhow::Result<TrustDomain> {
    TrustDomain::new(key)
        .with_context(|| format!("the server keyed a bundle by {key:?}, not a trust domain"))
}

fn render(
    bundles: &BTreeMap<TrustDomain, TrustBundle>,
    format: BundleFormat,
    only: Option<&TrustDomain>,
) -> anyhow::Result<String> {
    let chosen: Vec<&TrustBundle> = match only {
        Some(td) => vec![bundles.get(td).ok_or_else(|| {
            anyhow!(
                "the Workload API serves no bundle for {td}; it serves {}",
                served(bundles)
            )
        })?],
        None => bundles.values().collect(),
    };
    match (format, chosen.as_slice()) {
        (_, []) => bail!("the Workload API serves no bundle"),
        (BundleFormat::Jwks, [one]) => Ok(format!("{}\n", one.to_jwks())),
        (BundleFormat::Jwks, _) => bail!(
            "the Workload API serves bundles of {}; choose one with --trust-domain",
            served(bundles)
        ),
        (BundleFormat::Pem, [one]) => Ok(one.to_pem()),
        // PEM allows text between blocks: say whose each group is.
        (BundleFormat::Pem, many) => Ok(many
            .iter()
            .map(|b| format!("# {}\n{}", b.trust_domain().id_string(), b.to_pem()))
            .collect()),
    }
}

fn served(bundles: &BTreeMap<TrustDomain, TrustBundle>) -> String {
    bundles
        .keys()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use signet_identity::testing::TestCa;
    use signet_identity::{JwtAuthority, KeyType, PrivateKey};

    fn root(td: &str) -> Vec<u8> {
        TestCa::new(TrustDomain::new(td).unwrap())
            .unwrap()
            .root()
            .to_vec()
    }

    fn jwks(td: &str, kid: &str, sequence: u64) -> Vec<u8> {
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let mut bundle = TrustBundle::new(TrustDomain::new(td).unwrap());
        bundle
            .add_jwt_authority(JwtAuthority::new(kid, &key.public_key_spki()).unwrap())
            .unwrap();
        bundle.set_sequence(sequence);
        bundle.to_jwks().into_bytes()
    }

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    #[test]
    fn x509_and_jwt_bundles_join_per_trust_domain() {
        let (a1, a2) = (root("a.org"), root("a.org"));
        let x509 = X509BundlesResponse {
            crl: vec![],
            bundles: HashMap::from([
                (
                    "spiffe://a.org".to_owned(),
                    [a1.clone(), a2.clone()].concat(),
                ),
                ("spiffe://b.org".to_owned(), root("b.org")),
            ]),
        };
        let jwt = JwtBundlesResponse {
            bundles: HashMap::from([("spiffe://a.org".to_owned(), jwks("a.org", "k1", 9))]),
        };
        let bundles = bundles_from(x509, Some(jwt)).unwrap();
        let a = &bundles[&td("a.org")];
        assert_eq!(a.x509_authorities().len(), 2);
        assert_eq!(a.x509_authorities()[0].as_ref(), a1.as_slice());
        assert_eq!(a.jwt_authorities()[0].key_id(), "k1");
        assert_eq!(a.sequence(), 9);
        assert!(bundles[&td("b.org")].jwt_authorities().is_empty());

        let one = render(&bundles, BundleFormat::Jwks, Some(&td("a.org"))).unwrap();
        let parsed = TrustBundle::from_jwks(td("a.org"), one.as_bytes()).unwrap();
        assert_eq!(parsed.x509_authorities().len(), 2);
        assert_eq!(parsed.jwt_authorities().len(), 1);

        let err = render(&bundles, BundleFormat::Jwks, None).unwrap_err();
        assert!(err.to_string().contains("--trust-domain"), "{err}");
        let err = render(&bundles, BundleFormat::Pem, Some(&td("c.org"))).unwrap_err();
        assert!(err.to_string().contains("a.org, b.org"), "{err}");

        let pem = render(&bundles, BundleFormat::Pem, None).unwrap();
        assert!(pem.starts_with("# spiffe://a.org\n-----BEGIN CERTIFICATE-----"));
        assert!(pem.contains("# spiffe://b.org\n"));
        assert_eq!(pem::parse_many(&pem).unwrap().len(), 3);
        let only_b = render(&bundles, BundleFormat::Pem, Some(&td("b.org"))).unwrap();
        assert!(only_b.starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn malformed_answers_are_named() {
        let bad_key = X509BundlesResponse {
            crl: vec![],
            bundles: HashMap::from([("not a td".to_owned(), root("a.org"))]),
        };
        assert!(format!("{:#}", bundles_from(bad_key, None).unwrap_err()).contains("not a td"));
        let bad_der = X509BundlesResponse {
            crl: vec![],
            bundles: HashMap::from([("spiffe://a.org".to_owned(), b"junk".to_vec())]),
        };
        let err = format!("{:#}", bundles_from(bad_der, None).unwrap_err());
        assert!(err.contains("X.509 bundle of spiffe://a.org"), "{err}");
        let empty = BTreeMap::new();
        assert!(render(&empty, BundleFormat::Pem, None).is_err());
    }
}
