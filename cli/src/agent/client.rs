//! The Workload API connection: our generated client over the unix socket,
//! with the security header on every request, and first-message reads that
//! cannot hang.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use signet_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tonic::Streaming;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::grpc::{self, status_error};

/// The client every command uses.
pub type Client = SpiffeWorkloadApiClient<Channel>;

/// How long a unary call or the first message of a stream may take. The
/// agent answers from memory (a JWT-SVID may need one round trip to the CA).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The metadata every Workload API request must carry (SPIFFE Workload
/// Endpoint, section 3); servers refuse requests without it.
const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Connects to the Workload API on the unix socket `path`. The channel has
/// no call timeout, because `watch` holds a stream open indefinitely.
///
/// # Errors
/// When nothing accepts connections on `path`, with a hint to start the
/// agent or give the socket.
pub async fn connect(path: &Path) -> anyhow::Result<Client> {
    let channel = grpc::unix_channel(path, None).await.map_err(|reason| {
        anyhow!(
            "cannot reach the Workload API at {}: {reason}; is signet-agent running? use --socket or SPIFFE_ENDPOINT_SOCKET",
            path.display()
        )
    })?;
    Ok(SpiffeWorkloadApiClient::new(channel))
}

/// `message` as a request with the security header.
pub fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(SECURITY_HEADER, MetadataValue::from_static("true"));
    request
}

/// Runs a call under [`CALL_TIMEOUT`], naming `rpc` in the errors.
///
/// # Errors
/// The call's status, or a timeout.
pub async fn call<T>(
    rpc: &str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> anyhow::Result<T> {
    let response = tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| anyhow!("{rpc}: no answer within {CALL_TIMEOUT:?}"))?
        .map_err(status_error)
        .with_context(|| rpc.to_owned())?;
    Ok(response.into_inner())
}

/// The first message of a stream, under [`CALL_TIMEOUT`].
///
/// # Errors
/// The stream's status, a timeout, or a stream that ends at once.
pub async fn first<T>(rpc: &str, stream: &mut Streaming<T>) -> anyhow::Result<T> {
    tokio::time::timeout(CALL_TIMEOUT, stream.message())
        .await
        .map_err(|_| anyhow!("{rpc}: no message within {CALL_TIMEOUT:?}"))?
        .map_err(status_error)
        .with_context(|| rpc.to_owned())?
        .ok_or_else(|| anyhow!("{rpc}: the server ended the stream without a message"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_carries_the_security_header() {
        let request = request(());
        assert_eq!(
            request
                .metadata()
                .get("workload.spiffe.io")
                .map(|v| v.as_bytes()),
            Some(&b"true"[..])
        );
    }

    #[tokio::test]
    async fn a_missing_socket_names_the_path_and_the_fix() {
        let path =
            std::env::temp_dir().join(format!("signet-cli-no-agent-{}.sock", std::process::id()));
        let err = connect(&path).await.unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("is signet-agent running?"), "{err}");
        assert!(err.contains("No such file"), "{err}");
    }
}
