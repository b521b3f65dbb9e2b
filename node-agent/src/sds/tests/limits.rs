//! Bounds on what one SDS request may ask for (finding 5.11): too many
//! resource names are refused with InvalidArgument before any is resolved,
//! and names that cannot be served are logged in one line per request.

use std::os::unix::fs::MetadataExt as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use futures::StreamExt as _;
use signet_identity::{SpiffeId, TrustBundle, TrustDomain};
use tokio::sync::watch;
use tonic::Code;
use tonic::transport::Channel;

use super::*;
use crate::attest::unix::UnixAttestor;
use crate::sds::xds::Protocol as _;
use crate::state::{Entry, Selector, Snapshot};

const PATIENCE: Duration = Duration::from_secs(10);

/// This process has an entry but no SVID yet: every SPIFFE ID name below is
/// "pending", the most talkative case.
fn snapshot() -> Arc<Snapshot> {
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    Arc::new(Snapshot {
        crls: Arc::default(),
        reissue_pending: 0,
        bundle: Some(Arc::new(TrustBundle::new(
            TrustDomain::new("example.org").unwrap(),
        ))),
        entries: vec![Arc::new(Entry {
            id: "e-web".into(),
            spiffe_id: SpiffeId::parse("spiffe://example.org/web").unwrap(),
            selectors: vec![Selector::new("unix", format!("uid:{uid}"))],
            ttl_seconds: 600,
            dns_names: vec![],
            revision: 1,
            federates_with: vec![],
        })],
        ..Snapshot::default()
    })
}

fn names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("spiffe://example.org/svc-{i}"))
        .collect()
}

fn sotw(resource_names: Vec<String>) -> DiscoveryRequest {
    DiscoveryRequest {
        resource_names,
        type_url: SECRET_TYPE_URL.to_owned(),
        ..DiscoveryRequest::default()
    }
}

async fn client(socket: &std::path::Path) -> SecretDiscoveryServiceClient<Channel> {
    SecretDiscoveryServiceClient::new(connect(socket).await)
}

#[tokio::test]
async fn too_many_names_are_refused_on_every_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sds.sock");
    let (_snapshots, rx) = watch::channel(snapshot());
    let (stop, stop_rx) = watch::channel(false);
    let server = SdsServer::new(rx, vec![Arc::new(UnixAttestor::default())]);
    let task = tokio::spawn(serve(socket.clone(), server, stop_rx));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !socket.exists() {
        assert!(tokio::time::Instant::now() < deadline, "no socket");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c = client(&socket).await;

    // FetchSecrets: the finding's 300,000 names, scaled down.
    let err = c.fetch_secrets(sotw(names(300))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // The limit itself is allowed (the names are merely not available).
    let err = c
        .fetch_secrets(sotw(names(MAX_RESOURCE_NAMES)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let long = vec![format!(
        "spiffe://example.org/{}",
        "a".repeat(MAX_RESOURCE_NAME_LEN)
    )];
    let err = c.fetch_secrets(sotw(long)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // StreamSecrets: the stream ends with InvalidArgument.
    let requests = futures::stream::iter(vec![sotw(names(MAX_RESOURCE_NAMES + 1))]);
    let mut responses = c.stream_secrets(requests).await.unwrap().into_inner();
    let err = tokio::time::timeout(PATIENCE, responses.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // DeltaSecrets: two subscriptions that together exceed the limit.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let delta = |subscribe: Vec<String>| DeltaDiscoveryRequest {
        resource_names_subscribe: subscribe,
        type_url: SECRET_TYPE_URL.to_owned(),
        ..DeltaDiscoveryRequest::default()
    };
    tx.send(delta(names(40))).await.unwrap();
    tx.send(delta(
        names(80).into_iter().skip(40).collect::<Vec<String>>(),
    ))
    .await
    .unwrap();
    let mut responses = c
        .delta_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let err = tokio::time::timeout(PATIENCE, responses.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    drop(tx);

    // DeltaSecrets: a reconnect declaring too many known versions.
    let reconnect = DeltaDiscoveryRequest {
        initial_resource_versions: names(MAX_RESOURCE_NAMES + 1)
            .into_iter()
            .map(|n| (n, "v1".to_owned()))
            .collect(),
        type_url: SECRET_TYPE_URL.to_owned(),
        ..DeltaDiscoveryRequest::default()
    };
    let mut responses = c
        .delta_secrets(futures::stream::iter(vec![reconnect]))
        .await
        .unwrap()
        .into_inner();
    let err = tokio::time::timeout(PATIENCE, responses.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    stop.send_replace(true);
    tokio::time::timeout(PATIENCE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[test]
fn unavailable_names_are_logged_once_per_request() {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let snapshot = snapshot();
    let selectors = snapshot.entries[0].selectors.clone();
    let caller = crate::sds::resources::Caller::new(&snapshot, &selectors, SystemTime::now(), true);
    let mut wanted = names(MAX_RESOURCE_NAMES - 2);
    wanted.push("spiffe://example.org/web".into()); // pending: no SVID yet
    wanted.push("no-such-name".into()); // refused
    let sent = xds::Sotw::default()
        .on_request(sotw(wanted), &caller)
        .unwrap();
    assert!(sent.is_none());
    let text = logs.text();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains(&format!("count={MAX_RESOURCE_NAMES}")),
        "{text}"
    );
}
