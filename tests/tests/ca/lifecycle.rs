//! The trust lifecycle against real processes: a CA killed at each step of
//! a root rotation resumes and never signs with a key its agent had not
//! been sent first; a stopped agent holds activation back until the ack
//! timeout and is named in the log; the `signet ca authority` commands.

use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use signet_identity::x509::verify_x509_svid;
use signet_identity::{KeyType, PrivateKey, TrustBundle};
use signet_proto::ca::v1 as pb;
use signet_proto::ca::v1::admin_client::AdminClient;
use signet_tests::{AgentProcess, CaOptions, CaProcess};
use tonic::transport::Channel;

/// Longest wait for an agent to serve the CA's current bundle and say so:
/// after a CA restart it reconnects with backoff, and a report that failed
/// while the CA was down is only repeated at its 30 s heartbeat.
const SYNC_TIMEOUT: Duration = Duration::from_secs(75);

/// Waits until the agent `node` reports serving the CA's current bundle,
/// and returns that bundle: one the agent has served.
async fn served(ca: &CaProcess, admin: &mut AdminClient<Channel>, node: &str) -> TrustBundle {
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        let bundle = admin
            .get_bundle(pb::GetBundleRequest {})
            .await
            .unwrap()
            .into_inner();
        let agents = admin
            .list_agents(pb::ListAgentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .agents;
        let reported = agents
            .iter()
            .find(|a| a.name == node)
            .map(|a| a.bundle_sequence);
        if reported == Some(bundle.sequence) {
            return signet_proto::convert::bundle_from_pb(&bundle).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "agent {node} does not serve sequence {} (reports {reported:?})\n--- CA log ---\n{}",
            bundle.sequence,
            ca.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn mint(
    admin: &mut AdminClient<Channel>,
    ca: &CaProcess,
) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let svid = admin
        .mint_x509_svid(pb::MintX509SvidRequest {
            spiffe_id: ca.id("/probe"),
            csr: key.csr_der().unwrap(),
            ttl_seconds: 0,
            dns_names: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .svid
        .unwrap();
    svid.cert_chain.into_iter().map(Into::into).collect()
}

/// The SVID validates against a bundle the agent served before it was issued.
fn vouched(chain: &[rustls_pki_types::CertificateDer<'static>], served: &[TrustBundle]) {
    let now = SystemTime::now();
    assert!(
        served
            .iter()
            .any(|b| verify_x509_svid(chain, b, now).is_ok()),
        "an SVID was issued under a root no served bundle carried"
    );
}

async fn authorities(admin: &mut AdminClient<Channel>) -> Vec<pb::Authority> {
    admin
        .list_authorities(pb::ListAuthoritiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .authorities
}

fn is_root(a: &pb::Authority) -> bool {
    a.kind == i32::from(pb::AuthorityKind::Root)
}

/// The CA exited through the test hook at `step` (not by accident), and is reaped.
async fn crashed_at(ca: &mut CaProcess, step: &str) {
    let mark = format!("SIGNET_TEST_CRASH_AT={step}: exiting");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ca.log().contains(&mark) {
        assert!(
            Instant::now() < deadline,
            "the CA did not stop at {step}\n{}",
            ca.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Reap it (it has exited; this is a no-op kill).
    ca.kill_hard();
}

async fn rotation_survives_a_crash_at(step: &str) {
    let mut opts = CaOptions::default();
    if step != "gated" {
        opts = opts.env("SIGNET_TEST_CRASH_AT", step);
    }
    let mut ca = CaProcess::start(opts).await.unwrap();
    let agent = AgentProcess::start(&ca, "node-a", &[]).await.unwrap();
    let mut admin = ca.admin().await.unwrap();
    let mut bundles = vec![served(&ca, &mut admin, "node-a").await];
    let first = mint(&mut admin, &ca).await;
    vouched(&first, &bundles);
    let old_root = authorities(&mut admin)
        .await
        .into_iter()
        .find(is_root)
        .unwrap()
        .id;

    if step == "gated" {
        // The agent cannot acknowledge: activation waits.
        agent.pause().unwrap();
    }
    let prepared = admin
        .prepare_authority(pb::PrepareAuthorityRequest {
            kind: pb::AuthorityKind::Root.into(),
        })
        .await;
    match step {
        "prepared" | "published" => {
            assert!(prepared.is_err(), "the CA answered after its crash point");
            crashed_at(&mut ca, step).await;
        }
        "gated" => {
            let new = prepared.unwrap().into_inner().authority.unwrap();
            let refused = admin
                .activate_authority(pb::ActivateAuthorityRequest {
                    id: new.id.clone(),
                    force: false,
                })
                .await
                .unwrap_err();
            assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
            assert!(refused.message().contains("node-a"), "{refused:?}");
            ca.kill_hard();
            agent.resume().unwrap();
        }
        "activated" => {
            let new = prepared.unwrap().into_inner().authority.unwrap();
            bundles.push(served(&ca, &mut admin, "node-a").await);
            let activated = admin
                .activate_authority(pb::ActivateAuthorityRequest {
                    id: new.id,
                    force: false,
                })
                .await;
            assert!(activated.is_err(), "the CA answered after its crash point");
            crashed_at(&mut ca, step).await;
        }
        other => panic!("unknown step {other}"),
    }

    // Restart without the hook: it resumes from its journal.
    ca.options_mut().env.clear();
    ca.start_again().await.unwrap();
    let mut admin = ca.admin().await.unwrap();
    bundles.push(served(&ca, &mut admin, "node-a").await);
    // Issued in between: still under a root the agent had.
    vouched(&mint(&mut admin, &ca).await, &bundles);
    let listed = authorities(&mut admin).await;
    let new_root = listed
        .iter()
        .find(|a| is_root(a) && a.id != old_root)
        .unwrap_or_else(|| panic!("the prepared root was lost: {listed:#?}"));
    assert!(new_root.published_sequence > 0, "{new_root:#?}");
    assert!(
        bundles.last().unwrap().x509_authorities().len() == 2,
        "both roots published"
    );
    if step != "activated" {
        assert_eq!(new_root.state, i32::from(pb::AuthorityState::Prepared));
        admin
            .activate_authority(pb::ActivateAuthorityRequest {
                id: new_root.id.clone(),
                force: false,
            })
            .await
            .unwrap_or_else(|e| panic!("{e:?}\n{}", ca.log()));
    }
    let listed = authorities(&mut admin).await;
    let active_root = listed
        .iter()
        .find(|a| is_root(a) && a.state == i32::from(pb::AuthorityState::Active))
        .unwrap();
    assert_eq!(active_root.id, new_root.id);
    // New SVIDs chain to the new root, which the agent served before.
    let after = mint(&mut admin, &ca).await;
    vouched(&after, &bundles);
    let only_new = TrustBundle::new(ca.trust_domain().clone())
        .with_x509_authorities([rustls_pki_types::CertificateDer::from(
            new_root.certificate.clone(),
        )])
        .unwrap();
    verify_x509_svid(&after, &only_new, SystemTime::now()).unwrap();
    // And the first SVID still validates: the old root stays published.
    let current = served(&ca, &mut admin, "node-a").await;
    verify_x509_svid(&first, &current, SystemTime::now()).unwrap();
    drop(agent);
}

#[tokio::test]
async fn a_ca_killed_after_prepare_publishes_on_restart() {
    rotation_survives_a_crash_at("prepared").await;
}

#[tokio::test]
async fn a_ca_killed_after_publish_resumes() {
    rotation_survives_a_crash_at("published").await;
}

#[tokio::test]
async fn a_ca_killed_while_gated_resumes() {
    rotation_survives_a_crash_at("gated").await;
}

#[tokio::test]
async fn a_ca_killed_right_after_activate_signs_with_the_new_root() {
    rotation_survives_a_crash_at("activated").await;
}

#[tokio::test]
async fn a_stopped_agent_holds_activation_back_until_the_ack_timeout() {
    let ca = CaProcess::start(
        CaOptions::default()
            .flag("activation-ack-timeout", "4s")
            .flag("agent-sync-interval", "1s"),
    )
    .await
    .unwrap();
    let lagging = AgentProcess::start(&ca, "lagging", &[]).await.unwrap();
    let _current = AgentProcess::start(&ca, "current", &[]).await.unwrap();
    let mut admin = ca.admin().await.unwrap();
    served(&ca, &mut admin, "lagging").await;
    lagging.pause().unwrap();

    let prepared = admin
        .prepare_authority(pb::PrepareAuthorityRequest {
            kind: pb::AuthorityKind::Jwt.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let id = prepared.authority.unwrap().id;
    served(&ca, &mut admin, "current").await;
    let activate = pb::ActivateAuthorityRequest {
        id: id.clone(),
        force: false,
    };
    let refused = admin
        .activate_authority(activate.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("lagging (at"), "{refused:?}");
    assert!(!refused.message().contains("current"), "{refused:?}");
    let listed = authorities(&mut admin).await;
    let row = listed.iter().find(|a| a.id == id).unwrap();
    assert_eq!((row.agents_acknowledged, row.agents_connected), (1, 2));

    // After the ack timeout the time rule lets it through, and the log
    // names the agent that lagged.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match admin.activate_authority(activate.clone()).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
                assert!(Instant::now() < deadline, "still refused: {e:?}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    let log = ca.log();
    let warned = log
        .lines()
        .find(|l| l.contains("activating after the ack timeout"))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(warned.contains("lagging"), "{warned}");

    // Woken up, it catches up with the bundle.
    lagging.resume().unwrap();
    served(&ca, &mut admin, "lagging").await;
}

fn json(out: &signet_tests::CliOutput) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{out}"))
}

#[tokio::test]
async fn cli_authority_commands_against_a_live_ca() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let cli = |args: &'static [&'static str]| ca.signet_ca(args.to_vec());
    let listed = json(
        &cli(&["--output", "json", "authority", "list"])
            .await
            .unwrap()
            .ok()
            .unwrap(),
    );
    let list = listed["authorities"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{listed:#}");
    assert!(
        list.iter()
            .all(|a| a["published_sequence"].as_u64() > Some(0)),
        "{listed:#}"
    );

    let out = ca
        .signet_ca(["--output", "json", "authority", "prepare", "jwt"])
        .await
        .unwrap()
        .ok()
        .unwrap();
    let prepared = json(&out);
    let id = prepared["authority"]["id"].as_str().unwrap().to_owned();
    assert_eq!(prepared["authority"]["state"], "prepared");
    let seq = prepared["bundle_sequence"].as_u64().unwrap();
    assert_eq!(
        prepared["authority"]["published_sequence"].as_u64(),
        Some(seq)
    );

    // The text list shows the sequence and acked/connected.
    let text = cli(&["authority", "list"])
        .await
        .unwrap()
        .ok()
        .unwrap()
        .stdout;
    assert!(
        text.contains("PUBLISHED") && text.contains("ACKED"),
        "{text}"
    );
    let row = text.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(
        row.contains(&format!(" {seq} ")) && row.contains("0/0"),
        "{row}"
    );

    // Bad input: a revoke before a taint, an unknown id; nothing changes.
    let refused = ca.signet_ca(["authority", "revoke", &id]).await.unwrap();
    assert!(!refused.success());
    assert!(refused.stderr.contains("taint it first"), "{refused}");
    let unknown = ca.signet_ca(["authority", "taint", "nope"]).await.unwrap();
    assert!(!unknown.success());
    assert!(
        unknown.stderr.to_lowercase().contains("no authority"),
        "{unknown}"
    );

    ca.signet_ca(["authority", "activate", &id])
        .await
        .unwrap()
        .ok()
        .unwrap();
    let old_jwt = list.iter().find(|a| a["kind"] == "jwt").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let tainted = json(
        &ca.signet_ca(["--output", "json", "authority", "taint", &old_jwt])
            .await
            .unwrap()
            .ok()
            .unwrap(),
    );
    assert_eq!(tainted["authority"]["state"], "tainted");
    // Its tokens may still be valid: revoke needs force.
    let early = ca
        .signet_ca(["authority", "revoke", &old_jwt])
        .await
        .unwrap();
    assert!(
        !early.success() && early.stderr.contains("JWT-SVIDs"),
        "{early}"
    );
    let revoked = json(
        &ca.signet_ca([
            "--output",
            "json",
            "authority",
            "revoke",
            &old_jwt,
            "--force",
        ])
        .await
        .unwrap()
        .ok()
        .unwrap(),
    );
    assert_eq!(revoked["authority"]["state"], "revoked");
    let mut admin = ca.admin().await.unwrap();
    let bundle = admin
        .get_bundle(pb::GetBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let kids: Vec<&str> = bundle
        .jwt_authorities
        .iter()
        .map(|j| j.key_id.as_str())
        .collect();
    assert_eq!(kids, [id.as_str()], "the revoked key left the bundle");
}

#[tokio::test]
async fn a_revoked_intermediate_is_in_the_crls_agents_get_and_its_node_svids_are_refused() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let node = signet_tests::attest_node(&ca, "old-node").await.unwrap();
    let mut client = ca.node_client(Some(node.tls_identity())).await.unwrap();
    let mut stream = client
        .watch_bundle(pb::WatchBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.crls.is_empty() && first.tainted.is_empty());
    // Before the revoke, a new connection with this node SVID works.
    ca.node_client(Some(node.tls_identity()))
        .await
        .unwrap()
        .list_authorized_entries(pb::ListAuthorizedEntriesRequest {})
        .await
        .unwrap();

    let mut admin = ca.admin().await.unwrap();
    let inter = authorities(&mut admin)
        .await
        .into_iter()
        .find(|a| {
            a.kind == i32::from(pb::AuthorityKind::Intermediate)
                && a.state == i32::from(pb::AuthorityState::Active)
        })
        .unwrap();
    admin
        .taint_authority(pb::TaintAuthorityRequest {
            id: inter.id.clone(),
        })
        .await
        .unwrap();
    let tainted = stream.message().await.unwrap().unwrap();
    assert_eq!(tainted.tainted.len(), 1);
    assert_eq!(tainted.tainted[0].id, inter.id);
    assert_eq!(tainted.tainted[0].reissue_window_seconds, 300);
    // The node's SVID chains through it and the node has not reported
    // since: refused without force.
    let early = admin
        .revoke_authority(pb::RevokeAuthorityRequest {
            id: inter.id.clone(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(early.code(), tonic::Code::FailedPrecondition, "{early:?}");
    let revoked = admin
        .revoke_authority(pb::RevokeAuthorityRequest {
            id: inter.id.clone(),
            force: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        revoked.authority.unwrap().state,
        i32::from(pb::AuthorityState::Revoked)
    );
    // The stream is closed or carries the CRLs; a new connection with the
    // node SVID under the revoked intermediate is refused either way.
    if let Ok(Some(b)) = stream.message().await {
        assert_eq!(
            b.crls.len(),
            2,
            "one for the root, one for the new intermediate"
        );
        assert!(b.tainted.is_empty());
    }
    let refused = match ca.node_client(Some(node.tls_identity())).await {
        Ok(mut c) => c
            .list_authorized_entries(pb::ListAuthorizedEntriesRequest {})
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(
        refused,
        "a node SVID under a revoked intermediate was accepted"
    );
    // A node attested now is accepted.
    let fresh = signet_tests::attest_node(&ca, "new-node").await.unwrap();
    ca.node_client(Some(fresh.tls_identity()))
        .await
        .unwrap()
        .list_authorized_entries(pb::ListAuthorizedEntriesRequest {})
        .await
        .unwrap();
}

#[tokio::test]
async fn the_ca_rotates_its_intermediate_on_its_own_schedule() {
    // A 70 s intermediate (100 s with the 30 s backdate): its successor is
    // prepared about 20 s and activated about 54 s after start.
    let ca = CaProcess::start(
        CaOptions::default()
            .flag("intermediate-ttl", "70s")
            .flag("max-x509-svid-ttl", "10s")
            .flag("default-x509-svid-ttl", "10s")
            .flag("node-svid-ttl", "10s")
            .flag("root-ttl", "1h")
            .flag("jwt-key-ttl", "6h")
            .flag("rotation-tick", "1s"),
    )
    .await
    .unwrap();
    let mut admin = ca.admin().await.unwrap();
    let is_inter = |a: &pb::Authority| a.kind == i32::from(pb::AuthorityKind::Intermediate);
    let active = |list: &[pb::Authority]| {
        list.iter()
            .find(|a| is_inter(a) && a.state == i32::from(pb::AuthorityState::Active))
            .unwrap()
            .clone()
    };
    let first = active(&authorities(&mut admin).await);
    assert!(first.next_transition_at > 0, "{first:#?}");
    let deadline = Instant::now() + Duration::from_secs(90);
    let second = loop {
        let now = active(&authorities(&mut admin).await);
        if now.id != first.id {
            break now;
        }
        assert!(Instant::now() < deadline, "no rotation\n{}", ca.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(second.published_at < second.activated_at, "{second:#?}");
    let listed = authorities(&mut admin).await;
    let old = listed.iter().find(|a| a.id == first.id).unwrap();
    assert_eq!(old.state, i32::from(pb::AuthorityState::Retired));
    assert!(old.retired_at > 0);
    // New SVIDs come from the new intermediate.
    let chain = mint(&mut admin, &ca).await;
    assert_eq!(
        signet_identity::x509::authority_id(&chain[1]),
        second.id,
        "signed by the new intermediate"
    );
    let bundle = admin
        .get_bundle(pb::GetBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let bundle = signet_proto::convert::bundle_from_pb(&bundle).unwrap();
    verify_x509_svid(&chain, &bundle, SystemTime::now()).unwrap();
    let audit = ca.audit_since(0).unwrap();
    let by_ca = |action: &str, id: &str| {
        audit
            .iter()
            .any(|r| r.action == action && r.caller == "ca" && r.serial == id)
    };
    assert!(by_ca("authority_publish", &second.id));
    assert!(by_ca("authority_activate", &second.id));
    assert!(by_ca("authority_retire", &first.id));
}
