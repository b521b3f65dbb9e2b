//! The standard gRPC health service answers on both listeners.

use signet_tests::{CaOptions, CaProcess, health_check};
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test]
async fn health_reports_serving_on_the_admin_socket_and_the_node_port() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    for service in ["", "signet.ca.v1.Admin", "signet.ca.v1.Node"] {
        let admin = health_check(ca.admin_channel().await.unwrap(), service)
            .await
            .unwrap();
        assert_eq!(admin, ServingStatus::Serving, "admin socket, {service:?}");
        let node = health_check(ca.node_channel(None).await.unwrap(), service)
            .await
            .unwrap();
        assert_eq!(node, ServingStatus::Serving, "node port, {service:?}");
    }
    let unknown = health_check(ca.admin_channel().await.unwrap(), "no.such.Service").await;
    let status = unknown
        .expect_err("an unknown service has no status")
        .downcast::<tonic::Status>()
        .expect("a gRPC status");
    assert_eq!(status.code(), tonic::Code::NotFound);
}
