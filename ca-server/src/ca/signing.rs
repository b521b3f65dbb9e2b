//! The signing state and its rotation. The state is swapped whole; readers
//! take an `Arc` clone and never wait for a rotation.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use signet_identity::x509::SigningAuthority;

use super::authorities::{self, JwtKey};
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
    pub fn prepare_authority(&self, kind: &str, caller: &str) -> Result<u64, CaError> {
        self.refusing(caller, "prepare_authority", "", || {
            let kind = match AuthorityKind::parse(kind) {
                Ok(k @ (AuthorityKind::Root | AuthorityKind::Jwt)) => k,
                _ => {
                    return Err(CaError::InvalidArgument(format!(
                        "kind must be root or jwt, not {kind:?}"
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
}
