//! Wires the CA to its listeners and runs until SIGTERM/SIGINT, then drains
//! in-flight requests within the configured grace period.

use std::sync::Arc;

use anyhow::Context;
use signet_proto::ca::v1::admin_server::AdminServer;
use signet_proto::ca::v1::node_server::NodeServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;
use tracing::Instrument;

use crate::api::admin::AdminApi;
use crate::api::conns::ConnTracker;
use crate::api::guard::{GuardLayer, MAX_BATCH_REQUEST_BYTES};
use crate::api::node::NodeApi;
use crate::api::tls::{self, ServerCertResolver};
use crate::ca::Ca;
use crate::config::Config;
use crate::federation::metrics::FederationState;
use crate::federation::{Federations, endpoint};

/// Largest request accepted on the node API; [`GuardLayer`] sets tighter
/// limits per method before decoding.
const MAX_MESSAGE_BYTES: usize = MAX_BATCH_REQUEST_BYTES;

/// Largest header block of a node-API request.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// The admin socket is for the CA's own user only.
const ADMIN_SOCKET_MODE: u32 = 0o600;

/// Runs the CA until a termination signal.
///
/// # Errors
/// Start-up failures: unusable data directory or keys, ports in use.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    tracing::info!(
        trust_domain = %config.trust_domain,
        listen = %config.listen,
        data_dir = %config.data_dir.display(),
        admin_socket = %config.admin_socket.display(),
        defaults = ?config.defaulted,
        "starting signet-ca"
    );
    let ca = Arc::new(Ca::open(config.clone()).context("opening the CA")?);
    let signing = ca.signing();
    tracing::info!(
        bundle_sequence = ca.bundle().sequence(),
        roots = ca.bundle().x509_authorities().len(),
        signer_not_after = %humantime::format_rfc3339_seconds(signing.signer.not_after()),
        "CA ready"
    );

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the node API to {}", config.listen))?;
    let listen_addr = listener.local_addr()?;
    // Only the CA's own user may administer it.
    let admin_socket = signet_uds::bind(&config.admin_socket, ADMIN_SOCKET_MODE)
        .await
        .context("binding the admin socket")?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let federations =
        Federations::start(ca.clone(), shutdown_rx.clone()).context("starting federation")?;
    crate::metrics::start(
        &ca,
        vec![Box::new(FederationState(federations.clone()))],
        shutdown_rx.clone(),
    )
    .await?;
    let bundle_endpoint = match &config.bundle_endpoint {
        Some(b) => Some((
            b.clone(),
            TcpListener::bind(b.listen)
                .await
                .with_context(|| format!("binding the bundle endpoint to {}", b.listen))?,
        )),
        None => None,
    };
    let psat = match &config.k8s {
        Some(k) => {
            let api = signet_k8s::KubeApi::connect(&k.connect)
                .await
                .context("connecting to the Kubernetes API ([k8s])")?;
            tracing::info!(cluster = %k.cluster, audience = %k.psat_audience, "k8s_psat node attestation enabled");
            crate::k8s::start_pod_policies(&ca, &api, k, shutdown_rx.clone());
            Some(Arc::new(crate::k8s::PsatAttestor::new(api, k.clone())))
        }
        None => None,
    };
    let (resolver, not_after) = ServerCertResolver::new(&ca)?;
    let tls_config = tls::server_config(&ca, resolver.clone())?;
    tokio::spawn(
        resolver
            .clone()
            .run(ca.clone(), not_after, shutdown_rx.clone())
            .instrument(tracing::info_span!("server-cert")),
    );
    tokio::spawn(
        rotate_loop(ca.clone(), shutdown_rx.clone()).instrument(tracing::info_span!("rotation")),
    );

    if let Some((endpoint, listener)) = bundle_endpoint {
        let (doc_tx, doc_rx) = watch::channel(bytes::Bytes::new());
        tokio::spawn(endpoint::follow_bundle(
            ca.watch_bundle(),
            endpoint.refresh_hint,
            doc_tx,
            shutdown_rx.clone(),
        ));
        let tls = endpoint::server_config(&endpoint, resolver.clone())?;
        tracing::info!(listen = %listener.local_addr()?, endpoint = ?endpoint, "serving the bundle endpoint");
        tokio::spawn(
            endpoint::serve(listener, tls, doc_rx, shutdown_rx.clone())
                .instrument(tracing::info_span!("bundle-endpoint")),
        );
    }

    if let Some(mesh) = &config.mesh_api {
        start_mesh_api(&ca, mesh, shutdown_rx.clone()).await?;
    }

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<NodeServer<NodeApi>>().await;
    health_reporter.set_serving::<AdminServer<AdminApi>>().await;
    let store_health = tokio::spawn(
        crate::api::store_health::run(ca.clone(), health_reporter.clone())
            .instrument(tracing::info_span!("store-health")),
    );

    let limits = &config.limits;
    let tracker = ConnTracker::new(limits.clone());
    tokio::spawn(
        crate::api::revocation::run(ca.clone(), tracker.clone(), shutdown_rx.clone())
            .instrument(tracing::info_span!("revocation")),
    );
    let node_server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .layer(GuardLayer::new(ca.clone()))
        .add_service(
            NodeServer::new({
                let api = NodeApi::new(ca.clone(), shutdown_rx.clone())
                    .with_federated(federations.watch());
                match &psat {
                    Some(p) => api.with_psat(p.clone()),
                    None => api,
                }
            })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(64 * MAX_MESSAGE_BYTES),
        )
        .add_service(health_service.clone())
        .serve_with_incoming_shutdown(
            tls::incoming(listener, tls_config, tracker, shutdown_rx.clone()),
            wait_for(shutdown_rx.clone()),
        );
    let admin_routes = Routes::new(AdminServer::new(
        AdminApi::new(ca.clone()).with_federations(federations.clone()),
    ))
    .add_service(health_service);
    let admin_server = signet_uds::serve(
        admin_socket,
        admin_routes,
        signet_uds::ServeOptions::default(),
        shutdown_rx.clone(),
    );

    let registering = ca.clone();
    let address = listen_addr.to_string();
    match tokio::task::spawn_blocking(move || registering.register_replica(&address)).await {
        Ok(Ok(())) => {}
        // The heartbeat writes the row once the database answers.
        Ok(Err(e)) => tracing::warn!(error = %e, "could not register this replica yet"),
        Err(e) => tracing::error!(error = %e, "replica registration task failed"),
    }
    tokio::spawn(
        crate::ca::replica::follow_other_replicas(
            ca.clone(),
            {
                let federations = federations.clone();
                Arc::new(move || {
                    if let Err(e) = federations.reload() {
                        tracing::warn!(error = %e, "could not reload the federation relationships");
                    }
                })
            },
            shutdown_rx.clone(),
        )
        .instrument(tracing::info_span!("replica-changes")),
    );
    tokio::spawn(
        crate::ca::replica::heartbeat(ca.clone(), listen_addr.to_string(), shutdown_rx.clone())
            .instrument(tracing::info_span!("replica-heartbeat")),
    );

    tracing::info!(listen = %listen_addr, "serving the node API (TLS) and the admin API");
    let node_task = tokio::spawn(node_server.instrument(tracing::info_span!("node-api")));
    let admin_task = tokio::spawn(admin_server.instrument(tracing::info_span!("admin-api")));

    signet_service::terminated().await;
    // Drain: NOT_SERVING first (health watchers, load balancers), then the
    // shutdown signal closes the listener, ends every agent stream with the
    // drain status (agents move to another replica at once) and lets
    // in-flight unary calls finish, all within `shutdown_grace`.
    tracing::info!(grace = ?config.shutdown_grace, "draining: new connections refused, agent streams told to move, in-flight requests finishing");
    // The probe stops first, so it cannot turn SERVING back on.
    store_health.abort();
    let _ = store_health.await;
    health_reporter
        .set_not_serving::<NodeServer<NodeApi>>()
        .await;
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let _ = shutdown_tx.send(true);
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        let _ = node_task.await;
        let _ = admin_task.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!("grace period over; closing remaining connections");
    }
    let flushing = ca.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || flushing.flush_audit_summaries()).await {
        tracing::error!(error = %e, "could not write the last refusal summaries");
    }
    let stopping = ca.clone();
    match tokio::task::spawn_blocking(move || stopping.replica_stopped()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not record this replica's stop"),
        Err(e) => tracing::error!(error = %e, "replica stop task failed"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Connects to the API server, binds the mesh API and serves it (and the
/// root ConfigMaps when enabled) in the background.
async fn start_mesh_api(
    ca: &Arc<Ca>,
    mesh: &crate::mesh::config::MeshConfig,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use crate::mesh::kube::Kube;
    let how = mesh.kubeconfig.clone().map_or(
        signet_k8s::KubeConnect::InCluster,
        signet_k8s::KubeConnect::Kubeconfig,
    );
    let api = signet_k8s::KubeApi::connect(&how)
        .await
        .context("mesh_api: connecting to the Kubernetes API")?;
    let listener = TcpListener::bind(mesh.listen)
        .await
        .with_context(|| format!("binding the mesh API to {}", mesh.listen))?;
    let pods = Arc::new(crate::mesh::pods::PodCache::new());
    // Only impersonation reads pods: without node accounts, none are watched.
    if !mesh.node_accounts.is_empty() {
        tokio::spawn(
            crate::mesh::pods::run_pod_watch(api.clone(), pods.clone(), shutdown.clone())
                .instrument(tracing::info_span!("mesh-pod-watch")),
        );
    }
    let auth = crate::mesh::MeshAuth {
        ca: ca.clone(),
        config: Arc::new(mesh.clone()),
        reviewer: Arc::new(Kube(api.clone())),
        pods,
    };
    tracing::info!(listen = %listener.local_addr()?, istio = mesh.istio, linkerd = mesh.linkerd, "serving the mesh CA API");
    let serving = crate::mesh::listener::serve(auth, listener, shutdown.clone())
        .context("starting the mesh API")?;
    tokio::spawn(serving.instrument(tracing::info_span!("mesh-api")));
    if mesh.publish_root_configmap {
        tokio::spawn(
            crate::mesh::kube::run_root_publisher(api, ca.watch_bundle(), shutdown)
                .instrument(tracing::info_span!("istio-root-configmap")),
        );
    }
    Ok(())
}

async fn wait_for(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

async fn rotate_loop(ca: Arc<Ca>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ca.config().rotation.tick) => {}
            _ = shutdown.changed() => return,
        }
        let ca2 = ca.clone();
        match tokio::task::spawn_blocking(move || ca2.maintain_audit_log()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "audit log upkeep failed"),
            Err(e) => tracing::error!(error = %e, "audit log upkeep task failed"),
        }
        let ca2 = ca.clone();
        match tokio::task::spawn_blocking(move || ca2.rotate_if_due()).await {
            Ok(Ok(true)) => tracing::debug!("the rotation schedule moved"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), "rotation step failed; the current authorities stay active")
            }
            Err(e) => tracing::error!(error = %e, "rotation task failed"),
        }
    }
}
