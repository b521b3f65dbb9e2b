//! The signing state and the list of authorities shown to operators. The
//! state is swapped whole; readers take an `Arc` clone and never wait for
//! a rotation. It is only ever built from active, published authorities.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use signet_identity::x509::SigningAuthority;

use super::authorities::{JwtKey, KeyStore, KeyStoreError, cert_id};
use super::time::unix;
use super::{Ca, CaError, Upstream};
use crate::store::{AuthorityKind, AuthorityRow, AuthorityState};

/// What the CA signs with.
pub struct Signing {
    /// Signs intermediates.
    pub parent: Arc<SigningAuthority>,
    /// Signs SVIDs.
    pub signer: Arc<SigningAuthority>,
    /// The id of `signer` (recorded with what it signs).
    pub signer_id: String,
    /// The roots of the bundle.
    pub anchors: Vec<CertificateDer<'static>>,
    /// Signs JWT-SVIDs.
    pub jwt: Arc<JwtKey>,
}

/// A signing authority as listed for operators.
#[derive(Debug, Clone)]
pub struct AuthorityInfo {
    pub row: AuthorityRow,
    /// Connected agents that acknowledged its published sequence, and all
    /// connected agents.
    pub agents_acknowledged: u32,
    pub agents_connected: u32,
    /// When the schedule will next move it; `None` when nothing is scheduled.
    pub next_transition_at: Option<i64>,
}

/// Builds the signing state from the active rows. With `require_published`
/// (always, except while the CA is being opened and nothing can sign yet)
/// an active authority that was never published is refused: nothing is
/// ever signed with a key the bundle did not carry first.
///
/// # Errors
/// A kind without an active authority, an unpublished one, unreadable keys.
pub(super) fn load(
    keys: &KeyStore,
    rows: &[AuthorityRow],
    upstream: Option<&Upstream>,
    anchors: Vec<CertificateDer<'static>>,
    require_published: bool,
) -> Result<Signing, KeyStoreError> {
    let active = |kind: AuthorityKind, name: &'static str| {
        let row = rows
            .iter()
            .find(|r| r.kind == kind && r.state == AuthorityState::Active)
            .ok_or(KeyStoreError::NoActive(name))?;
        if require_published && row.published_sequence.is_none() {
            return Err(KeyStoreError::Unpublished {
                kind: name,
                id: row.id.clone(),
            });
        }
        Ok(row)
    };
    let parent = match upstream {
        Some(up) => up.parent.clone(),
        None => Arc::new(keys.load_root(active(AuthorityKind::Root, "root")?)?),
    };
    let row = active(AuthorityKind::Intermediate, "intermediate")?;
    let parent_id = cert_id(parent.cert());
    if row.parent_id.as_deref() != Some(parent_id.as_str()) {
        return Err(KeyStoreError::Certificate {
            id: row.id.clone(),
            reason: format!(
                "the active intermediate is not signed by the active parent {parent_id}"
            ),
        });
    }
    let signer = keys.load_intermediate(row, &parent)?;
    let jwt = keys.load_jwt(active(AuthorityKind::Jwt, "JWT key")?)?;
    Ok(Signing {
        parent,
        signer: Arc::new(signer),
        signer_id: row.id.clone(),
        anchors,
        jwt: Arc::new(jwt),
    })
}

impl Ca {
    /// Rebuilds the signing state from the store after a change. Callers
    /// hold the writer lock.
    pub(super) fn reload_signing(&self) -> Result<(), CaError> {
        let rows = self.keys.own()?;
        let anchors = self.bundle().x509_authorities().to_vec();
        let next = match &self.upstream {
            Some(up) => {
                let up = up.read().unwrap_or_else(std::sync::PoisonError::into_inner);
                load(&self.keys, &rows, Some(&up), anchors, true)?
            }
            None => load(&self.keys, &rows, None, anchors, true)?,
        };
        *self
            .signing
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(next);
        Ok(())
    }

    /// The signing authorities: the upstream CA when one is configured, then
    /// every stored one, newest first, with the rotation journal and how
    /// many connected agents have acknowledged each.
    ///
    /// # Errors
    /// Store errors.
    pub fn list_authorities(&self) -> Result<Vec<AuthorityInfo>, CaError> {
        let mut out = Vec::new();
        let now = unix(self.now());
        let lag = self.agent_lag()?;
        let connected = u32::try_from(lag.len()).unwrap_or(u32::MAX);
        if self.config.upstream_ca.is_some() {
            let signing = self.signing();
            let der = signing.parent.cert().to_vec();
            let row = AuthorityRow::new(
                cert_id(&der),
                AuthorityKind::Upstream,
                AuthorityState::Active,
                der,
                String::new(),
                (
                    unix(signing.parent.not_before()),
                    unix(signing.parent.not_after()),
                ),
                0,
                None,
            );
            out.push(AuthorityInfo {
                row,
                agents_acknowledged: connected,
                agents_connected: connected,
                next_transition_at: None,
            });
        }
        let rows = self.keys.list()?;
        // Each replica schedules its own authorities: the schedule of
        // another replica's is that replica's to tell.
        let own: Vec<AuthorityRow> = rows.iter().filter(|r| self.keys.owns(r)).cloned().collect();
        for row in &rows {
            let acked = row
                .published_sequence
                .map_or(0, |seq| lag.iter().filter(|(_, s)| *s >= seq).count());
            let next_transition_at = if self.keys.owns(row) {
                self.next_transition(row, &own, now)
            } else {
                None
            };
            out.push(AuthorityInfo {
                next_transition_at,
                agents_acknowledged: u32::try_from(acked).unwrap_or(u32::MAX),
                agents_connected: connected,
                row: row.clone(),
            });
        }
        Ok(out)
    }
}
