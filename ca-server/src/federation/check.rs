//! The fetch errors of a relationship: the transport's, and the rules a
//! fetched bundle must pass (`signet_identity::bundle::federated`).

use signet_identity::bundle::federated::UpdateError;

pub use signet_identity::bundle::federated::{Update as Outcome, authorities_belong, check_update};

/// Why a fetch did not produce a new bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("connecting to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("TLS with the bundle endpoint failed: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the endpoint answered with a redirect ({0}); redirects are not followed")]
    Redirect(u16),
    #[error("the endpoint answered with HTTP status {0}")]
    Status(u16),
    #[error("the bundle is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the fetch took longer than {0:?}")]
    Timeout(std::time::Duration),
    #[error(transparent)]
    Rejected(#[from] UpdateError),
}
