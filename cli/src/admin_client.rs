//! The connection to signet-ca's Admin service over its unix socket, and the
//! one place where gRPC failures become messages for a person.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;
use hyper_util::rt::TokioIo;
use signet_proto::ca::v1::admin_client::AdminClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// Where signet-ca puts its admin socket with the default data directory.
pub const DEFAULT_SOCKET: &str = "./signet-data/admin.sock";

/// How long a single admin call may take. Every call is a small database
/// operation or one signature; a minute means the server is stuck.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Connects to the Admin service listening on the unix socket `path`.
///
/// # Errors
/// When nothing accepts connections on `path`, with a hint to start signet-ca
/// or pass `--admin-socket`.
pub async fn connect(path: &Path) -> anyhow::Result<AdminClient<Channel>> {
    let unreachable = |reason: String| {
        anyhow!(
            "cannot reach signet-ca admin socket at {}: {reason}; is signet-ca running? use --admin-socket",
            path.display()
        )
    };
    // The URI only satisfies the HTTP/2 layer: the connector below ignores it.
    let endpoint = Endpoint::try_from("http://[::]:50051")
        .map_err(|e| unreachable(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(CALL_TIMEOUT);
    let socket: PathBuf = path.to_owned();
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| unreachable(root_cause(&e)))?;
    Ok(AdminClient::new(channel))
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

    #[tokio::test]
    async fn a_missing_socket_names_the_path_and_the_fix() {
        let path =
            std::env::temp_dir().join(format!("signet-cli-no-such-{}.sock", std::process::id()));
        let err = connect(&path).await.unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(
            err.contains("is signet-ca running? use --admin-socket"),
            "{err}"
        );
        assert!(err.contains("No such file"), "{err}");
    }
}
