//! (b) The active intermediate is tainted (`signet ca authority taint`):
//! every SVID under it is re-issued under a fresh intermediate within the
//! taint window, with requests flowing. Then it is revoked: an SVID still
//! chaining to it (minted before the taint) is refused by the server Envoy,
//! judged by openssl s_client, while the Envoys' own traffic goes on.

use std::path::Path;
use std::time::{Duration, Instant};

use signet_proto::ca::v1 as pb;
use signet_tests::{
    CaOptions, CaProcess, EnvoyOptions, EnvoyProcess, SERVER_BODY, SvidFiles, Traffic, Validation,
    envoy_binary, write_pem_chain,
};

use crate::{
    Mesh, REQUEST_INTERVAL, SAMPLE_INTERVAL, active, assert_traffic_flowed, authority_cli,
    intermediates_in_use, register, serial_of,
};

const CLIENT_UID: u32 = 4321;
const SERVER_UID: u32 = 4322;
const ROOTCA_SERVER_UID: u32 = 4323;

/// The agents spread the re-issue over this window after the taint.
const WINDOW: Duration = Duration::from_secs(10);

/// How long, past the window, a re-issue may still be on its way (one
/// signing round trip, the agent's next look at the bundle, SDS push).
const SLACK: Duration = Duration::from_secs(15);

/// The SVIDs live an hour: no renewal of their own happens during the test,
/// so every new serial comes from the taint.
const SVID_TTL: &str = "1h";

/// What the server Envoy answered an openssl client presenting `svid`:
/// `Ok(response text)` when it served the request, `Err(output)` when the
/// TLS handshake or the request failed.
async fn openssl_request(port: u16, svid: &SvidFiles, dir: &Path) -> Result<String, String> {
    let leaf = dir.join("leaf.pem");
    let rest = dir.join("intermediates.pem");
    write_pem_chain(&leaf, &svid.chain[..1]).unwrap();
    write_pem_chain(&rest, &svid.chain[1..]).unwrap();
    let mut child = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .arg("-cert")
        .arg(&leaf)
        .arg("-cert_chain")
        .arg(&rest)
        .arg("-key")
        .arg(svid.key_path())
        .arg("-CAfile")
        .arg(svid.bundle_path())
        .args(["-verify_return_error", "-quiet", "-no_ign_eof"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running openssl");
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"GET / HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        // Keep stdin open until the answer is in: -no_ign_eof would
        // otherwise end the session at once.
        let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
            .await
            .expect("openssl s_client ran for more than 10 s")
            .unwrap();
        drop(stdin);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if stdout.contains(SERVER_BODY) {
            Ok(stdout)
        } else {
            Err(format!(
                "exit {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
                out.status
            ))
        }
    }
}

/// The test (b).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taint_reissues_every_svid_in_its_window_and_revoke_refuses_what_still_chains_to_it() {
    envoy_binary().unwrap();
    let ca = CaProcess::start(
        CaOptions::default()
            .flag("taint-reissue-window", "10s")
            .flag("default-x509-svid-ttl", SVID_TTL)
            .flag("agent-sync-interval", "1s"),
    )
    .await
    .unwrap();
    // The server checks clients with Envoy's SPIFFE validator (`ALL`, the
    // CRLs appended to its trust bundle), the client checks the server
    // with `ROOTCA` (the CRLs in the validation context).
    let mesh = Mesh::start(
        ca,
        "taint",
        [CLIENT_UID, SERVER_UID],
        SVID_TTL,
        [Validation::RootCa, Validation::SpiffeAll],
    )
    .await;
    // A second server for the same clients that checks them with `ROOTCA`:
    // the revocation must hold for both validators.
    register(
        &mesh.ca,
        "taint",
        &mesh.ca.id("/server-rootca"),
        ROOTCA_SERVER_UID,
        SVID_TTL,
        &[],
    )
    .await;
    let mut rootca_server = EnvoyProcess::start(EnvoyOptions::server(
        "server-rootca",
        ROOTCA_SERVER_UID,
        mesh.agent.sds_socket(),
        &mesh.client_id,
    ))
    .await
    .unwrap();
    let servers = [&mesh.server, &rootca_server];
    let envoys = [&mesh.client, &mesh.server, &rootca_server];

    // An SVID for the client's identity, minted by an operator before the
    // taint: the server accepts it now.
    let minted = mesh
        .ca
        .mint_cli(&mesh.client_id, "minted", &["--ttl", "30m"])
        .await
        .unwrap();
    let scratch = mesh.ca.scratch_dir().to_owned();
    for server in servers {
        let accepted = openssl_request(server.port().unwrap(), &minted, &scratch).await;
        assert!(
            accepted.is_ok(),
            "before the taint {} refused an SVID for the client's own identity: {accepted:?}\n{}",
            server.name(),
            server.log()
        );
    }

    let old = active(&mesh.ca, pb::AuthorityKind::Intermediate).await;
    let old_serial = serial_of(&old.certificate);
    assert_eq!(
        serial_of(&minted.chain[1]),
        old_serial,
        "the minted SVID does not chain through the active intermediate"
    );
    for (envoy, ints) in intermediates_in_use(&envoys).await {
        assert_eq!(
            ints,
            vec![old_serial.clone()],
            "{envoy} does not hold an SVID under the active intermediate"
        );
    }

    let traffic = Traffic::start(mesh.client.port().unwrap(), REQUEST_INTERVAL, SERVER_BODY);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. Taint.
    let tainted_at = Instant::now();
    let tainted = authority_cli(&mesh.ca, &["taint", &old.id]).await;
    assert_eq!(tainted["authority"]["state"], "tainted", "{tainted}");
    let fresh = active(&mesh.ca, pb::AuthorityKind::Intermediate).await;
    assert_ne!(fresh.id, old.id, "tainting made no new active intermediate");
    let fresh_serial = serial_of(&fresh.certificate);

    // Every SVID the Envoys hold moves to the fresh intermediate, within
    // the window (plus the way there).
    let mut moved_at = std::collections::BTreeMap::new();
    loop {
        let now = intermediates_in_use(&envoys).await;
        for (envoy, ints) in &now {
            if *ints == vec![fresh_serial.clone()] {
                moved_at
                    .entry(envoy.clone())
                    .or_insert_with(|| tainted_at.elapsed());
            }
        }
        if moved_at.len() == envoys.len() {
            break;
        }
        mesh.assert_no_failures(&traffic, "while the SVIDs were re-issued after the taint")
            .await;
        assert!(
            tainted_at.elapsed() < WINDOW + SLACK,
            "not every Envoy SVID was re-issued under the fresh intermediate {fresh_serial} \
             within {:?} of the taint; intermediates in use: {now:?}\n--- agent log ---\n{}",
            WINDOW + SLACK,
            mesh.agent.log()
        );
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
    let took = tainted_at.elapsed();
    mesh.assert_no_failures(&traffic, "while the SVIDs were re-issued after the taint")
        .await;
    eprintln!(
        "every SVID re-issued under the fresh intermediate {took:.1?} after the taint (window {WINDOW:?}); per Envoy: {moved_at:?}"
    );

    // Tainted is not revoked: the minted SVID is still accepted, so the
    // refusal below is the revocation's doing.
    for server in servers {
        let still = openssl_request(server.port().unwrap(), &minted, &scratch).await;
        assert!(
            still.is_ok(),
            "after the taint, before the revoke, {} refused the minted SVID: {still:?}",
            server.name()
        );
    }

    // 2. Revoke. The minted SVID is still valid under it: without --force
    //    the CA refuses, and says why; nothing changes.
    let refused = mesh
        .ca
        .signet_ca(["authority", "revoke", &old.id])
        .await
        .unwrap();
    assert!(
        !refused.success(),
        "revoke without --force went through although a minted SVID still chains to it: {refused}"
    );
    let still = authority_cli(&mesh.ca, &["list"]).await;
    let state = still["authorities"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["id"] == old.id.as_str())
        .map(|a| a["state"].clone());
    assert_eq!(
        state,
        Some(serde_json::json!("tainted")),
        "a refused revoke changed the authority: {still}"
    );
    let fail_verify = EnvoyProcess::listener_ssl_stat("fail_verify_error");
    let mut fail_before = Vec::new();
    for server in servers {
        fail_before.push(server.stats(&[&fail_verify]).await.unwrap()[0]);
    }
    let revoked = authority_cli(&mesh.ca, &["revoke", &old.id, "--force"]).await;
    assert_eq!(revoked["authority"]["state"], "revoked", "{revoked}");

    // The CRLs reach the server Envoys: each refuses the minted SVID.
    let revoked_at = Instant::now();
    for (server, before) in servers.into_iter().zip(fail_before) {
        let port = server.port().unwrap();
        let last = loop {
            match openssl_request(port, &minted, &scratch).await {
                Err(out) => break out,
                Ok(text) => assert!(
                    revoked_at.elapsed() < Duration::from_secs(20),
                    "{} still serves an SVID under the revoked intermediate 20 s after the \
                     revoke: {text}\n{}\n--- agent log ---\n{}",
                    server.name(),
                    server.summary().await,
                    mesh.agent.log()
                ),
            }
            tokio::time::sleep(SAMPLE_INTERVAL).await;
        };
        let after = server.stats(&[&fail_verify]).await.unwrap()[0];
        assert!(
            after > before,
            "{} did not count the refused handshake as a verification failure \
             ({before} -> {after}); openssl said:\n{last}",
            server.name()
        );
        eprintln!(
            "{} refused it {:.1?} after the revoke; openssl said:\n{last}",
            server.name(),
            revoked_at.elapsed()
        );
    }

    // The Envoys' own traffic, under the fresh intermediate, goes on with
    // the CRLs in force.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for server in servers {
        let again = openssl_request(server.port().unwrap(), &minted, &scratch).await;
        assert!(
            again.is_err(),
            "{} served the revoked SVID again: {again:?}",
            server.name()
        );
    }
    let took = traffic.elapsed();
    mesh.assert_no_failures(&traffic, "after the revoke").await;
    let outcomes = traffic.stop().await;
    assert_traffic_flowed(outcomes.len(), took);
    mesh.assert_never_restarted();
    rootca_server.stop().await.unwrap();
    mesh.shut_down().await;
}
