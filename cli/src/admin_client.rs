//! The connection to signet-ca's Admin service over its unix socket.

use std::path::Path;
use std::time::Duration;

use anyhow::anyhow;
use signet_proto::ca::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::grpc;

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
    let channel = grpc::unix_channel(path, Some(CALL_TIMEOUT))
        .await
        .map_err(|reason| {
            anyhow!(
                "cannot reach signet-ca admin socket at {}: {reason}; is signet-ca running? use --admin-socket",
                path.display()
            )
        })?;
    Ok(AdminClient::new(channel))
}

#[cfg(test)]
mod tests {
    use super::*;

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
