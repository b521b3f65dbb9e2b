//! SIGTERM drains the CA: health watchers see NOT_SERVING, the agents'
//! streams end with the status that tells them to move to another replica
//! at once (UNAVAILABLE with the `signet-drain` trailer), new connections
//! are refused while it drains, and the process exits on its own as soon as
//! the last open stream is gone, within its grace period.

use std::time::Duration;

use signet_proto::ca::v1 as pb;
use signet_proto::ca::v1::node_client::NodeClient;
use signet_tests::{CaOptions, CaProcess, attest_node};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Longest wait for one message of a stream.
const WAIT: Duration = Duration::from_secs(15);

async fn next<T>(stream: &mut tonic::Streaming<T>, what: &str) -> Result<Option<T>, tonic::Status> {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap_or_else(|_| panic!("nothing on the {what} stream within {WAIT:?}"))
}

#[tokio::test]
async fn sigterm_ends_agent_streams_with_the_drain_status_and_reports_not_serving() {
    let mut ca = CaProcess::start(CaOptions::default().flag("shutdown-grace", "10s"))
        .await
        .unwrap();
    let node = attest_node(&ca, "node-a").await.unwrap();
    let channel = ca.node_channel(Some(node.tls_identity())).await.unwrap();
    let mut client = NodeClient::new(channel.clone());
    let mut bundles = client
        .watch_bundle(pb::WatchBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut entries = client
        .watch_authorized_entries(pb::WatchAuthorizedEntriesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(next(&mut bundles, "bundle").await.unwrap().is_some());
    assert!(next(&mut entries, "entry").await.unwrap().is_some());
    let mut health = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: "signet.ca.v1.Node".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let serving = next(&mut health, "health").await.unwrap().unwrap();
    assert_eq!(serving.status(), ServingStatus::Serving);
    let port = ca.port();
    let pid = ca.pid().unwrap();

    let watch = async {
        let not_serving = next(&mut health, "health").await.unwrap().unwrap();
        assert_eq!(not_serving.status(), ServingStatus::NotServing);
        for (stream, what) in [
            (&mut bundles as &mut dyn Ended, "bundle"),
            (&mut entries, "entry"),
        ] {
            let status = stream.ended(what).await;
            assert!(
                pb::is_drain(&status),
                "the {what} stream did not end with the drain status: {status:?}"
            );
            assert_eq!(status.code(), tonic::Code::Unavailable);
        }
        // The listener closes with the drain (the accept loop ends on the
        // same signal as the streams, so it may lag them a little).
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "still accepting connections while draining"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Refused while it still runs: the open health watch holds the
        // drain (a stream like any other, that ends only when the client
        // lets go or the grace period is over).
        assert!(
            running(pid),
            "signet-ca exited while a health watch was still open"
        );
        drop(health);
    };
    let (stopped, ()) = tokio::join!(ca.stop(), watch);
    let status = stopped.unwrap();
    assert!(
        status.success(),
        "signet-ca exited with {status}\n{}",
        ca.log()
    );
    let log = ca.log();
    assert!(
        !log.contains("grace period over"),
        "the drain needed the whole grace period\n{log}"
    );
}

/// Whether process `pid` is alive (not gone, not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the parenthesised command name.
            let after = stat.rsplit_once(')')?.1;
            after.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}

/// The end of a node API stream: the status it ended with.
#[tonic::async_trait]
trait Ended: Send {
    async fn ended(&mut self, what: &str) -> tonic::Status;
}

#[tonic::async_trait]
impl<T: Send + 'static> Ended for tonic::Streaming<T> {
    async fn ended(&mut self, what: &str) -> tonic::Status {
        loop {
            match next(self, what).await {
                // A bundle or entry change may still be on its way.
                Ok(Some(_)) => {}
                Ok(None) => panic!("the {what} stream ended without a status"),
                Err(status) => return status,
            }
        }
    }
}
