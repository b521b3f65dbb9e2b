//! The `[bundle_endpoint]` and `[[federation]]` tables of signet-ca's
//! configuration file, read and checked (files included) before anything
//! starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use signet_identity::TrustDomain;

use super::{FederationError, NewRelationship, ProfileKind, Relationship};

/// Default `spiffe_refresh_hint` of the served bundle (the standard's
/// suggested polling interval).
pub const DEFAULT_REFRESH_HINT: Duration = Duration::from_secs(300);

/// `[bundle_endpoint]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleEndpointSettings {
    pub listen: SocketAddr,
    /// `https_spiffe` (default) or `https_web`.
    pub profile: Option<String>,
    /// https_web: PEM certificate chain.
    pub cert_file: Option<PathBuf>,
    /// https_web: PEM private key.
    pub key_file: Option<PathBuf>,
    /// `spiffe_refresh_hint` served, e.g. "5m".
    pub refresh_hint: Option<String>,
}

/// `[[federation]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationSettings {
    pub trust_domain: String,
    pub bundle_endpoint_url: String,
    pub profile: String,
    pub endpoint_spiffe_id: Option<String>,
    /// https_spiffe: the remote's bundle obtained out of band (JWKS or PEM).
    pub bundle_file: Option<PathBuf>,
    /// https_web: PEM roots instead of the built-in Web PKI roots.
    pub web_roots_file: Option<PathBuf>,
}

/// How the bundle endpoint authenticates itself.
#[derive(Clone)]
pub enum EndpointTls {
    /// The CA's own X509-SVID (`spiffe://<td>/signet/ca`).
    Spiffe,
    /// A configured Web PKI certificate.
    Web(Arc<CertifiedKey>),
}

/// The checked `[bundle_endpoint]`.
#[derive(Clone)]
pub struct BundleEndpoint {
    pub listen: SocketAddr,
    pub tls: EndpointTls,
    pub refresh_hint: Duration,
}

impl std::fmt::Debug for BundleEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        let profile = match self.tls {
            EndpointTls::Spiffe => "https_spiffe",
            EndpointTls::Web(_) => "https_web",
        };
        f.debug_struct("BundleEndpoint")
            .field("listen", &self.listen)
            .field("profile", &profile)
            .field("refresh_hint", &self.refresh_hint)
            .finish()
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, FederationError> {
    std::fs::read(path).map_err(|source| FederationError::ReadFile {
        path: path.clone(),
        source,
    })
}

impl BundleEndpointSettings {
    /// Checks the settings and loads the https_web certificate and key.
    ///
    /// # Errors
    /// [`FederationError`] naming the setting.
    pub fn check(&self) -> Result<BundleEndpoint, FederationError> {
        let refresh_hint = match &self.refresh_hint {
            None => DEFAULT_REFRESH_HINT,
            Some(s) => humantime::parse_duration(s)
                .map_err(|e| FederationError::Endpoint(format!("refresh_hint {s:?}: {e}")))?,
        };
        if refresh_hint < Duration::from_secs(1) || refresh_hint > Duration::from_secs(7 * 86_400) {
            return Err(FederationError::Endpoint(
                "refresh_hint must be between 1s and 7d".into(),
            ));
        }
        let profile = ProfileKind::parse(self.profile.as_deref().unwrap_or("https_spiffe"))?;
        let tls = match (profile, &self.cert_file, &self.key_file) {
            (ProfileKind::HttpsSpiffe, None, None) => EndpointTls::Spiffe,
            (ProfileKind::HttpsSpiffe, _, _) => {
                return Err(FederationError::Endpoint(
                    "https_spiffe serves the CA's own SVID: cert_file and key_file are for https_web".into(),
                ));
            }
            (ProfileKind::HttpsWeb, Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_slice_iter(&read(cert)?)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| FederationError::Endpoint(format!("{}: {e}", cert.display())))?;
                if chain.is_empty() {
                    return Err(FederationError::Endpoint(format!(
                        "{}: no certificate",
                        cert.display()
                    )));
                }
                let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
                    .map_err(|e| FederationError::Endpoint(format!("{}: {e}", key.display())))?;
                let signer = rustls::crypto::ring::sign::any_supported_type(&key_der)
                    .map_err(|e| FederationError::Endpoint(format!("{}: {e}", key.display())))?;
                let certified = CertifiedKey::new(chain, signer);
                certified.keys_match().map_err(|e| {
                    FederationError::Endpoint(format!("cert_file and key_file: {e}"))
                })?;
                EndpointTls::Web(Arc::new(certified))
            }
            (ProfileKind::HttpsWeb, _, _) => {
                return Err(FederationError::Endpoint(
                    "https_web needs cert_file and key_file".into(),
                ));
            }
        };
        Ok(BundleEndpoint {
            listen: self.listen,
            tls,
            refresh_hint,
        })
    }
}

/// Checks the `[[federation]]` tables (files included).
///
/// # Errors
/// The first table that breaks a rule, or two tables for one trust domain.
pub fn relationships(
    tables: &[FederationSettings],
    own: &TrustDomain,
) -> Result<Vec<Relationship>, FederationError> {
    if tables.len() > super::MAX_RELATIONSHIPS {
        return Err(FederationError::TooMany);
    }
    let mut out: Vec<Relationship> = Vec::with_capacity(tables.len());
    for t in tables {
        let new = NewRelationship {
            trust_domain: t.trust_domain.clone(),
            url: t.bundle_endpoint_url.clone(),
            profile: t.profile.clone(),
            endpoint_spiffe_id: t.endpoint_spiffe_id.clone().unwrap_or_default(),
            initial_bundle: t
                .bundle_file
                .as_ref()
                .map(read)
                .transpose()?
                .unwrap_or_default(),
            web_roots_pem: t
                .web_roots_file
                .as_ref()
                .map(read)
                .transpose()?
                .unwrap_or_default(),
        };
        let rel = new.check(own, true)?;
        if out.iter().any(|r| r.trust_domain == rel.trust_domain) {
            return Err(FederationError::AlreadyExists(rel.trust_domain));
        }
        out.push(rel);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(toml_text: &str) -> Result<BundleEndpoint, FederationError> {
        #[derive(Deserialize)]
        struct File {
            bundle_endpoint: BundleEndpointSettings,
        }
        let f: File = toml::from_str(toml_text).unwrap();
        f.bundle_endpoint.check()
    }

    #[test]
    fn bundle_endpoint_defaults_and_refusals() {
        let ok = endpoint("[bundle_endpoint]\nlisten = \"127.0.0.1:8444\"\n").unwrap();
        assert!(matches!(ok.tls, EndpointTls::Spiffe));
        assert_eq!(ok.refresh_hint, DEFAULT_REFRESH_HINT);
        for bad in [
            "listen = \"127.0.0.1:1\"\nprofile = \"https_web\"\n",
            "listen = \"127.0.0.1:1\"\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n",
            "listen = \"127.0.0.1:1\"\nprofile = \"http\"\n",
            "listen = \"127.0.0.1:1\"\nrefresh_hint = \"0s\"\n",
            "listen = \"127.0.0.1:1\"\nrefresh_hint = \"soon\"\n",
            "listen = \"127.0.0.1:1\"\nprofile = \"https_web\"\ncert_file = \"/nonexistent/c.pem\"\nkey_file = \"/nonexistent/k.pem\"\n",
        ] {
            assert!(
                endpoint(&format!("[bundle_endpoint]\n{bad}")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn two_tables_for_one_trust_domain_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let roots = dir.path().join("roots.pem");
        let ca = signet_identity::testing::TestCa::new(TrustDomain::new("web.example").unwrap())
            .unwrap();
        std::fs::write(&roots, ca.bundle().to_pem()).unwrap();
        let table = FederationSettings {
            trust_domain: "remote.org".into(),
            bundle_endpoint_url: "https://remote.org/".into(),
            profile: "https_web".into(),
            endpoint_spiffe_id: None,
            bundle_file: None,
            web_roots_file: Some(roots),
        };
        let own = TrustDomain::new("test.org").unwrap();
        assert_eq!(
            relationships(std::slice::from_ref(&table), &own)
                .unwrap()
                .len(),
            1
        );
        assert!(matches!(
            relationships(&[table.clone(), table], &own),
            Err(FederationError::AlreadyExists(_))
        ));
    }

    #[test]
    fn an_https_web_endpoint_loads_its_certificate_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = signet_identity::testing::TestCa::new(TrustDomain::new("web.example").unwrap())
            .unwrap();
        let key =
            signet_identity::PrivateKey::generate(signet_identity::KeyType::EcdsaP256).unwrap();
        let issued = ca
            .issue_for(
                &key,
                &signet_identity::SpiffeId::parse("spiffe://web.example/endpoint").unwrap(),
                &["localhost"],
                std::time::SystemTime::now(),
                Duration::from_secs(600),
            )
            .unwrap();
        let (cert, key_file) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let pem: String = issued
            .chain
            .iter()
            .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
            .collect();
        std::fs::write(&cert, pem).unwrap();
        std::fs::write(&key_file, key.to_pem().as_bytes()).unwrap();
        let text = format!(
            "[bundle_endpoint]\nlisten = \"127.0.0.1:1\"\nprofile = \"https_web\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nrefresh_hint = \"1m\"\n",
            cert.display(),
            key_file.display()
        );
        let e = endpoint(&text).unwrap();
        assert!(matches!(e.tls, EndpointTls::Web(_)));
        assert_eq!(e.refresh_hint, Duration::from_secs(60));
        assert!(!format!("{e:?}").contains("PRIVATE"));
        // A key that is not the certificate's is refused.
        let other =
            signet_identity::PrivateKey::generate(signet_identity::KeyType::EcdsaP256).unwrap();
        std::fs::write(&key_file, other.to_pem().as_bytes()).unwrap();
        assert!(endpoint(&text).is_err());
    }
}
