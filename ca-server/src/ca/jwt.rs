//! JWT-SVIDs: minted for an entry parented to the calling node, signed with
//! the active JWT key, returned only once recorded durably.

use std::time::{Duration, SystemTime};

use signet_identity::SpiffeId;
use signet_identity::jwt::JwtError;

use super::time::unix;
use super::{Ca, CaError};
use crate::store::AuditRecord;

/// Default lifetime of JWT-SVIDs.
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);
/// Longest lifetime of JWT-SVIDs.
pub const MAX_JWT_TTL: Duration = Duration::from_secs(3600);

impl Ca {
    /// Signs a JWT-SVID for an entry parented to `node`.
    ///
    /// # Errors
    /// PermissionDenied for an entry not authorized for `node`;
    /// InvalidArgument for a missing audience; Unavailable when the audit
    /// record cannot be written (then no token is returned).
    pub fn mint_jwt(
        &self,
        node: &SpiffeId,
        entry_id: &str,
        audience: &[String],
        ttl: Option<Duration>,
    ) -> Result<(SpiffeId, String, SystemTime), CaError> {
        self.refusing(node.as_str(), "mint_jwt_svid", "", || {
            self.authorize_node(node)?;
            let entry = self.entry_of(node, entry_id)?;
            let id =
                SpiffeId::parse(&entry.spiffe_id).map_err(|e| CaError::Internal(e.to_string()))?;
            self.check_claimable(&id, &[])?;
            let ttl = ttl
                .filter(|t| !t.is_zero())
                .unwrap_or(DEFAULT_JWT_TTL)
                .min(MAX_JWT_TTL);
            let signing = self.signing();
            let now = self.now();
            let expires = (now + ttl).min(signing.jwt.not_after);
            let ttl = expires.duration_since(now).unwrap_or_default();
            let token = signet_identity::jwt::sign_es256(
                &signing.jwt.key,
                &signing.jwt.key_id,
                &id,
                audience,
                ttl,
                now,
            )
            .map_err(|e| match e {
                JwtError::MissingAudience => CaError::InvalidArgument(
                    "a JWT-SVID needs at least one non-empty audience".into(),
                ),
                other => CaError::Internal(other.to_string()),
            })?;
            self.auditor.durable(vec![AuditRecord {
                at: unix(now),
                caller: node.to_string(),
                action: "mint_jwt_svid".into(),
                spiffe_id: id.to_string(),
                not_after: unix(expires),
                result: "issued".into(),
                detail: format!("entry {entry_id} aud {audience:?}"),
                ..AuditRecord::default()
            }])?;
            Ok((id, token, expires))
        })
    }
}
