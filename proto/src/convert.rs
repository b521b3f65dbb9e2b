//! Conversions between the wire messages and the identity crate's types,
//! written once for every side of the wire: the CA sends bundles, the agent
//! and the CLI receive them.

use std::time::Duration;

use rustls_pki_types::CertificateDer;
use signet_identity::{BundleError, JwtAuthority, TrustBundle, TrustDomain};

use crate::ca::v1 as pb;

/// Why a `Bundle` message is not a usable trust bundle.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum BundleMessageError {
    /// `trust_domain` is not a valid trust domain name.
    #[error("invalid trust domain {name:?}: {source}")]
    TrustDomain {
        name: String,
        source: signet_identity::SpiffeIdError,
    },
    /// An X.509 authority does not parse or is not a usable CA.
    #[error("unusable x.509 authority: {0}")]
    X509Authority(#[source] BundleError),
    /// A JWT authority's key is unusable.
    #[error("unusable jwt authority {key_id:?}: {source}")]
    JwtAuthority { key_id: String, source: BundleError },
    /// Two JWT authorities share a key id.
    #[error("conflicting jwt authorities: {0}")]
    JwtConflict(#[source] BundleError),
}

/// The wire form of `bundle`. A JWT authority without expiry is sent with
/// `expires_at` 0, no refresh hint as 0.
#[must_use]
pub fn bundle_to_pb(bundle: &TrustBundle) -> pb::Bundle {
    pb::Bundle {
        trust_domain: bundle.trust_domain().to_string(),
        x509_authorities: bundle
            .x509_authorities()
            .iter()
            .map(|c| c.to_vec())
            .collect(),
        jwt_authorities: bundle
            .jwt_authorities()
            .iter()
            .map(|j| pb::JwtAuthority {
                key_id: j.key_id().to_owned(),
                public_key: j.public_key().to_vec(),
                expires_at: j.expires_at().unwrap_or(0),
            })
            .collect(),
        sequence: bundle.sequence(),
        refresh_hint_seconds: bundle
            .refresh_hint()
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        ..pb::Bundle::default()
    }
}

/// The bundle a `Bundle` message carries, every authority checked on the
/// way: a peer's bug must not become a bundle that trusts the wrong thing.
/// The exact inverse of [`bundle_to_pb`]: `expires_at` 0 means no expiry,
/// a refresh hint of 0 (or below) none.
///
/// # Errors
/// The first field that is not usable, as a [`BundleMessageError`].
pub fn bundle_from_pb(message: &pb::Bundle) -> Result<TrustBundle, BundleMessageError> {
    let trust_domain = TrustDomain::new(&message.trust_domain).map_err(|source| {
        BundleMessageError::TrustDomain {
            name: message.trust_domain.clone(),
            source,
        }
    })?;
    let mut bundle = TrustBundle::new(trust_domain)
        .with_x509_authorities(
            message
                .x509_authorities
                .iter()
                .map(|der| CertificateDer::from(der.clone())),
        )
        .map_err(BundleMessageError::X509Authority)?;
    for jwt in &message.jwt_authorities {
        let mut authority =
            JwtAuthority::new(jwt.key_id.clone(), &jwt.public_key).map_err(|source| {
                BundleMessageError::JwtAuthority {
                    key_id: jwt.key_id.clone(),
                    source,
                }
            })?;
        if jwt.expires_at != 0 {
            authority = authority.with_expires_at(jwt.expires_at);
        }
        bundle
            .add_jwt_authority(authority)
            .map_err(BundleMessageError::JwtConflict)?;
    }
    bundle.set_sequence(message.sequence);
    bundle.set_refresh_hint(optional_seconds(message.refresh_hint_seconds));
    Ok(bundle)
}

/// A duration field of a request where 0 means "the server's default": the
/// duration when positive, `None` for 0 and for negative values.
#[must_use]
pub fn optional_seconds(seconds: i64) -> Option<Duration> {
    u64::try_from(seconds)
        .ok()
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use signet_identity::testing::TestCa;
    use signet_identity::{KeyType, PrivateKey};

    fn sample() -> TrustBundle {
        let ca = TestCa::new(TrustDomain::new("example.org").unwrap()).unwrap();
        let mut bundle = ca.bundle().clone();
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let forever = JwtAuthority::new("k1", &key.public_key_spki()).unwrap();
        let until = JwtAuthority::new("k2", &key.public_key_spki())
            .unwrap()
            .with_expires_at(1_900_000_000);
        bundle.add_jwt_authority(forever).unwrap();
        bundle.add_jwt_authority(until).unwrap();
        bundle.set_sequence(7);
        bundle.set_refresh_hint(Some(Duration::from_secs(300)));
        bundle
    }

    #[test]
    fn a_bundle_survives_the_wire() {
        let bundle = sample();
        let message = bundle_to_pb(&bundle);
        assert_eq!(message.trust_domain, "example.org");
        assert_eq!(message.jwt_authorities[0].expires_at, 0);
        assert_eq!(message.jwt_authorities[1].expires_at, 1_900_000_000);
        assert_eq!(message.refresh_hint_seconds, 300);
        assert_eq!(bundle_from_pb(&message).unwrap(), bundle);

        let mut no_hint = bundle.clone();
        no_hint.set_refresh_hint(None);
        let message = bundle_to_pb(&no_hint);
        assert_eq!(message.refresh_hint_seconds, 0);
        assert_eq!(bundle_from_pb(&message).unwrap(), no_hint);
    }

    #[test]
    fn unusable_messages_are_refused_by_field() {
        let good = bundle_to_pb(&sample());
        let bad_td = pb::Bundle {
            trust_domain: "Not Valid".into(),
            ..good.clone()
        };
        assert!(matches!(
            bundle_from_pb(&bad_td),
            Err(BundleMessageError::TrustDomain { .. })
        ));
        let mut bad_x509 = good.clone();
        bad_x509
            .x509_authorities
            .push(b"not a certificate".to_vec());
        assert!(matches!(
            bundle_from_pb(&bad_x509),
            Err(BundleMessageError::X509Authority(_))
        ));
        let mut bad_jwt = good.clone();
        bad_jwt.jwt_authorities[0].public_key = vec![1, 2, 3];
        let err = bundle_from_pb(&bad_jwt).unwrap_err();
        assert!(
            matches!(&err, BundleMessageError::JwtAuthority { key_id, .. } if key_id == "k1"),
            "{err}"
        );
        let mut twice = good.clone();
        twice.jwt_authorities[1].key_id = "k1".into();
        twice.jwt_authorities[1].public_key = PrivateKey::generate(KeyType::EcdsaP256)
            .unwrap()
            .public_key_spki();
        assert!(matches!(
            bundle_from_pb(&twice),
            Err(BundleMessageError::JwtConflict(_))
        ));
    }

    #[test]
    fn optional_seconds_table() {
        let rows: &[(i64, Option<u64>)] = &[
            (0, None),
            (-1, None),
            (i64::MIN, None),
            (1, Some(1)),
            (3_600, Some(3_600)),
            (i64::MAX, Some(i64::MAX as u64)),
        ];
        for (input, want) in rows {
            assert_eq!(
                optional_seconds(*input),
                want.map(Duration::from_secs),
                "{input}"
            );
        }
    }
}
