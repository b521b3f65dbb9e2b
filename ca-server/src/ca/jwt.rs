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
                e @ (JwtError::TooManyAudiences(_)
                | JwtError::AudienceTooLong(_)
                | JwtError::TooLong) => CaError::InvalidArgument(e.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::testing::{self, TestClock};
    use crate::config::Settings;

    #[test]
    fn a_jwt_svid_is_not_returned_when_its_audit_record_cannot_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let ca = testing::open(dir.path(), &clock, Settings::default());
        let node = testing::attest(&ca, "n1");
        let entry = testing::entry(&ca, &node, "/web");
        let aud = vec!["db".to_owned()];
        // Works while the log is writable, and is recorded.
        ca.mint_jwt(&node, &entry.id, &aud, None).unwrap();
        let before = testing::audit(&ca);
        assert_eq!(before.last().unwrap().action, "mint_jwt_svid");
        assert_eq!(before.last().unwrap().result, "issued");

        testing::break_audit_log(&ca);
        let err = ca.mint_jwt(&node, &entry.id, &aud, None).unwrap_err();
        assert!(matches!(err, CaError::Unavailable(_)), "{err:?}");
        assert_eq!(crate::api::status::code_of(&err), tonic::Code::Unavailable);
        assert!(err.to_string().contains("audit log"), "{err}");
        // Nor is anything else handed out or changed while the log is broken.
        assert!(matches!(
            ca.mint("spiffe://test.org/m", &testing::csr(), None, &[], "admin"),
            Err(CaError::Unavailable(_))
        ));
        let batch = [crate::ca::SignItem {
            entry_id: entry.id.clone(),
            csr: testing::csr(),
            ttl: None,
        }];
        assert!(matches!(
            ca.sign_batch(&node, &batch),
            Err(CaError::Unavailable(_))
        ));
        let token = ca.create_join_token("n2", None, "admin");
        assert!(matches!(token, Err(CaError::Unavailable(_))), "{token:?}");
        testing::repair_audit_log(&ca);
        assert_eq!(
            testing::audit(&ca).len(),
            before.len(),
            "nothing was recorded"
        );
        // And a join token whose exchange could not be recorded is not used up.
        let token = ca.create_join_token("n3", None, "admin").unwrap();
        testing::break_audit_log(&ca);
        assert!(matches!(
            ca.attest_node(&token.token, &testing::csr(), "127.0.0.1:2"),
            Err(CaError::Unavailable(_))
        ));
        testing::repair_audit_log(&ca);
        ca.attest_node(&token.token, &testing::csr(), "127.0.0.1:2")
            .unwrap();
    }
}
