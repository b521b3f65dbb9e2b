//! (d) Two trust domains, each a separate host: its own network namespace
//! and address, its own CA, agent and Envoy. They federate both ways over
//! https_spiffe (each CA's bundle endpoint, reached over the veth). A client
//! Envoy in a.test calls a server Envoy in b.test over mTLS, each pinning
//! the other's SPIFFE ID and validating with Envoy's SPIFFE validator (SDS
//! `ALL`, one trust store per trust domain). Then b.test's root rotates:
//! a.test picks up the new root within its refresh hint, the server's SVID
//! moves under the new root, and no request fails. Then a.test deletes the
//! relationship: its side stops trusting b.test, and requests fail from
//! then on.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use signet_proto::ca::v1 as pb;
use signet_tests::{
    ADDR_A, ADDR_B, AgentProcess, CaOptions, CaProcess, EnvoyOptions, EnvoyProcess, Net, NetnsPair,
    SERVER_BODY, Traffic, Validation, envoy_binary,
};

use crate::{
    REQUEST_INTERVAL, SAMPLE_INTERVAL, assert_no_failures, authorities, authority_cli,
    intermediates_in_use, register, serial_of,
};

const CLIENT_UID: u32 = 4341;
const SERVER_UID: u32 = 4342;

/// The port of each CA's bundle endpoint, on its namespace's address.
const ENDPOINT_PORT: u16 = 8443;

/// What each bundle endpoint tells its readers: poll again after this.
const REFRESH_HINT: Duration = Duration::from_secs(2);

/// SVIDs renew at about half of this.
const SVID_TTL: &str = "20s";

/// One trust domain on its own host.
struct Domain {
    ca: CaProcess,
    agent: AgentProcess,
}

async fn domain(td: &str, net: &Net, addr: Ipv4Addr, config_dir: &std::path::Path) -> Domain {
    let config = config_dir.join(format!("{td}.toml"));
    std::fs::write(
        &config,
        format!(
            "[bundle_endpoint]\nlisten = \"{}\"\nprofile = \"https_spiffe\"\nrefresh_hint = \"{}s\"\n",
            SocketAddr::new(IpAddr::V4(addr), ENDPOINT_PORT),
            REFRESH_HINT.as_secs()
        ),
    )
    .unwrap();
    let ca = CaProcess::start(
        CaOptions::new(td)
            .in_net(net.clone())
            .flag("config", config.display().to_string())
            .flag("federation-min-refresh", "1s")
            .flag("agent-sync-interval", "1s"),
    )
    .await
    .unwrap();
    let agent = AgentProcess::start(&ca, &format!("node-{td}"), &[])
        .await
        .unwrap();
    Domain { ca, agent }
}

/// `signet ca federation create` on `local` for `remote`, whose bundle
/// endpoint is on `remote_addr`; the out-of-band bundle is the remote's
/// bundle.pem.
async fn federate(local: &CaProcess, remote: &CaProcess, remote_addr: Ipv4Addr) {
    let out = local
        .signet_ca([
            "federation".to_owned(),
            "create".to_owned(),
            remote.trust_domain().to_string(),
            "--url".to_owned(),
            format!("https://{remote_addr}:{ENDPOINT_PORT}/"),
            "--profile".to_owned(),
            "https-spiffe".to_owned(),
            "--endpoint-spiffe-id".to_owned(),
            remote.id("/signet/ca"),
            "--bundle-file".to_owned(),
            remote.bundle_path().display().to_string(),
        ])
        .await
        .unwrap();
    assert!(out.success(), "federation create failed: {out}");
}

/// The sequence of `remote`'s bundle that `local` holds, if any.
async fn federated_sequence(local: &CaProcess, remote: &str) -> Option<u64> {
    let f = local
        .admin()
        .await
        .unwrap()
        .get_federation(pb::GetFederationRequest {
            trust_domain: remote.to_owned(),
        })
        .await
        .ok()?
        .into_inner();
    f.bundle.map(|b| b.sequence)
}

async fn own_sequence(ca: &CaProcess) -> u64 {
    ca.admin()
        .await
        .unwrap()
        .get_bundle(pb::GetBundleRequest {})
        .await
        .unwrap()
        .into_inner()
        .sequence
}

/// Waits until `local` holds `remote`'s bundle at `sequence` or later;
/// returns how long that took.
async fn wait_fetched(
    local: &Domain,
    remote: &Domain,
    sequence: u64,
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    let td = remote.ca.trust_domain().to_string();
    loop {
        let held = federated_sequence(&local.ca, &td).await;
        if held.is_some_and(|s| s >= sequence) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "{} does not hold sequence {sequence} of {td} after {timeout:?} (holds {held:?})\n\
             --- {} CA log ---\n{}",
            local.ca.trust_domain(),
            local.ca.trust_domain(),
            local.ca.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The test (d).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_trust_domains_in_two_namespaces_survive_a_root_rotation_and_part() {
    envoy_binary().unwrap();
    let pair = NetnsPair::create().unwrap();
    let (net_a, net_b) = (Net::Ns(pair.a.clone()), Net::Ns(pair.b.clone()));
    let config_dir = tempfile::tempdir().unwrap();
    let a = domain("a.test", &net_a, ADDR_A, config_dir.path()).await;
    let b = domain("b.test", &net_b, ADDR_B, config_dir.path()).await;

    federate(&a.ca, &b.ca, ADDR_B).await;
    federate(&b.ca, &a.ca, ADDR_A).await;
    let timeout = 5 * REFRESH_HINT;
    let first_a = wait_fetched(&a, &b, own_sequence(&b.ca).await, timeout).await;
    let first_b = wait_fetched(&b, &a, own_sequence(&a.ca).await, timeout).await;
    eprintln!(
        "first fetch over the veth: a.test got b.test's bundle in {first_a:.1?}, b.test got a.test's in {first_b:.1?}"
    );

    let client_id = a.ca.id("/client");
    let server_id = b.ca.id("/server");
    register(
        &a.ca,
        "node-a.test",
        &client_id,
        CLIENT_UID,
        SVID_TTL,
        &["b.test"],
    )
    .await;
    register(
        &b.ca,
        "node-b.test",
        &server_id,
        SERVER_UID,
        SVID_TTL,
        &["a.test"],
    )
    .await;

    let server = EnvoyProcess::start(
        EnvoyOptions::server("server", SERVER_UID, b.agent.sds_socket(), &client_id)
            .validation(Validation::SpiffeAll)
            .in_net(net_b.clone(), IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
    )
    .await
    .unwrap();
    let client = EnvoyProcess::start(
        EnvoyOptions::client(
            "client",
            CLIENT_UID,
            a.agent.sds_socket(),
            server.port().unwrap(),
            &server_id,
        )
        .validation(Validation::SpiffeAll)
        .in_net(net_a.clone(), IpAddr::V4(Ipv4Addr::LOCALHOST))
        .upstream_ip(IpAddr::V4(ADDR_B)),
    )
    .await
    .unwrap();
    let pids = [client.pid(), server.pid()];
    let envoys = [&client, &server];
    let agents = [&a.agent, &b.agent];

    // The first request across: both agents must have the other's bundle
    // in the SPIFFE validator config first.
    let started = Instant::now();
    loop {
        match client.get("/").await {
            Ok(r) if r.status == 200 && r.body == SERVER_BODY => break,
            other => assert!(
                started.elapsed() < Duration::from_secs(30),
                "no request from a.test reached b.test in 30 s: {other:?}\n{}\n{}\n{}\n{}",
                client.summary().await,
                server.summary().await,
                a.agent.log(),
                b.agent.log()
            ),
        }
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
    let client_port = client.port().unwrap();
    let traffic = Traffic::start_in(net_a.clone(), client_port, REQUEST_INTERVAL, SERVER_BODY);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_no_failures(&traffic, "across the trust domains", &envoys, &agents).await;

    // 1. b.test prepares a new root: a.test fetches the bundle that carries
    //    it within its refresh hint.
    let prepared = authority_cli(&b.ca, &["prepare", "root"]).await;
    let new_root = prepared["authority"]["id"].as_str().unwrap().to_owned();
    let sequence = prepared["bundle_sequence"]
        .as_u64()
        .unwrap_or_else(|| panic!("no bundle_sequence in {prepared}"));
    // b.test serves its bundle to a.test, which polls it every
    // REFRESH_HINT: b.test refuses to use the new root before three hints
    // have passed, even though its own agent has the bundle at once.
    let early =
        b.ca.signet_ca(["authority", "activate", new_root.as_str()])
            .await
            .unwrap();
    assert!(
        !early.success() && early.stderr.contains("refresh hint"),
        "an activation right after prepare was not held for the federated peer: {early:?}"
    );
    let picked_up = wait_fetched(&a, &b, sequence, 5 * REFRESH_HINT).await;
    eprintln!(
        "a.test held b.test's bundle with the new root {picked_up:.1?} after it was prepared (refresh hint {REFRESH_HINT:?})"
    );
    // The bundle travels on, CA -> agent -> Envoy: the client Envoy's
    // validator for b.test holds the new root before b.test signs with it.
    let new_root_cert = authorities(&b.ca)
        .await
        .into_iter()
        .find(|x| x.id == new_root)
        .unwrap()
        .certificate;
    let served = Instant::now();
    while !client
        .validation_roots()
        .await
        .unwrap()
        .contains(&new_root_cert)
    {
        assert!(
            served.elapsed() < Duration::from_secs(20),
            "a.test's client Envoy does not trust b.test's new root 20 s after a.test fetched it\n{}",
            a.agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "the client Envoy in a.test trusts b.test's new root {:.1?} after a.test fetched it",
        served.elapsed()
    );

    // 2. b.test activates it (its own agent acknowledged it: no --force),
    //    and the server's next SVID chains to it.
    let gate = Instant::now();
    loop {
        let all = authorities(&b.ca).await;
        let root = all.iter().find(|x| x.id == new_root).unwrap();
        if root.agents_connected >= 1 && root.agents_acknowledged >= root.agents_connected {
            break;
        }
        assert!(
            gate.elapsed() < Duration::from_secs(30),
            "b.test's agent did not acknowledge the new root: {root:?}"
        );
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
    // Then the hold: 3 refresh hints after the root was published.
    let held = Instant::now();
    loop {
        let out =
            b.ca.signet_ca(["authority", "activate", new_root.as_str()])
                .await
                .unwrap();
        if out.success() {
            break;
        }
        assert!(
            out.stderr.contains("refresh hint") && held.elapsed() < 5 * REFRESH_HINT,
            "activation refused for another reason, or held too long: {out:?}"
        );
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
    let activated = authority_cli(&b.ca, &["list"]).await;
    let activated = serde_json::json!({
        "authority": activated["authorities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == new_root.as_str())
            .unwrap()
    });
    assert_eq!(activated["authority"]["state"], "active", "{activated}");
    let new_intermediate = authorities(&b.ca)
        .await
        .into_iter()
        .find(|x| {
            x.parent_id == new_root
                && x.kind == i32::from(pb::AuthorityKind::Intermediate)
                && x.state == i32::from(pb::AuthorityState::Active)
        })
        .unwrap_or_else(|| panic!("no active intermediate under the new root {new_root}"));
    let new_serial = serial_of(&new_intermediate.certificate);
    let moved = Instant::now();
    loop {
        let now = intermediates_in_use(&[&server]).await;
        if now.get("server") == Some(&vec![new_serial.clone()]) {
            break;
        }
        assert_no_failures(&traffic, "while b.test's root rotated", &envoys, &agents).await;
        assert!(
            moved.elapsed() < Duration::from_secs(30),
            "the server's SVID did not move under b.test's new root in 30 s: {now:?}\n{}",
            b.agent.log()
        );
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
    eprintln!(
        "the server presents an SVID under b.test's new root {:.1?} after its activation",
        moved.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_no_failures(&traffic, "after b.test's root rotation", &envoys, &agents).await;
    let before_part = traffic.outcomes().len();

    // 3. a.test deletes the relationship: its agent drops b.test's bundle,
    //    the client Envoy's validator no longer knows b.test, and every
    //    request fails from then on.
    let fail_verify = EnvoyProcess::upstream_ssl_stat("fail_verify_error");
    let failed_before = client.stats(&[&fail_verify]).await.unwrap()[0];
    let out =
        a.ca.signet_ca(["federation", "delete", "b.test"])
            .await
            .unwrap();
    assert!(out.success(), "federation delete failed: {out}");
    let parted = Instant::now();
    let first_failure = loop {
        let outcomes = traffic.outcomes();
        if let Some(i) = outcomes
            .iter()
            .skip(before_part)
            .position(|o| o.result.is_err())
        {
            break before_part + i;
        }
        assert!(
            parted.elapsed() < Duration::from_secs(20),
            "a.test still reaches b.test 20 s after deleting the relationship (spire#1816)\n{}\n{}",
            client.summary().await,
            a.agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "requests from a.test fail {:.1?} after the relationship was deleted",
        parted.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcomes = traffic.stop().await;
    let after: Vec<_> = outcomes.iter().skip(first_failure).collect();
    assert!(
        after.len() >= 5,
        "too few requests after the part: {}",
        after.len()
    );
    let served: Vec<_> = after.iter().filter(|o| o.result.is_ok()).collect();
    assert!(
        served.is_empty(),
        "{} requests were still served after the first refusal (the bundle lingers): {served:?}",
        served.len()
    );
    // Before the part, not one failed.
    let early: Vec<_> = outcomes[..first_failure]
        .iter()
        .filter(|o| o.result.is_err())
        .collect();
    assert!(
        early.is_empty(),
        "requests failed before the part: {early:?}"
    );
    let failed_after = client.stats(&[&fail_verify]).await.unwrap()[0];
    assert!(
        failed_after > failed_before,
        "the client's refusals were not certificate verification failures ({fail_verify} \
         {failed_before} -> {failed_after}): {:?}",
        after.last()
    );
    assert!(
        federated_sequence(&a.ca, "b.test").await.is_none(),
        "a.test still lists the relationship"
    );
    // Nothing of b.test lingers in what the client Envoy trusts; and the
    // relationship was one-way: b.test's server still trusts a.test.
    let b_roots: Vec<Vec<u8>> = authorities(&b.ca)
        .await
        .into_iter()
        .filter(|x| x.kind == i32::from(pb::AuthorityKind::Root))
        .map(|x| x.certificate)
        .collect();
    let client_trusts = client.validation_roots().await.unwrap();
    assert!(
        !client_trusts.iter().any(|c| b_roots.contains(c)),
        "a.test's client Envoy still trusts a root of b.test after the relationship was deleted"
    );
    let a_root = crate::active(&a.ca, pb::AuthorityKind::Root)
        .await
        .certificate;
    assert!(
        server.validation_roots().await.unwrap().contains(&a_root),
        "deleting a.test's relationship to b.test took a.test's root from b.test's server"
    );
    assert_eq!([client.pid(), server.pid()], pids, "an Envoy was restarted");

    for mut envoy in [client, server] {
        envoy.stop().await.unwrap();
    }
    for mut d in [a, b] {
        d.agent.stop().await.unwrap();
        d.ca.stop().await.unwrap();
    }
    drop(pair);
}
