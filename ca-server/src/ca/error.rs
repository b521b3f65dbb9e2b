//! The CA's errors: why a request was refused ([`CaError`], one gRPC status
//! each in `api::status`) and why the CA could not open ([`OpenError`]).

use std::path::PathBuf;

use crate::store::StoreError;

use super::authorities::KeyStoreError;

/// Why a request was refused. Each maps to one gRPC status in `api::status`.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Malformed input (CSR, ID, TTL...).
    #[error("{0}")]
    InvalidArgument(String),
    /// Authenticated, but not allowed.
    #[error("{0}")]
    PermissionDenied(String),
    /// No valid credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// No such object.
    #[error("{0}")]
    NotFound(String),
    /// Exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The system is not in a state that allows it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Temporarily unable to serve: the audit log cannot be written, so
    /// nothing is handed out or changed.
    #[error("{0}")]
    Unavailable(String),
    /// Our fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CaError {
    /// The kind of refusal, as a stable lowercase name (the audit log's
    /// refusal limiter groups by it).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "invalid_argument",
            Self::PermissionDenied(_) => "permission_denied",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::NotFound(_) => "not_found",
            Self::AlreadyExists(_) => "already_exists",
            Self::FailedPrecondition(_) => "failed_precondition",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for CaError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => Self::AlreadyExists(m),
            StoreError::Unavailable(_) => Self::Unavailable(e.to_string()),
            StoreError::AuditWriterStopped | StoreError::AuditWrite(_) => Self::Unavailable(
                format!("the audit log cannot be written, so nothing was issued or changed: {e}"),
            ),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<KeyStoreError> for CaError {
    fn from(e: KeyStoreError) -> Self {
        match e {
            KeyStoreError::Store(s) => s.into(),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<signet_identity::BundleError> for CaError {
    fn from(e: signet_identity::BundleError) -> Self {
        Self::Internal(format!("building the bundle: {e}"))
    }
}

impl From<std::io::Error> for CaError {
    fn from(e: std::io::Error) -> Self {
        Self::Internal(e.to_string())
    }
}

/// Why the CA cannot start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory cannot be created or made private.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The replica id file cannot be read, written or understood.
    #[error("replica id file {path}: {reason}")]
    ReplicaId {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The store cannot be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store was made for another trust domain.
    #[error(
        "the store {store} belongs to trust domain {found}, not {configured}; use another data directory or database"
    )]
    TrustDomainMismatch {
        /// The store, as [`crate::store::Store::describe`] prints it.
        store: String,
        /// The trust domain it holds.
        found: String,
        /// The configured one.
        configured: String,
    },
    /// The signing authorities cannot be loaded or created.
    #[error(transparent)]
    Keys(#[from] KeyStoreError),
    /// The bundle cannot be built or written.
    #[error("publishing the bundle: {0}")]
    Bundle(CaError),
}

impl From<CaError> for OpenError {
    fn from(e: CaError) -> Self {
        Self::Bundle(e)
    }
}
