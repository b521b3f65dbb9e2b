//! The one place where CA errors become gRPC statuses.

use tonic::{Code, Status};

use crate::ca::CaError;

impl From<CaError> for Status {
    fn from(e: CaError) -> Self {
        let code = code_of(&e);
        if code == Code::Internal {
            tracing::error!(error = %e, "internal error");
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
        CaError::Internal(_) => Code::Internal,
    }
}
