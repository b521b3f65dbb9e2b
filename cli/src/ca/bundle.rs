//! `signet ca bundle ...`, and the bundle message checked into the identity
//! crate's type (also used by `signet ca mint`).

use std::time::Duration;

use anyhow::Context as _;
use signet_identity::{JwtAuthority, TrustBundle, TrustDomain};
use signet_proto::ca::v1 as pb;
use signet_proto::ca::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::grpc::status_error;
use crate::output;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum BundleFormat {
    Pem,
    Jwks,
}

pub(super) async fn show(
    client: &mut AdminClient<Channel>,
    format: BundleFormat,
) -> anyhow::Result<()> {
    let bundle = client
        .get_bundle(pb::GetBundleRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let bundle = trust_bundle(bundle)?;
    match format {
        BundleFormat::Pem => output::print(&bundle.to_pem()),
        BundleFormat::Jwks => output::print(&format!("{}\n", bundle.to_jwks())),
    }
}

/// The identity crate's bundle for the wire message, checked on the way: a
/// server bug must not turn into a bundle file that trusts the wrong thing.
pub(super) fn trust_bundle(message: pb::Bundle) -> anyhow::Result<TrustBundle> {
    let trust_domain = TrustDomain::new(&message.trust_domain).with_context(|| {
        format!(
            "server sent an invalid trust domain {:?}",
            message.trust_domain
        )
    })?;
    let mut bundle = TrustBundle::new(trust_domain)
        .with_x509_authorities(
            message
                .x509_authorities
                .into_iter()
                .map(rustls_pki_types::CertificateDer::from),
        )
        .context("server sent an unusable X.509 authority")?;
    for jwt in message.jwt_authorities {
        let mut authority = JwtAuthority::new(jwt.key_id.clone(), &jwt.public_key)
            .with_context(|| format!("server sent an unusable JWT authority {:?}", jwt.key_id))?;
        if jwt.expires_at != 0 {
            authority = authority.with_expires_at(jwt.expires_at);
        }
        bundle
            .add_jwt_authority(authority)
            .context("server sent conflicting JWT authorities")?;
    }
    bundle.set_sequence(message.sequence);
    if let Ok(hint @ 1..) = u64::try_from(message.refresh_hint_seconds) {
        bundle.set_refresh_hint(Some(Duration::from_secs(hint)));
    }
    Ok(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use signet_identity::{KeyType, PrivateKey};

    #[test]
    fn bundle_message_becomes_a_trust_bundle() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).unwrap();
        let jwt_key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let message = pb::Bundle {
            trust_domain: "example.org".into(),
            x509_authorities: vec![root.der().to_vec()],
            jwt_authorities: vec![pb::JwtAuthority {
                key_id: "k1".into(),
                public_key: jwt_key.public_key_spki(),
                expires_at: 0,
            }],
            sequence: 7,
            refresh_hint_seconds: 300,
        };
        let bundle = trust_bundle(message).unwrap();
        assert_eq!(bundle.trust_domain().as_str(), "example.org");
        assert_eq!(bundle.x509_authorities().len(), 1);
        assert_eq!(bundle.jwt_authorities()[0].key_id(), "k1");
        assert_eq!(bundle.sequence(), 7);
        assert_eq!(bundle.refresh_hint(), Some(Duration::from_secs(300)));

        let bad = pb::Bundle {
            trust_domain: "Not Valid".into(),
            ..Default::default()
        };
        assert!(trust_bundle(bad).is_err());
    }
}
