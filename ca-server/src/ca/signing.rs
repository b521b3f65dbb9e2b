//! The signing state, its rotation, and the list of authorities shown to
//! operators. The state is swapped whole; readers take an `Arc` clone and
//! never wait for a rotation.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use signet_identity::x509::SigningAuthority;

use super::authorities::{self, JwtKey, cert_id};
use super::time::unix;
use super::{Ca, CaError};
use crate::store::{AuthorityKind, AuthorityState};

/// What the CA signs with.
pub struct Signing {
    /// Signs intermediates.
    pub parent: Arc<SigningAuthority>,
    /// Signs SVIDs.
    pub signer: Arc<SigningAuthority>,
    /// The roots of the bundle.
    pub anchors: Vec<CertificateDer<'static>>,
    /// Signs JWT-SVIDs.
    pub jwt: Arc<JwtKey>,
}

/// A signing authority as listed for operators.
#[derive(Debug, Clone)]
pub struct AuthorityInfo {
    pub id: String,
    pub kind: AuthorityKind,
    pub state: AuthorityState,
    /// DER certificate, or DER SubjectPublicKeyInfo for a JWT key.
    pub der: Vec<u8>,
    pub not_before: i64,
    pub not_after: i64,
}

impl Ca {
    fn install(&self, next: Signing) {
        *self
            .signing
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(next);
    }

    /// Rotates the intermediate and the JWT key each when half its life has
    /// passed. Called periodically; a new authority is self-tested before it
    /// replaces the old one, which stays in place on any failure.
    ///
    /// # Errors
    /// Rotation failures.
    pub fn rotate_if_due(&self) -> Result<bool, CaError> {
        let _writer = self
            .rotation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = self.now();
        let current = self.signing();
        let rotate_x509 = authorities::needs_rotation(&current.signer, now);
        let rotate_jwt = current.jwt.needs_rotation(now);
        if !rotate_x509 && !rotate_jwt {
            return Ok(false);
        }
        let signer = if rotate_x509 {
            Arc::new(
                self.keys
                    .create_signer(&current.parent, &current.anchors, now)?,
            )
        } else {
            current.signer.clone()
        };
        let jwt = if rotate_jwt {
            Arc::new(self.keys.create_jwt(now, "ca")?)
        } else {
            current.jwt.clone()
        };
        self.install(Signing {
            parent: current.parent.clone(),
            signer,
            anchors: current.anchors.clone(),
            jwt,
        });
        if rotate_jwt {
            self.republish_bundle()?;
        }
        Ok(true)
    }

    /// Adds a new root to the bundle without signing with it yet (the first
    /// step of a root rotation), or rotates the JWT key now. Returns the new
    /// bundle sequence. The new authority is recorded durably with its row.
    ///
    /// # Errors
    /// InvalidArgument for a kind other than root or jwt; FailedPrecondition
    /// when an upstream CA owns the roots; Unavailable when the audit log
    /// cannot be written; internal errors.
    pub fn prepare_authority(
        &self,
        kind: Option<AuthorityKind>,
        caller: &str,
    ) -> Result<u64, CaError> {
        self.refusing(caller, "prepare_authority", "", || {
            let kind = match kind {
                Some(k @ (AuthorityKind::Root | AuthorityKind::Jwt)) => k,
                other => {
                    return Err(CaError::InvalidArgument(format!(
                        "kind must be root or jwt, not {}",
                        other.map_or("unspecified", AuthorityKind::as_str)
                    )));
                }
            };
            let _writer = self
                .rotation
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = self.now();
            let current = self.signing();
            let next = if kind == AuthorityKind::Root {
                if self.config.upstream_ca.is_some() {
                    return Err(CaError::FailedPrecondition(
                        "the roots belong to the upstream CA; rotate them there".into(),
                    ));
                }
                self.keys
                    .create_root(now, AuthorityState::Prepared, caller)?;
                Signing {
                    parent: current.parent.clone(),
                    signer: current.signer.clone(),
                    anchors: self.keys.root_anchors(now)?,
                    jwt: current.jwt.clone(),
                }
            } else {
                Signing {
                    parent: current.parent.clone(),
                    signer: current.signer.clone(),
                    anchors: current.anchors.clone(),
                    jwt: Arc::new(self.keys.create_jwt(now, caller)?),
                }
            };
            self.install(next);
            self.republish_bundle()?;
            Ok(self.bundle().sequence())
        })
    }

    /// The signing authorities: the upstream CA when one is configured, then
    /// every stored one, newest first.
    ///
    /// # Errors
    /// Store errors.
    pub fn list_authorities(&self) -> Result<Vec<AuthorityInfo>, CaError> {
        let mut out = Vec::new();
        if self.config.upstream_ca.is_some() {
            let signing = self.signing();
            let der = signing.parent.cert().to_vec();
            out.push(AuthorityInfo {
                id: cert_id(&der),
                kind: AuthorityKind::Upstream,
                state: AuthorityState::Active,
                not_before: unix(signing.parent.not_before()),
                not_after: unix(signing.parent.not_after()),
                der,
            });
        }
        for row in self.keys.list()? {
            out.push(AuthorityInfo {
                id: row.id,
                kind: row.kind,
                state: row.state,
                der: row.cert_der,
                not_before: row.not_before,
                not_after: row.not_after,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ca::testing::{self, TestClock};
    use crate::config::Settings;

    const DAY: Duration = Duration::from_secs(86_400);

    fn jwt_kids(ca: &Ca) -> Vec<String> {
        let mut kids: Vec<String> = ca
            .bundle()
            .jwt_authorities()
            .iter()
            .map(|j| j.key_id().to_owned())
            .collect();
        kids.sort();
        kids
    }

    fn states(ca: &Ca, kind: AuthorityKind) -> Vec<AuthorityState> {
        ca.store()
            .authorities(Some(kind))
            .unwrap()
            .into_iter()
            .map(|r| r.state)
            .collect()
    }

    #[test]
    fn the_intermediate_and_the_jwt_key_rotate_at_half_life() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let settings = Settings {
            intermediate_ttl: Some(4 * DAY),
            ..Settings::default()
        };
        let ca = testing::open(dir.path(), &clock, settings.clone());
        let first = ca.signing();
        let seq0 = ca.bundle().sequence();
        let jwt0 = first.jwt.key_id.clone();
        assert_eq!(jwt_kids(&ca), std::slice::from_ref(&jwt0));
        assert_eq!(ca.bundle().x509_authorities().len(), 1);

        // Just before half of the four days: nothing to do.
        clock.advance(2 * DAY - Duration::from_secs(60));
        assert!(!ca.rotate_if_due().unwrap());
        assert!(Arc::ptr_eq(&ca.signing().signer, &first.signer));

        // At half life (the intermediate is backdated, so it is due a little
        // earlier than the JWT key): both are replaced.
        clock.advance(Duration::from_secs(60));
        assert!(ca.rotate_if_due().unwrap());
        let second = ca.signing();
        assert_ne!(second.signer.cert(), first.signer.cert());
        assert_ne!(second.jwt.key_id, jwt0);
        assert_eq!(
            states(&ca, AuthorityKind::Intermediate),
            [AuthorityState::Active, AuthorityState::Retired]
        );
        assert_eq!(
            states(&ca, AuthorityKind::Jwt),
            [AuthorityState::Active, AuthorityState::Retired]
        );
        // The old JWT key stays in the bundle while tokens it signed live;
        // the roots do not change; the sequence moves.
        let mut both = vec![jwt0.clone(), second.jwt.key_id.clone()];
        both.sort();
        assert_eq!(jwt_kids(&ca), both);
        assert_eq!(ca.bundle().x509_authorities(), ca.signing().anchors);
        assert!(ca.bundle().sequence() > seq0);

        // New SVIDs come from the new intermediate and chain to the same root.
        let csr = signet_identity::x509::VerifiedCsr::from_der(&testing::csr()).unwrap();
        let id = signet_identity::SpiffeId::parse("spiffe://test.org/w").unwrap();
        let cert = ca.sign(&csr, &id, &[], Duration::from_secs(600)).unwrap();
        assert_eq!(cert.chain[1], *second.signer.cert());
        signet_identity::x509::verify_x509_svid(&cert.chain, &ca.bundle(), clock.now()).unwrap();

        // Nothing more until the new ones reach half life.
        clock.advance(DAY);
        assert!(!ca.rotate_if_due().unwrap());

        // Past the first JWT key's expiry (4 days), the next rotation drops
        // it from the bundle.
        clock.advance(DAY + Duration::from_secs(60));
        assert!(ca.rotate_if_due().unwrap());
        let third = ca.signing();
        let kids = jwt_kids(&ca);
        assert!(
            !kids.contains(&jwt0),
            "expired key still published: {kids:?}"
        );
        assert!(kids.contains(&second.jwt.key_id) && kids.contains(&third.jwt.key_id));

        // A restart loads the current authorities instead of making new ones.
        let seq = ca.bundle().sequence();
        drop(ca);
        let ca = testing::open(dir.path(), &clock, settings);
        assert_eq!(ca.signing().signer.cert(), third.signer.cert());
        assert_eq!(ca.signing().jwt.key_id, third.jwt.key_id);
        assert_eq!(ca.bundle().sequence(), seq);
    }

    #[test]
    fn a_prepared_root_is_published_but_does_not_sign() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let ca = testing::open(dir.path(), &clock, Settings::default());
        let before = ca.signing();
        let seq = ca
            .prepare_authority(Some(AuthorityKind::Root), "admin")
            .unwrap();
        assert!(seq > 1);
        assert_eq!(ca.bundle().x509_authorities().len(), 2);
        assert!(Arc::ptr_eq(&ca.signing().signer, &before.signer));
        let mut roots = states(&ca, AuthorityKind::Root);
        roots.sort_by_key(|s| s.as_str());
        assert_eq!(roots, [AuthorityState::Active, AuthorityState::Prepared]);
        let created = testing::audit(&ca)
            .into_iter()
            .filter(|r| r.action == "create_root")
            .map(|r| r.caller)
            .collect::<Vec<_>>();
        assert_eq!(created, ["ca", "admin"], "each root creation is recorded");
        for bad in [
            Some(AuthorityKind::Intermediate),
            Some(AuthorityKind::Upstream),
            None,
        ] {
            assert!(matches!(
                ca.prepare_authority(bad, "admin"),
                Err(CaError::InvalidArgument(_))
            ));
        }
    }
}
