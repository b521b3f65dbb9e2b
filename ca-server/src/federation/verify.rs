//! How the poller authenticates a bundle endpoint (Federation standard,
//! section 5.2): `https_web` with Web PKI roots and the URL's hostname;
//! `https_spiffe` with the remote trust domain's own bundle (the out-of-band
//! one first, then the last one fetched) and the configured endpoint SPIFFE
//! ID, with no hostname check.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use signet_identity::{SpiffeId, TrustBundle};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{FederationError, Profile};

/// The root store for https_web: `pem` when given, else the Mozilla roots
/// that webpki-roots carries (the same set on every machine, unlike the
/// system's).
///
/// # Errors
/// [`FederationError::WebRoots`] when `pem` holds no usable certificate.
pub fn web_roots(pem: Option<&[u8]>) -> Result<RootCertStore, FederationError> {
    let mut store = RootCertStore::empty();
    match pem {
        None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| FederationError::WebRoots(e.to_string()))?;
                store
                    .add(cert)
                    .map_err(|e| FederationError::WebRoots(e.to_string()))?;
            }
            if store.is_empty() {
                return Err(FederationError::WebRoots(
                    "no certificate in the PEM".into(),
                ));
            }
        }
    }
    Ok(store)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS client configuration for one fetch of `profile`, trusting
/// `anchors` (the remote's last good bundle, or its initial one) for
/// https_spiffe.
///
/// # Errors
/// Unusable roots, or rustls refusing the configuration.
pub fn client_config(
    profile: &Profile,
    anchors: &TrustBundle,
) -> Result<Arc<ClientConfig>, FederationError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| FederationError::Endpoint(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match profile {
        Profile::HttpsWeb { roots_pem } => {
            let roots = web_roots(roots_pem.as_deref())?;
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| FederationError::WebRoots(e.to_string()))?
        }
        Profile::HttpsSpiffe { endpoint_id, .. } => Arc::new(SpiffeServerVerifier {
            anchors: anchors.clone(),
            expected: endpoint_id.clone(),
            algs: provider.signature_verification_algorithms,
        }),
    };
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Checks the endpoint's certificate as an X509-SVID of the remote trust
/// domain carrying the expected SPIFFE ID.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    anchors: TrustBundle,
    expected: SpiffeId,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    /// Verifies `chain` (leaf first) at `now`.
    ///
    /// # Errors
    /// A message naming the rule that failed.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), String> {
        let anchors = self
            .anchors
            .x509_authorities()
            .iter()
            .filter_map(|der| webpki::anchor_from_trusted_cert(der).ok())
            .collect::<Vec<_>>();
        if anchors.is_empty() {
            return Err(format!(
                "no usable X.509 authority of {} to check the endpoint with",
                self.anchors.trust_domain()
            ));
        }
        let ee = EndEntityCert::try_from(end_entity)
            .map_err(|e| format!("endpoint certificate: {e:?}"))?;
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            now,
            KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            format!(
                "endpoint certificate does not chain to the bundle of {}: {e:?}",
                self.anchors.trust_domain()
            )
        })?;
        let (_, cert) = X509Certificate::from_der(end_entity)
            .map_err(|e| format!("endpoint certificate: {e}"))?;
        let uris: Vec<&str> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::URI(u) => Some(*u),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        match uris.as_slice() {
            [one] if *one == self.expected.as_str() => Ok(()),
            [one] => Err(format!(
                "endpoint presents SPIFFE ID {one}, expected {}",
                self.expected
            )),
            other => Err(format!(
                "endpoint certificate must carry exactly one URI SAN, found {}",
                other.len()
            )),
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // No hostname check: the SPIFFE ID is the endpoint's name.
        self.check(end_entity, intermediates, now)
            .map(|()| ServerCertVerified::assertion())
            .map_err(rustls::Error::General)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
