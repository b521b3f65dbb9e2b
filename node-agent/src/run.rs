//! Wires the agent together and runs it until SIGTERM/SIGINT.

use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::sync::watch;
use tracing::Instrument;

use crate::attest::WorkloadAttestor;
use crate::attest::audit::{AuditLog, Audited};
use crate::attest::k8s::K8sAttestor;
use crate::attest::unix::UnixAttestor;
use crate::config::{Bootstrap, Config};
use crate::manager::Manager;
use crate::node::Stored;
use crate::node::addresses::{CaAddresses, local_spread_key};
use crate::node::client::{CaClient, ServerTrust};
use crate::state::JwtSource;
use crate::{files, node, sds, workload_api};

/// Runs the agent.
///
/// # Errors
/// Start-up failures: no way to attest, refused attestation, sockets.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    tracing::info!(
        trust_domain = %config.trust_domain,
        ca = %config.ca_addresses.join(","),
        data_dir = %config.data_dir.display(),
        workload_api = %config.workload_api_socket.display(),
        sds = %config.sds_socket.display(),
        "starting signet-agent"
    );
    // Unix selectors always; pod selectors too when [k8s_workload] is set
    // (checked here, before anything is bound).
    let mut attestors: Vec<Arc<dyn WorkloadAttestor>> = vec![Arc::new(UnixAttestor::default())];
    if let Some(k8s) = &config.k8s_workload {
        tracing::info!(source = k8s.source.name(), node = %k8s.node_name, "pod workload attestation on");
        attestors.push(Arc::new(
            K8sAttestor::start(k8s.clone())
                .await
                .context("[k8s_workload]")?,
        ));
    }
    // Every attestor's refusals go to the audit log.
    let audit = AuditLog::start(config.audit.clone()).context("starting the audit log")?;
    tracing::info!(audit_log = %config.audit.path.display(), "auditing refused workloads");
    let attestors: Vec<Arc<dyn WorkloadAttestor>> = attestors
        .into_iter()
        .map(|a| Arc::new(Audited::new(a, audit.clone())) as Arc<dyn WorkloadAttestor>)
        .collect();
    let metrics = crate::metrics::bind(config.metrics_listen).await?;
    let (svid, bundle, client) = match node::load(&config.data_dir, &config.trust_domain)? {
        Stored::Usable(pair) if pair.0.not_after > std::time::SystemTime::now() => {
            let (svid, bundle) = *pair;
            tracing::info!(node = %svid.spiffe_id, "using the node SVID from the data directory");
            let client = CaClient::new(
                CaAddresses::system(config.ca_addresses.clone(), svid.spiffe_id.as_str()),
                &config.ca_server_name,
                &config.trust_domain,
                ServerTrust::Roots(bundle.x509_authorities().to_vec()),
            )?;
            (svid, bundle, client)
        }
        stored => {
            match stored {
                Stored::Usable(..) => {
                    tracing::warn!("the stored node SVID has expired; attesting again");
                }
                Stored::Unusable(why) => {
                    tracing::warn!(reason = %why, "the stored node identity is unusable; attesting again");
                }
                Stored::Nothing => {}
            }
            let credential = match &config.k8s_psat_token_file {
                // Read at each attestation: the kubelet rotates the token.
                Some(path) => node::NodeCredential::K8sPsat(
                    std::fs::read(path)
                        .with_context(|| format!("reading the k8s_psat token {}", path.display()))?,
                ),
                None => node::NodeCredential::JoinToken(config.join_token.clone().context(
                    "this node has not attested yet: give a join token (--join-token or SIGNET_JOIN_TOKEN)",
                )?),
            };
            let trust = match &config.bootstrap {
                Bootstrap::BundleFile(path) => {
                    let roots = node::certs_from_pem(
                        &std::fs::read(path)
                            .with_context(|| format!("reading {}", path.display()))?,
                    )?;
                    if roots.is_empty() {
                        bail!("{} holds no certificate", path.display());
                    }
                    ServerTrust::Roots(roots)
                }
                Bootstrap::RootHash(h) => ServerTrust::PinnedRoot(*h),
                Bootstrap::Insecure => {
                    tracing::warn!("insecure bootstrap: trusting whichever CA answers, as asked");
                    ServerTrust::Insecure
                }
                Bootstrap::None => bail!(
                    "first start needs trust in the CA: --trust-bundle FILE, --ca-root-hash sha256:HEX or (unsafe) --insecure-bootstrap"
                ),
            };
            let client = CaClient::new(
                CaAddresses::system(config.ca_addresses.clone(), &local_spread_key()),
                &config.ca_server_name,
                &config.trust_domain,
                trust,
            )?;
            let (svid, bundle) = node::attest(&client, &credential).await?;
            node::save(&config.data_dir, &svid, &bundle)?;
            tracing::info!(node = %svid.spiffe_id, "attested to the CA");
            // A new channel: the attestation connection carries no client
            // certificate, and HTTP/2 would keep reusing it.
            drop(client);
            // Spread by the node's ID from now on, as after a restart.
            let client = CaClient::new(
                CaAddresses::system(config.ca_addresses.clone(), svid.spiffe_id.as_str()),
                &config.ca_server_name,
                &config.trust_domain,
                ServerTrust::Roots(bundle.x509_authorities().to_vec()),
            )?;
            (svid, bundle, client)
        }
    };
    client.set_identity(svid.client_identity());
    for socket in [&config.workload_api_socket, &config.sds_socket] {
        crate::public_dir::prepare(socket)?;
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let manager = Manager::new(config.clone(), client, svid, bundle);
    crate::metrics::serve(metrics, manager.subscribe(), shutdown_rx.clone());
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(
        manager
            .clone()
            .run(shutdown_rx.clone())
            .instrument(tracing::info_span!("manager")),
    ));
    let jwt: Arc<dyn JwtSource> = manager.clone();
    let wl = workload_api::WorkloadApi::new(manager.subscribe(), attestors.clone(), jwt);
    let wl_socket = config.workload_api_socket.clone();
    let wl_shutdown = shutdown_rx.clone();
    tasks.push(tokio::spawn(
        async move {
            if let Err(e) = workload_api::serve(wl_socket, wl, wl_shutdown).await {
                tracing::error!(error = %format!("{e:#}"), "the Workload API server failed");
            }
        }
        .instrument(tracing::info_span!("workload-api")),
    ));
    let sds_server = sds::SdsServer::new(manager.subscribe(), attestors);
    let sds_socket = config.sds_socket.clone();
    let sds_shutdown = shutdown_rx.clone();
    tasks.push(tokio::spawn(
        async move {
            if let Err(e) = sds::serve(sds_socket, sds_server, sds_shutdown).await {
                tracing::error!(error = %format!("{e:#}"), "the SDS server failed");
            }
        }
        .instrument(tracing::info_span!("sds")),
    ));
    if let Some(f) = config.files.clone() {
        tasks.push(tokio::spawn(
            files::run(f, manager.subscribe(), shutdown_rx.clone())
                .instrument(tracing::info_span!("files")),
        ));
    }

    signet_service::terminated().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;
    let _ = tokio::task::spawn_blocking(move || audit.flush()).await;
    tracing::info!("stopped");
    Ok(())
}
