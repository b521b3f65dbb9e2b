//! The standard gRPC health service answers on both listeners.

use signet_tests::postgres::Database;
use signet_tests::{CaOptions, CaProcess, attest_with_token, create_token, health_check};
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

/// Asks `service`'s health on the node port until it is `want`; panics
/// after a minute (the probe runs every 2 s).
async fn wait_for_health(ca: &CaProcess, service: &str, want: ServingStatus) {
    for _ in 0..600 {
        let channel = ca.node_channel(None).await.unwrap();
        if health_check(channel, service).await.unwrap() == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{service:?} never became {want:?}");
}

fn issued_attestations(db: &Database, node: &str) -> String {
    db.psql(&format!(
        "SELECT COUNT(*) FROM audit WHERE action = 'attest_node' AND result = 'issued' AND spiffe_id = '{node}'"
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_postgres_is_down_and_nothing_is_issued() {
    let mut db = Database::on_private_server();
    let ca = CaProcess::start(CaOptions::default().flag("store", db.url()))
        .await
        .unwrap();
    for service in ["", "signet.ca.v1.Node"] {
        wait_for_health(&ca, service, ServingStatus::Serving).await;
    }
    let token = create_token(&ca, "n1", 0).await.unwrap();
    let node = ca.node_id("n1");

    tokio::task::block_in_place(|| db.server_mut().unwrap().stop());
    let refused = attest_with_token(&ca, &token)
        .await
        .expect_err("issued with the database down")
        .downcast::<tonic::Status>()
        .expect("a gRPC status");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("the CA's database is unreachable"),
        "{refused:?}"
    );
    assert!(
        !refused.message().contains(db.url()),
        "the URL with its password is shown: {refused:?}"
    );
    for service in ["", "signet.ca.v1.Node"] {
        wait_for_health(&ca, service, ServingStatus::NotServing).await;
    }
    // The admin socket stays up: it is how an operator looks at a degraded CA.
    let admin = health_check(ca.admin_channel().await.unwrap(), "signet.ca.v1.Admin")
        .await
        .unwrap();
    assert_eq!(admin, ServingStatus::Serving);
    let again = attest_with_token(&ca, &token)
        .await
        .expect_err("issued with the database down")
        .downcast::<tonic::Status>()
        .expect("a gRPC status");
    assert_eq!(again.code(), tonic::Code::Unavailable, "{again:?}");

    tokio::task::block_in_place(|| db.server_mut().unwrap().start_again());
    for service in ["", "signet.ca.v1.Node"] {
        wait_for_health(&ca, service, ServingStatus::Serving).await;
    }
    assert_eq!(issued_attestations(&db, &node), "0");
    // The token was not used up by the refused attempts.
    let attested = attest_with_token(&ca, &token).await.unwrap();
    assert_eq!(attested.spiffe_id, node);
    assert_eq!(issued_attestations(&db, &node), "1");
}
