//! Drop-in CA APIs for existing service meshes: Istio's
//! `IstioCertificateService` (istio-agent, ztunnel) and Linkerd's
//! `Identity` (linkerd2-proxy), on their own TLS listener.
//!
//! The caller's identity comes from its service-account token, reviewed by
//! the API server, never from the CSR: the CSR contributes only its key,
//! and a CSR naming another identity is refused.

pub mod config;
pub mod csr;
pub mod istio;
pub mod kube;
pub mod linkerd;
pub mod listener;
pub mod pods;
pub mod review;

use std::sync::Arc;

use signet_identity::SpiffeId;

use crate::ca::{Ca, CaError};
use config::{MAX_TOKEN_BYTES, MeshConfig};
use review::{PodLookup, ServiceAccount, TokenReview, TokenReviewer};

/// What both mesh APIs share: the CA, the settings, and how callers are
/// authenticated.
#[derive(Clone)]
pub struct MeshAuth {
    pub ca: Arc<Ca>,
    pub config: Arc<MeshConfig>,
    pub reviewer: Arc<dyn TokenReviewer>,
    pub pods: Arc<dyn PodLookup>,
}

impl std::fmt::Debug for MeshAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshAuth")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub account: ServiceAccount,
    pub review: TokenReview,
}

impl Caller {
    /// How the audit log names the caller.
    #[must_use]
    pub fn audit_name(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.account.namespace, self.account.name
        )
    }
}

impl MeshAuth {
    /// Reviews `token` for `audience` and returns the service account it
    /// belongs to.
    ///
    /// # Errors
    /// Unauthenticated for a missing, oversized, unauthenticated token or
    /// one not valid for `audience`; PermissionDenied for a user that is not
    /// a service account; Unavailable when the review cannot be made.
    pub async fn authenticate(&self, token: &str, audience: &str) -> Result<Caller, CaError> {
        if token.is_empty() {
            return Err(CaError::Unauthenticated("no token".into()));
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(CaError::Unauthenticated(format!(
                "token is longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let audiences = [audience.to_owned()];
        let review = self
            .reviewer
            .review(token, &audiences)
            .await
            .map_err(|e| CaError::Unavailable(e.to_string()))?;
        if !review.authenticated {
            return Err(CaError::Unauthenticated(format!(
                "token not authenticated{}",
                review
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )));
        }
        // The API server may accept a token without echoing the audience
        // (an old server, or none was asked for): that is not good enough.
        if !review.audiences.iter().any(|a| a == audience) {
            return Err(CaError::Unauthenticated(format!(
                "token is not valid for audience {audience:?}"
            )));
        }
        let account = ServiceAccount::from_username(&review.username).ok_or_else(|| {
            CaError::PermissionDenied(format!("{:?} is not a service account", review.username))
        })?;
        Ok(Caller { account, review })
    }

    /// `spiffe://<td>/ns/<ns>/sa/<sa>`.
    ///
    /// # Errors
    /// Internal when the names make no valid ID (they were checked).
    pub fn workload_id(&self, account: &ServiceAccount) -> Result<SpiffeId, CaError> {
        let td = &self.ca.config().trust_domain;
        SpiffeId::parse(&format!(
            "spiffe://{td}/ns/{}/sa/{}",
            account.namespace, account.name
        ))
        .map_err(|e| CaError::Internal(format!("workload ID: {e}")))
    }

    /// Audits a refusal and hands the error back.
    pub fn refused(&self, caller: &str, action: &str, id: &str, e: CaError) -> CaError {
        self.ca.audit_rejection(caller, action, id, &e);
        e
    }
}

#[cfg(test)]
pub(crate) mod tests;

#[cfg(test)]
mod listener_tests;

#[cfg(test)]
mod kube_tests;
