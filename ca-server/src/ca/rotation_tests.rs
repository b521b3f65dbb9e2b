//! Rotation, the activation gate, restarts mid-rotation, taint and revoke,
//! all with the injected clock.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use signet_identity::x509::{VerifiedCsr, verify_x509_svid};
use signet_identity::{SpiffeId, TrustBundle};

use super::*;
use crate::ca::testing::{self, TestClock, short};
use crate::config::Settings;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

fn rows(ca: &Ca, kind: AuthorityKind) -> Vec<AuthorityRow> {
    ca.store().authorities(Some(kind)).unwrap()
}

fn active(ca: &Ca, kind: AuthorityKind) -> AuthorityRow {
    rows(ca, kind)
        .into_iter()
        .find(|r| r.state == AuthorityState::Active)
        .unwrap()
}

fn state_of(ca: &Ca, id: &str) -> AuthorityState {
    ca.store()
        .authorities(None)
        .unwrap()
        .into_iter()
        .find(|r| r.id == id)
        .unwrap()
        .state
}

fn svid(ca: &Ca, ttl: Duration) -> signet_identity::x509::IssuedCert {
    let csr = VerifiedCsr::from_der(&testing::csr()).unwrap();
    let id = SpiffeId::parse("spiffe://test.org/w").unwrap();
    ca.sign(&csr, &id, &[], ttl).unwrap()
}

fn ids_in(bundle: &TrustBundle) -> HashSet<String> {
    bundle
        .x509_authorities()
        .iter()
        .map(|c| cert_id(c))
        .chain(
            bundle
                .jwt_authorities()
                .iter()
                .map(|j| j.key_id().to_owned()),
        )
        .collect()
}

fn actions(ca: &Ca) -> Vec<String> {
    testing::audit(ca).into_iter().map(|r| r.action).collect()
}

#[test]
fn two_full_cycles_of_each_kind_keep_every_credential_valid() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let ca = testing::open(dir.path(), &clock, short());
    let node = testing::attest(&ca, "n1");
    let entry = testing::entry(&ca, &node, "/web");
    let aud = vec!["db".to_owned()];

    let initial: HashSet<String> = [
        AuthorityKind::Root,
        AuthorityKind::Intermediate,
        AuthorityKind::Jwt,
    ]
    .into_iter()
    .map(|k| active(&ca, k).id)
    .collect();
    let mut activated: HashSet<String> = initial.clone();
    let mut x509: Vec<signet_identity::x509::IssuedCert> = Vec::new();
    let mut jwts: Vec<(String, SystemTime)> = Vec::new();
    let first_root = active(&ca, AuthorityKind::Root).id;
    let step = Duration::from_secs(20 * 60);
    // 13 days: more than two root cycles (a root is replaced every 5 days).
    for _ in 0..(13 * 24 * 3) {
        // What agents had been sent before this tick.
        let sent_before = ids_in(&ca.bundle());
        clock.advance(step);
        ca.rotate_if_due().unwrap();
        let now = clock.now();
        let bundle = ca.bundle();
        for kind in [
            AuthorityKind::Root,
            AuthorityKind::Intermediate,
            AuthorityKind::Jwt,
        ] {
            let a = active(&ca, kind);
            assert!(a.published_sequence.is_some(), "{a:?}");
            if activated.insert(a.id.clone()) {
                // A new root or JWT key, or the root of a new intermediate,
                // was in the bundle agents had before it could sign.
                let vouching = match kind {
                    AuthorityKind::Intermediate => a.parent_id.clone().unwrap(),
                    _ => a.id.clone(),
                };
                // Nothing was made and activated in one step: every new
                // authority was published at an earlier tick.
                assert!(
                    a.published_at < a.activated_at,
                    "{} {} published at {:?}, activated at {:?}",
                    kind.as_str(),
                    a.id,
                    a.published_at,
                    a.activated_at
                );
                assert!(
                    sent_before.contains(&vouching),
                    "{} {} signs but {vouching} was not in the bundle sent before",
                    kind.as_str(),
                    a.id
                );
            }
        }
        // A new SVID and a new token validate against the bundle now...
        x509.push(svid(&ca, 4 * HOUR));
        let (_, token, exp) = ca.mint_jwt(&node, &entry.id, &aud, Some(HOUR)).unwrap();
        jwts.push((token, exp));
        // ...and so does every earlier one until it expires.
        x509.retain(|c| c.not_after > now);
        for c in &x509 {
            verify_x509_svid(&c.chain, &bundle, now)
                .unwrap_or_else(|e| panic!("an unexpired SVID no longer validates: {e}"));
        }
        jwts.retain(|(_, exp)| *exp > now);
        for (t, _) in &jwts {
            signet_identity::jwt::validate(t, &bundle, Some("db"), now)
                .unwrap_or_else(|e| panic!("an unexpired JWT-SVID no longer validates: {e}"));
        }
        // The SVID notAfter never passes its signer's.
        let last = x509.last().unwrap();
        assert!(last.not_after <= ca.signing().signer.not_after());
    }
    let count = |kind| {
        rows(&ca, kind)
            .iter()
            .filter(|r| r.activated_at.is_some())
            .count()
    };
    assert!(count(AuthorityKind::Root) >= 3, "two root rotations");
    assert!(count(AuthorityKind::Intermediate) >= 5);
    assert!(count(AuthorityKind::Jwt) >= 5);
    let pruned = |kind| {
        rows(&ca, kind)
            .iter()
            .filter(|r| r.state == AuthorityState::Pruned)
            .count()
    };
    assert!(
        pruned(AuthorityKind::Root) >= 1,
        "the first root left the bundle"
    );
    assert!(pruned(AuthorityKind::Jwt) >= 2);
    assert!(!ids_in(&ca.bundle()).contains(&first_root));
    let acts = actions(&ca);
    for a in [
        "authority_publish",
        "authority_activate",
        "authority_retire",
        "authority_prune",
    ] {
        assert!(acts.iter().any(|x| x == a), "no {a} in the audit log");
    }
}

#[test]
fn activation_waits_for_connected_agents_then_for_the_time_rule() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let settings = Settings {
        activation_ack_timeout: Some(Duration::from_secs(60)),
        agent_sync_interval: Some(Duration::from_secs(30)),
        ..Settings::default()
    };
    let ca = Arc::new(testing::open(dir.path(), &clock, settings));
    let fast = testing::attest(&ca, "fast");
    let slow = testing::attest(&ca, "slow");
    let _fast_stream = ca.agent_connected(&fast);
    let slow_stream = ca.agent_connected(&slow);
    let old = ca.bundle().sequence();
    ca.report_status(&fast, old, 0, &[]).unwrap();
    ca.report_status(&slow, old, 0, &[]).unwrap();

    let (jwt, seq) = ca
        .prepare_authority(Some(AuthorityKind::Jwt), "admin")
        .unwrap();
    assert!(seq > old);
    assert_eq!(jwt.row.published_sequence, Some(seq));
    assert_eq!((jwt.agents_acknowledged, jwt.agents_connected), (0, 2));

    // Nobody has it yet: refused, naming both, and nothing changes.
    let err = ca
        .activate_authority(&jwt.row.id, false, "admin")
        .unwrap_err();
    assert!(matches!(err, CaError::FailedPrecondition(_)), "{err:?}");
    assert!(
        err.to_string().contains("fast") && err.to_string().contains("slow"),
        "{err}"
    );
    assert_eq!(state_of(&ca, &jwt.row.id), AuthorityState::Prepared);

    ca.report_status(&fast, seq, 0, &[]).unwrap();
    let err = ca
        .activate_authority(&jwt.row.id, false, "admin")
        .unwrap_err();
    assert!(err.to_string().contains("slow (at"), "{err}");
    assert!(!err.to_string().contains("fast"), "{err}");
    let listed = ca.info(&jwt.row.id).unwrap();
    assert_eq!(
        (listed.agents_acknowledged, listed.agents_connected),
        (1, 2)
    );

    // An agent that disconnects holds activation back only while its last
    // report is recent (3 x the 30s heartbeat).
    drop(slow_stream);
    assert!(ca.activate_authority(&jwt.row.id, false, "admin").is_err());
    clock.advance(Duration::from_secs(91));
    ca.activate_authority(&jwt.row.id, false, "admin").unwrap();
    assert_eq!(ca.signing().jwt.key_id, jwt.row.id);

    // The time rule: a lagging agent holds back until the ack timeout
    // (60s) and 3 x the sync interval (90s) have passed.
    let _slow_again = ca.agent_connected(&slow);
    let (next, _) = ca
        .prepare_authority(Some(AuthorityKind::Jwt), "admin")
        .unwrap();
    let gate = |ca: &Ca| {
        let row = ca
            .store()
            .authorities(None)
            .unwrap()
            .into_iter()
            .find(|r| r.id == next.row.id)
            .unwrap();
        ca.gate(&row, clock.now()).unwrap()
    };
    ca.report_status(&fast, ca.bundle().sequence(), 0, &[])
        .unwrap();
    assert!(matches!(gate(&ca), Gate::Closed(l) if l.len() == 1));
    clock.advance(Duration::from_secs(61));
    assert!(matches!(gate(&ca), Gate::Closed(_)), "3 x sync not over");
    clock.advance(Duration::from_secs(30));
    assert_eq!(gate(&ca), Gate::TimeRule(vec![("slow".into(), old)]));
    ca.activate_authority(&next.row.id, false, "admin").unwrap();
    assert_eq!(ca.signing().jwt.key_id, next.row.id);
}

#[test]
fn the_schedule_activates_only_through_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let settings = Settings {
        activation_ack_timeout: Some(10 * HOUR),
        ..short()
    };
    let ca = Arc::new(testing::open(dir.path(), &clock, settings));
    let node = testing::attest(&ca, "lagging");
    let _stream = ca.agent_connected(&node);
    ca.report_status(&node, ca.bundle().sequence(), 0, &[])
        .unwrap();
    let first = active(&ca, AuthorityKind::Jwt).id;
    // Past half of the JWT key's day: a successor is prepared and published.
    clock.advance(13 * HOUR);
    ca.rotate_if_due().unwrap();
    let next = rows(&ca, AuthorityKind::Jwt)
        .into_iter()
        .find(|r| r.state == AuthorityState::Prepared)
        .unwrap();
    assert!(ca.bundle().jwt_authority(&next.id).is_some());
    // At the activation point (20h) the agent has not acknowledged: no
    // switch while the ack timeout (10h after publication) runs.
    clock.advance(8 * HOUR);
    ca.rotate_if_due().unwrap();
    assert_eq!(active(&ca, AuthorityKind::Jwt).id, first);
    clock.advance(HOUR);
    ca.rotate_if_due().unwrap();
    assert_eq!(active(&ca, AuthorityKind::Jwt).id, first);
    // Acknowledged: activated at the next tick.
    ca.report_status(&node, ca.bundle().sequence(), 0, &[])
        .unwrap();
    ca.rotate_if_due().unwrap();
    assert_eq!(active(&ca, AuthorityKind::Jwt).id, next.id);
    assert_eq!(state_of(&ca, &first), AuthorityState::Retired);

    // The next cycle: the agent lags again, and after the ack timeout the
    // time rule activates anyway.
    clock.advance(12 * HOUR);
    ca.rotate_if_due().unwrap();
    let third = rows(&ca, AuthorityKind::Jwt)
        .into_iter()
        .find(|r| r.state == AuthorityState::Prepared)
        .unwrap();
    clock.advance(9 * HOUR);
    ca.rotate_if_due().unwrap();
    assert_eq!(active(&ca, AuthorityKind::Jwt).id, next.id);
    clock.advance(HOUR + Duration::from_secs(60));
    ca.rotate_if_due().unwrap();
    assert_eq!(active(&ca, AuthorityKind::Jwt).id, third.id);
}

#[test]
fn an_unpublished_authority_can_never_be_activated_and_a_restart_publishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let ca = testing::open(dir.path(), &clock, Settings::default());
    // A prepared key as a crash right after its row was written leaves it.
    let row = ca
        .keys()
        .create_jwt(clock.now(), AuthorityState::Prepared, "test")
        .unwrap();
    assert_eq!(row.published_sequence, None);
    let seq = ca.bundle().sequence();
    let before = testing::audit(&ca).len();
    let err = ca.activate_authority(&row.id, true, "admin").unwrap_err();
    assert!(matches!(err, CaError::FailedPrecondition(_)), "{err:?}");
    assert!(err.to_string().contains("never published"), "{err}");
    assert_eq!(state_of(&ca, &row.id), AuthorityState::Prepared);
    assert_eq!(ca.bundle().sequence(), seq);
    assert_ne!(ca.signing().jwt.key_id, row.id);
    // Only the refusal was recorded.
    let after = testing::audit(&ca);
    assert_eq!(after.len(), before + 1);
    assert_eq!(after.last().unwrap().result, "rejected");

    // Even the signing state refuses an active row that was not published.
    let mut rows = ca.store().authorities(None).unwrap();
    for r in &mut rows {
        if r.kind == AuthorityKind::Jwt {
            r.state = if r.id == row.id {
                AuthorityState::Active
            } else {
                AuthorityState::Retired
            };
        }
    }
    let loaded = crate::ca::signing::load(ca.keys(), &rows, None, Vec::new(), true);
    assert!(
        matches!(
            loaded,
            Err(super::super::authorities::KeyStoreError::Unpublished { .. })
        ),
        "unpublished key accepted"
    );

    // A restart publishes it first.
    drop(ca);
    clock.advance(Duration::from_secs(5));
    let ca = testing::open(dir.path(), &clock, Settings::default());
    let now = rows_of(&ca, &row.id);
    assert_eq!(now.published_sequence, Some(ca.bundle().sequence()));
    assert!(ca.bundle().sequence() > seq);
    assert!(ca.bundle().jwt_authority(&row.id).is_some());
    ca.activate_authority(&row.id, false, "admin").unwrap();
    assert_eq!(ca.signing().jwt.key_id, row.id);
}

fn rows_of(ca: &Ca, id: &str) -> AuthorityRow {
    ca.store()
        .authorities(None)
        .unwrap()
        .into_iter()
        .find(|r| r.id == id)
        .unwrap()
}

#[test]
fn a_restart_mid_rotation_resumes_at_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let settings = Settings {
        activation_ack_timeout: Some(Duration::from_secs(60)),
        agent_sync_interval: Some(Duration::from_secs(10)),
        ..short()
    };
    let open = || Arc::new(testing::open(dir.path(), &clock, settings.clone()));
    let ca = open();
    let node = testing::attest(&ca, "a");
    let root0 = active(&ca, AuthorityKind::Root).id;
    let seq0 = ca.bundle().sequence();

    // Step 1: prepared and published (root + its intermediate).
    let (root1, seq1) = ca
        .prepare_authority(Some(AuthorityKind::Root), "admin")
        .unwrap();
    assert!(seq1 > seq0);
    let companion = rows(&ca, AuthorityKind::Intermediate)
        .into_iter()
        .find(|r| r.parent_id.as_deref() == Some(&root1.row.id))
        .unwrap();
    assert_eq!(companion.state, AuthorityState::Prepared);
    drop(ca);

    // Restart: same bundle, same signer; the wait starts over.
    clock.advance(Duration::from_secs(600));
    let ca = open();
    assert_eq!(ca.bundle().sequence(), seq1);
    assert_eq!(active(&ca, AuthorityKind::Root).id, root0);
    let r = rows_of(&ca, &root1.row.id);
    assert_eq!(r.published_sequence, Some(seq1));
    assert_eq!(
        r.published_at,
        Some(unix(clock.now())),
        "published_at reset at start"
    );
    // Step 2: gated by a connected agent that has not acknowledged; the
    // earlier 600s do not count towards the ack timeout.
    let stream = ca.agent_connected(&node);
    ca.report_status(&node, seq0, 0, &[]).unwrap();
    assert!(
        ca.activate_authority(&root1.row.id, false, "admin")
            .is_err()
    );
    clock.advance(Duration::from_secs(30));
    assert!(matches!(ca.gate(&r, clock.now()).unwrap(), Gate::Closed(_)));
    drop(stream);
    drop(ca);

    // Step 3: activated after a restart.
    let ca = open();
    let _stream = ca.agent_connected(&node);
    ca.report_status(&node, seq1, 0, &[]).unwrap();
    ca.activate_authority(&root1.row.id, false, "admin")
        .unwrap();
    assert_eq!(active(&ca, AuthorityKind::Root).id, root1.row.id);
    assert_eq!(active(&ca, AuthorityKind::Intermediate).id, companion.id);
    assert_eq!(state_of(&ca, &root0), AuthorityState::Retired);
    let cert = svid(&ca, HOUR);
    drop(ca);

    // Step 4: after a restart the new authorities sign, and the old root
    // is still published.
    let ca = open();
    assert_eq!(cert_id(ca.signing().signer.cert()), companion.id);
    assert!(ids_in(&ca.bundle()).contains(&root0));
    verify_x509_svid(&cert.chain, &ca.bundle(), clock.now()).unwrap();
    let acts = actions(&ca);
    assert!(acts.iter().any(|a| a == "authority_republish"));
}

#[test]
fn taint_and_revoke_check_their_preconditions_and_change_nothing_when_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let ca = Arc::new(testing::open(dir.path(), &clock, Settings::default()));
    let node = testing::attest(&ca, "n1");
    let _stream = ca.agent_connected(&node);
    let root = active(&ca, AuthorityKind::Root).id;
    let jwt = active(&ca, AuthorityKind::Jwt).id;
    let inter = active(&ca, AuthorityKind::Intermediate).id;
    let seq = ca.bundle().sequence();
    let audit_before = testing::audit(&ca).len();

    let refused = |r: Result<(AuthorityInfo, u64), CaError>| r.unwrap_err();
    assert!(matches!(
        refused(ca.taint_authority("nope", "admin")),
        CaError::NotFound(_)
    ));
    assert!(matches!(
        refused(ca.revoke_authority("nope", false, "admin")),
        CaError::NotFound(_)
    ));
    assert!(matches!(
        refused(ca.activate_authority("nope", false, "admin")),
        CaError::NotFound(_)
    ));
    let e = refused(ca.revoke_authority(&inter, true, "admin"));
    assert!(e.to_string().contains("taint it first"), "{e}");
    let e = refused(ca.taint_authority(&root, "admin"));
    assert!(
        matches!(e, CaError::FailedPrecondition(_)) && e.to_string().contains("prepare"),
        "{e}"
    );
    let e = refused(ca.taint_authority(&jwt, "admin"));
    assert!(e.to_string().contains("prepare"), "{e}");
    let e = refused(ca.activate_authority(&root, false, "admin"));
    assert!(e.to_string().contains("only a prepared one"), "{e}");
    assert_eq!(ca.bundle().sequence(), seq);
    for id in [&root, &jwt, &inter] {
        assert_eq!(state_of(&ca, id), AuthorityState::Active);
    }
    assert!(
        testing::audit(&ca)[audit_before..]
            .iter()
            .all(|r| r.result == "rejected"),
        "only refusals recorded"
    );

    // Taint the active intermediate: a fresh one signs at once.
    ca.report_status(&node, seq, 1, std::slice::from_ref(&inter))
        .unwrap();
    let (tainted, seq2) = ca.taint_authority(&inter, "admin").unwrap();
    assert_eq!(tainted.row.state, AuthorityState::Tainted);
    assert!(seq2 > seq, "tainted list is part of the bundle");
    let fresh = active(&ca, AuthorityKind::Intermediate).id;
    assert_ne!(fresh, inter);
    assert_eq!(ca.signing().signer_id, fresh);
    let nb = ca.node_bundle();
    assert_eq!(nb.tainted.len(), 1);
    assert_eq!(nb.tainted[0].id, inter);
    assert_eq!(nb.tainted[0].reissue_window, Duration::from_secs(300));
    assert!(nb.crls.is_empty());

    // Revoke waits while an agent still serves SVIDs through it.
    clock.advance(Duration::from_secs(10));
    let e = refused(ca.revoke_authority(&inter, false, "admin"));
    assert!(e.to_string().contains("agent n1"), "{e}");
    ca.report_status(&node, seq2, 1, std::slice::from_ref(&fresh))
        .unwrap();
    // ...and while an admin-minted SVID under it is unexpired: none here.
    let (revoked, seq3) = ca.revoke_authority(&inter, false, "admin").unwrap();
    assert_eq!(revoked.row.state, AuthorityState::Revoked);
    assert!(seq3 > seq2);
    let nb = ca.node_bundle();
    assert!(nb.tainted.is_empty());
    // One CRL for the root, one for each live unrevoked intermediate.
    assert_eq!(nb.crls.len(), 2);

    // A JWT key: prepare, taint (activates the successor), revoke only
    // once its tokens can have expired.
    let (next, _) = ca
        .prepare_authority(Some(AuthorityKind::Jwt), "admin")
        .unwrap();
    ca.taint_authority(&jwt, "admin").unwrap();
    assert_eq!(ca.signing().jwt.key_id, next.row.id);
    let e = refused(ca.revoke_authority(&jwt, false, "admin"));
    assert!(e.to_string().contains("JWT-SVIDs"), "{e}");
    clock.advance(MAX_JWT_TTL + Duration::from_secs(1));
    ca.revoke_authority(&jwt, false, "admin").unwrap();
    assert!(ca.bundle().jwt_authority(&jwt).is_none());
    assert!(ca.bundle().jwt_authority(&next.row.id).is_some());
    let acts = actions(&ca);
    for a in ["authority_taint", "authority_revoke", "authority_activate"] {
        assert!(acts.iter().any(|x| x == a), "no {a}");
    }
}

#[test]
fn an_admin_minted_svid_holds_the_revoke_of_its_intermediate_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let ca = testing::open(dir.path(), &clock, Settings::default());
    let inter = active(&ca, AuthorityKind::Intermediate).id;
    ca.mint(
        "spiffe://test.org/m",
        &testing::csr(),
        Some(HOUR),
        &[],
        "admin",
    )
    .unwrap();
    ca.taint_authority(&inter, "admin").unwrap();
    let e = ca.revoke_authority(&inter, false, "admin").unwrap_err();
    assert!(e.to_string().contains("admin-minted"), "{e}");
    // force overrides.
    ca.revoke_authority(&inter, true, "admin").unwrap();
    assert_eq!(state_of(&ca, &inter), AuthorityState::Revoked);
}

#[test]
fn crls_pass_a_full_chain_check_and_refuse_the_revoked_intermediate() {
    let dir = tempfile::tempdir().unwrap();
    // openssl checks against the real clock.
    let clock = TestClock::at(SystemTime::now());
    let ca = testing::open(dir.path(), &clock, Settings::default());
    let inter = active(&ca, AuthorityKind::Intermediate).id;
    let old = svid(&ca, HOUR);
    ca.taint_authority(&inter, "admin").unwrap();
    let new = svid(&ca, HOUR);
    ca.revoke_authority(&inter, true, "admin").unwrap();
    let nb = ca.node_bundle();
    assert!(!nb.crls.is_empty());

    let pem = |tag: &str, der: &[u8]| pem::encode(&pem::Pem::new(tag, der.to_vec()));
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let roots = write(
        "roots.pem",
        nb.bundle
            .x509_authorities()
            .iter()
            .map(|c| pem("CERTIFICATE", c))
            .collect(),
    );
    let crls = write(
        "crls.pem",
        nb.crls.iter().map(|c| pem("X509 CRL", c)).collect(),
    );
    let verify = |cert: &signet_identity::x509::IssuedCert| {
        let leaf = write("leaf.pem", pem("CERTIFICATE", &cert.chain[0]));
        let chain = write("chain.pem", pem("CERTIFICATE", &cert.chain[1]));
        std::process::Command::new("openssl")
            .arg("verify")
            .arg("-crl_check_all")
            .arg("-CAfile")
            .arg(&roots)
            .arg("-untrusted")
            .arg(&chain)
            .arg("-CRLfile")
            .arg(&crls)
            .arg(&leaf)
            .output()
            .unwrap()
    };
    let text = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
    };
    let ok = verify(&new);
    assert!(ok.status.success(), "{}", text(&ok));
    // A chain through the revoked intermediate fails the full-chain check
    // (its issuer has no CRL any more, and it is itself listed)...
    let bad = verify(&old);
    assert!(!bad.status.success(), "{}", text(&bad));
    // ...and the root's CRL lists it.
    let revoked = write("revoked.pem", pem("CERTIFICATE", &old.chain[1]));
    let out = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-crl_check")
        .arg("-CAfile")
        .arg(&roots)
        .arg("-CRLfile")
        .arg(&crls)
        .arg(&revoked)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("certificate revoked"), "{}", text(&out));
    // Without the revocation nothing would have needed a CRL: before it,
    // the node bundle carried none (checked in the taint test).
}

#[test]
fn a_root_cannot_be_prepared_in_upstream_mode_and_unknown_kinds_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let ca = testing::open(dir.path(), &clock, Settings::default());
    for bad in [Some(AuthorityKind::Upstream), None] {
        assert!(matches!(
            ca.prepare_authority(bad, "admin"),
            Err(CaError::InvalidArgument(_))
        ));
    }
    let (i, _) = ca
        .prepare_authority(Some(AuthorityKind::Intermediate), "admin")
        .unwrap();
    assert_eq!(i.row.state, AuthorityState::Prepared);
    assert!(i.row.published_sequence.is_some());
    ca.activate_authority(&i.row.id, false, "admin").unwrap();
    assert_eq!(ca.signing().signer_id, i.row.id);
}

#[test]
fn while_crls_are_in_use_a_new_intermediate_waits_for_the_bundle_carrying_its_crl() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let ca = Arc::new(testing::open(dir.path(), &clock, Settings::default()));
    let inter = active(&ca, AuthorityKind::Intermediate).id;
    ca.taint_authority(&inter, "admin").unwrap();
    ca.revoke_authority(&inter, true, "admin").unwrap();
    let seq = ca.bundle().sequence();
    assert_eq!(ca.node_bundle().crls.len(), 2);

    let node = testing::attest(&ca, "n1");
    let _stream = ca.agent_connected(&node);
    ca.report_status(&node, seq, 0, &[]).unwrap();
    let (next, seq2) = ca
        .prepare_authority(Some(AuthorityKind::Intermediate), "admin")
        .unwrap();
    assert!(seq2 > seq, "its CRL changes the bundle");
    assert_eq!(next.row.published_sequence, Some(seq2));
    assert_eq!(ca.node_bundle().crls.len(), 3);
    let e = ca
        .activate_authority(&next.row.id, false, "admin")
        .unwrap_err();
    assert!(e.to_string().contains("n1 (at"), "{e}");
    ca.report_status(&node, seq2, 0, &[]).unwrap();
    ca.activate_authority(&next.row.id, false, "admin").unwrap();
    assert_eq!(ca.signing().signer_id, next.row.id);
}

#[test]
fn after_a_restart_agents_that_reported_recently_count_before_they_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let ca = Arc::new(testing::open(dir.path(), &clock, Settings::default()));
    let node = testing::attest(&ca, "n1");
    let stream = ca.agent_connected(&node);
    ca.report_status(&node, ca.bundle().sequence(), 0, &[])
        .unwrap();
    let (jwt, _) = ca
        .prepare_authority(Some(AuthorityKind::Jwt), "admin")
        .unwrap();
    drop(stream);
    drop(ca);
    // Restarted: no stream is open yet, but n1 reported 0s ago.
    let ca = testing::open(dir.path(), &clock, Settings::default());
    let e = ca
        .activate_authority(&jwt.row.id, false, "admin")
        .unwrap_err();
    assert!(e.to_string().contains("n1"), "{e}");
    let n1 = SpiffeId::parse("spiffe://test.org/signet/node/n1").unwrap();
    ca.report_status(&n1, ca.bundle().sequence(), 0, &[])
        .unwrap();
    ca.activate_authority(&jwt.row.id, false, "admin").unwrap();
}

#[test]
fn a_ca_down_past_the_active_keys_expiry_activates_their_published_successors() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let ca = testing::open(dir.path(), &clock, short());
    clock.advance(12 * HOUR);
    let (jwt, _) = ca
        .prepare_authority(Some(AuthorityKind::Jwt), "admin")
        .unwrap();
    drop(ca);
    // Down 13 hours: the active JWT key (1 day) expired meanwhile.
    clock.advance(13 * HOUR);
    let ca = testing::open(dir.path(), &clock, short());
    assert_eq!(
        ca.signing().jwt.key_id,
        jwt.row.id,
        "no new unpublished key"
    );

    let (root, _) = ca
        .prepare_authority(Some(AuthorityKind::Root), "admin")
        .unwrap();
    let old_root = active(&ca, AuthorityKind::Root).id;
    drop(ca);
    // Down 5 days: the first root (6 days) expired meanwhile.
    clock.advance(5 * DAY);
    let ca = testing::open(dir.path(), &clock, short());
    assert_eq!(active(&ca, AuthorityKind::Root).id, root.row.id);
    assert_eq!(state_of(&ca, &old_root), AuthorityState::Retired);
    let inter = active(&ca, AuthorityKind::Intermediate);
    assert_eq!(inter.parent_id.as_deref(), Some(root.row.id.as_str()));
    verify_x509_svid(&svid(&ca, HOUR).chain, &ca.bundle(), clock.now()).unwrap();
    assert!(actions(&ca).iter().any(|a| a == "authority_activate"));

    // Without a successor, an expired root stops the CA with a clear error.
    let other = tempfile::tempdir().unwrap();
    drop(testing::open(other.path(), &clock, short()));
    clock.advance(7 * DAY);
    let settings = testing::settings_for(other.path(), short());
    let config = crate::config::Config::load(None, settings).unwrap();
    let err = Ca::open_with_clock(Arc::new(config), clock.clock())
        .err()
        .unwrap();
    assert!(err.to_string().contains("has expired"), "{err}");
}

#[test]
fn with_a_bundle_endpoint_a_new_key_waits_three_refresh_hints_for_federated_peers() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let settings = Settings {
        bundle_endpoint: Some(crate::federation::config::BundleEndpointSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            profile: None,
            cert_file: None,
            key_file: None,
            refresh_hint: Some("10s".into()),
        }),
        ..Settings::default()
    };
    let ca = testing::open(dir.path(), &clock, settings);
    let before = ca.signing().jwt.key_id.clone();
    // No agent is connected, so only federated peers are waited for.
    let (next, _) = ca
        .prepare_authority(Some(AuthorityKind::Jwt), "admin")
        .unwrap();
    let err = ca
        .activate_authority(&next.row.id, false, "admin")
        .unwrap_err();
    assert!(matches!(err, CaError::FailedPrecondition(_)), "{err:?}");
    assert!(err.to_string().contains("refresh hint"), "{err}");
    assert_eq!(ca.signing().jwt.key_id, before, "nothing changed");
    assert_eq!(state_of(&ca, &next.row.id), AuthorityState::Prepared);

    clock.advance(Duration::from_secs(29));
    assert!(ca.activate_authority(&next.row.id, false, "admin").is_err());
    clock.advance(Duration::from_secs(1));
    ca.activate_authority(&next.row.id, false, "admin").unwrap();
    assert_eq!(ca.signing().jwt.key_id, next.row.id);

    // An intermediate is not in the served bundle: no federation hold.
    let (inter, _) = ca
        .prepare_authority(Some(AuthorityKind::Intermediate), "admin")
        .unwrap();
    ca.activate_authority(&inter.row.id, false, "admin")
        .unwrap();
}
