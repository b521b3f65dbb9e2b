//! gRPC over local unix sockets, shared by the admin client and the Workload
//! API client, and the one place where gRPC failures become messages for a
//! person.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Longest wait for the socket to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A channel to the gRPC server listening on the unix socket `path`. With
/// `call_timeout`, every call on it fails after that long; streams that are
/// meant to stay open need `None`.
///
/// # Errors
/// When nothing accepts connections on `path`: the operating system's
/// reason ("No such file or directory", "Connection refused").
pub async fn unix_channel(path: &Path, call_timeout: Option<Duration>) -> Result<Channel, String> {
    // The URI only satisfies the HTTP/2 layer: the connector below ignores it.
    let mut endpoint = Endpoint::try_from("http://[::]:50051")
        .map_err(|e| e.to_string())?
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(timeout) = call_timeout {
        endpoint = endpoint.timeout(timeout);
    }
    let socket: PathBuf = path.to_owned();
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| root_cause(&e))
}

/// The innermost message of an error chain: for a failed connect that is the
/// operating system's reason ("No such file or directory"), where tonic's own
/// message is only "transport error".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// A failed call as the user sees it: `<code>: <message>`.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    let message = status.message();
    if message.is_empty() {
        anyhow!("{}", code_name(status.code()))
    } else {
        anyhow!("{}: {message}", code_name(status.code()))
    }
}

/// The gRPC code in the spelling of the gRPC docs and grpcurl.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_errors_read_code_then_message() {
        let err = status_error(tonic::Status::not_found("entry abc not found"));
        assert_eq!(err.to_string(), "NotFound: entry abc not found");
        let err = status_error(tonic::Status::new(tonic::Code::Internal, ""));
        assert_eq!(err.to_string(), "Internal");
    }
}
