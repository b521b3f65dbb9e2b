//! One error type for every Kubernetes call.

/// What can go wrong talking to the Kubernetes API or reading its answers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum K8sError {
    /// The kubeconfig or in-cluster settings could not be read.
    #[error("kubernetes client configuration: {0}")]
    Config(String),
    /// The API server could not be reached or the transport failed.
    #[error("kubernetes api request failed: {0}")]
    Transport(String),
    /// The API server answered with an error status.
    #[error("kubernetes api answered {code} {reason}: {message}")]
    Api {
        code: u16,
        reason: String,
        message: String,
    },
    /// The token was not authenticated by TokenReview.
    #[error("token not authenticated: {0}")]
    Unauthenticated(String),
    /// TokenReview authenticated the token but not for the audiences asked for.
    #[error("token audiences {got:?} do not include any of {wanted:?}")]
    Audience {
        wanted: Vec<String>,
        got: Vec<String>,
    },
    /// TokenReview answered something that is not a service-account token bound to a pod.
    #[error("token review answer is not usable: {0}")]
    Malformed(String),
    /// A watch can no longer resume from its resourceVersion (410 Gone): list again.
    #[error("watch resourceVersion expired: {0}")]
    Expired(String),
    /// An update kept losing to concurrent writers.
    #[error("conflict on {0} persisted after retries")]
    Conflict(String),
}

impl K8sError {
    /// HTTP status of an API error, if this is one.
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Api { code, .. } => Some(*code),
            Self::Expired(_) => Some(410),
            _ => None,
        }
    }
}

impl From<kube::Error> for K8sError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) if s.code == 410 => Self::Expired(s.message),
            kube::Error::Api(s) => Self::Api {
                code: s.code,
                reason: s.reason,
                message: s.message,
            },
            other => Self::Transport(other.to_string()),
        }
    }
}
