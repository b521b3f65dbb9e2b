//! The one place where CA errors become gRPC statuses.

use tonic::{Code, Status};

use crate::ca::CaError;

impl From<CaError> for Status {
    fn from(e: CaError) -> Self {
        let code = code_of(&e);
        if matches!(code, Code::Internal | Code::Unavailable) {
            tracing::error!(error = %e, "internal error");
        }
        if code == Code::Unavailable {
            super::store_health::request_failed_unavailable();
        }
        Status::new(code, e.to_string())
    }
}

/// The gRPC code for an error.
pub fn code_of(e: &CaError) -> Code {
    match e {
        CaError::InvalidArgument(_) => Code::InvalidArgument,
        CaError::PermissionDenied(_) => Code::PermissionDenied,
        CaError::Unauthenticated(_) => Code::Unauthenticated,
        CaError::NotFound(_) => Code::NotFound,
        CaError::AlreadyExists(_) => Code::AlreadyExists,
        CaError::FailedPrecondition(_) => Code::FailedPrecondition,
        CaError::Unavailable(_) => Code::Unavailable,
        CaError::Internal(_) => Code::Internal,
    }
}

/// Runs blocking CA work (signing, SQLite) on the blocking pool, off the
/// async workers.
///
/// # Errors
/// The work's error as a status, or INTERNAL when the worker panicked.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CaError> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Status::from),
        Err(e) => Err(Status::internal(format!("worker failed: {e}"))),
    }
}
