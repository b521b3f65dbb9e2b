//! The manager through the trust lifecycle, driven with hand-built bundle
//! messages and signing answers (no CA): federated bundles, CRLs, taints,
//! SVIDs held until their root is served, and what the agent reports.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use signet_identity::bundle::JwtAuthority;
use signet_identity::testing::TestCa;
use signet_identity::x509::{
    IssuedCert, SigningAuthority, SigningCaParams, VerifiedCsr, X509SvidParams, authority_id,
    issue_x509_svid, new_intermediate,
};
use signet_identity::{KeyType, PrivateKey, SpiffeId, TrustBundle, TrustDomain};
use signet_proto::ca::v1 as pb;

use super::*;
use crate::config::{Bootstrap, Config};
use crate::node::NodeSvid;
use crate::node::client::{CaClient, ServerTrust};

const TD: &str = "example.org";

fn td() -> TrustDomain {
    TrustDomain::new(TD).unwrap()
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
}

struct Fixture {
    _dir: tempfile::TempDir,
    m: Arc<Manager>,
    ca: TestCa,
}

/// A manager for a node whose SVID the root signs directly, serving a bundle
/// of that root, with the CA nowhere (nothing here calls it).
fn fixture() -> Fixture {
    let ca = TestCa::new(td()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        trust_domain: td(),
        ca_addresses: vec!["127.0.0.1:9".into()],
        ca_server_name: "localhost".into(),
        data_dir: dir.path().to_path_buf(),
        join_token: None,
        k8s_psat_token_file: None,
        bootstrap: Bootstrap::None,
        workload_api_socket: dir.path().join("api.sock"),
        sds_socket: dir.path().join("sds.sock"),
        files: None,
        log_json: false,
        max_backoff: Duration::from_secs(1),
        metrics_listen: None,
        k8s_workload: None,
        audit: crate::attest::audit::AuditSettings {
            path: dir.path().join("audit.jsonl"),
            max_bytes: 1 << 20,
        },
    };
    let client = CaClient::new(
        crate::node::addresses::CaAddresses::system(config.ca_addresses.clone(), "n1"),
        "localhost",
        &td(),
        ServerTrust::Roots(vec![ca.root().clone()]),
    )
    .unwrap();
    let node_id = SpiffeId::parse("spiffe://example.org/signet/node/n1").unwrap();
    let issued = ca
        .issue(
            &node_id,
            SystemTime::now() - Duration::from_secs(60),
            Duration::from_secs(3600),
        )
        .unwrap();
    let node = NodeSvid {
        spiffe_id: node_id,
        chain: issued.chain,
        key: issued.key,
        not_before: issued.not_before,
        not_after: issued.not_after,
        requested_at: SystemTime::now(),
    };
    let m = Manager::new(Arc::new(config), client, node, ca.bundle().clone());
    // The first entry snapshot: the agent is synced and serves its bundle.
    set_entries(&m, &[]);
    Fixture { _dir: dir, m, ca }
}

fn bundle_pb(roots: &[&CertificateDer<'static>], sequence: u64) -> pb::Bundle {
    let mut b = TrustBundle::new(td())
        .with_x509_authorities(roots.iter().map(|r| (*r).clone()))
        .unwrap();
    b.set_sequence(sequence);
    signet_proto::convert::bundle_to_pb(&b)
}

fn entry_pb(id: &str) -> pb::Entry {
    pb::Entry {
        id: id.into(),
        spiffe_id: format!("spiffe://example.org/{id}"),
        selectors: vec![pb::Selector {
            r#type: "unix".into(),
            value: "uid:1".into(),
        }],
        revision: 1,
        ..pb::Entry::default()
    }
}

fn set_entries(m: &Manager, ids: &[&str]) {
    m.apply_entries(pb::AuthorizedEntriesUpdate {
        snapshot: true,
        upserted: ids.iter().map(|id| entry_pb(id)).collect(),
        removed_ids: vec![],
        revision: 1,
    });
}

/// An intermediate under `ca`'s root, as a signing authority.
fn intermediate(ca: &TestCa) -> SigningAuthority {
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let params = SigningCaParams {
        trust_domain: td(),
        ttl: Duration::from_secs(6 * 3600),
        backdate: Duration::from_secs(60),
    };
    let cert = new_intermediate(&params, &key, ca.authority(), SystemTime::now()).unwrap();
    SigningAuthority::new(td(), cert.der, vec![], key).unwrap()
}

/// The CA's answer for `ids`, each signed by `authority`, with the keys the
/// manager would have generated.
fn signed(
    m: &Manager,
    ids: &[&str],
    authority: &SigningAuthority,
) -> (Vec<pb::SignResult>, PendingKeys) {
    let mut results = Vec::new();
    let mut keys = HashMap::new();
    for id in ids {
        let entry = m.lock().entries[*id].clone();
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let csr = VerifiedCsr::from_der(&key.csr_der().unwrap()).unwrap();
        let params = X509SvidParams {
            spiffe_id: entry.spiffe_id.clone(),
            dns_names: vec![],
            ttl: Duration::from_secs(3600),
            backdate: Duration::from_secs(10),
        };
        let cert: IssuedCert =
            issue_x509_svid(&csr, &params, authority, SystemTime::now()).unwrap();
        results.push(pb::SignResult {
            entry_id: (*id).into(),
            result: Some(pb::sign_result::Result::Svid(pb::X509Svid {
                spiffe_id: entry.spiffe_id.to_string(),
                cert_chain: cert.chain.iter().map(|c| c.to_vec()).collect(),
                serial: cert.serial_hex(),
                ..pb::X509Svid::default()
            })),
        });
        keys.insert((*id).to_owned(), (key, entry));
    }
    (results, keys)
}

fn serial_of(m: &Manager, id: &str) -> Option<String> {
    m.subscribe()
        .borrow()
        .svids
        .get(id)
        .map(|s| s.serial.clone())
}

#[tokio::test]
async fn federated_bundles_and_crls_come_and_go_with_the_bundle_message() {
    let f = fixture();
    let partner = TestCa::new(TrustDomain::new("partner.test").unwrap()).unwrap();
    let impostor = TestCa::new(td()).unwrap();
    let crl = crate::test_pki::test_crl(3);
    let mut message = bundle_pb(&[f.ca.root()], 2);
    message.federated = vec![
        // A "federated" bundle for the own trust domain is refused.
        signet_proto::convert::bundle_to_pb(impostor.bundle()),
        signet_proto::convert::bundle_to_pb(partner.bundle()),
    ];
    message.crls = vec![crl.clone()];
    let mut rx = f.m.subscribe();
    let before = rx.borrow_and_update().version;
    f.m.apply_bundle(&message).unwrap();
    let s = rx.borrow_and_update().clone();
    // One publish carries all of it.
    assert_eq!(s.version, before + 1);
    assert_eq!(s.bundle.as_ref().unwrap().sequence(), 2);
    assert_eq!(
        s.federated
            .keys()
            .map(TrustDomain::as_str)
            .collect::<Vec<_>>(),
        ["partner.test"]
    );
    assert_eq!(
        *s.federated[&partner.bundle().trust_domain().clone()],
        *partner.bundle()
    );
    assert_eq!(&*s.crls, [crl]);
    assert_eq!(
        s.bundle.as_ref().unwrap().x509_authorities(),
        [f.ca.root().clone()],
        "the impostor's root must not join the own bundle"
    );

    // The same message again changes nothing.
    f.m.apply_bundle(&message).unwrap();
    assert!(!rx.has_changed().unwrap());

    // The relationship is deleted and the CRL withdrawn: gone at once.
    f.m.apply_bundle(&bundle_pb(&[f.ca.root()], 3)).unwrap();
    let s = rx.borrow_and_update().clone();
    assert!(s.federated.is_empty());
    assert!(s.crls.is_empty());
}

#[tokio::test]
async fn a_leaf_under_a_root_not_yet_served_waits_for_the_bundle_that_carries_it() {
    let f = fixture();
    set_entries(&f.m, &["web"]);
    let (results, keys) = signed(&f.m, &["web"], f.ca.authority());
    assert_eq!(f.m.accept(results, keys, SystemTime::now()), 1);
    let old = serial_of(&f.m, "web").unwrap();

    // The CA has moved to a new root whose bundle has not reached the agent.
    let next = TestCa::new(td()).unwrap();
    let (results, keys) = signed(&f.m, &["web"], next.authority());
    assert_eq!(f.m.accept(results, keys, SystemTime::now()), 0);
    // The old SVID stays in service, and the entry is not signed again
    // while the new one waits for its bundle.
    assert_eq!(serial_of(&f.m, "web").unwrap(), old);
    assert!(f.m.due_entries(SystemTime::now()).is_empty());

    // The bundle with the new root arrives: the new SVID is served in the
    // same snapshot as the root that validates it.
    f.m.apply_bundle(&bundle_pb(&[f.ca.root(), next.root()], 2))
        .unwrap();
    let s = f.m.subscribe().borrow().clone();
    let svid = &s.svids["web"];
    assert_ne!(svid.serial, old);
    signet_identity::x509::verify_x509_svid(
        &svid.chain,
        s.bundle.as_ref().unwrap(),
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(svid.chains_through, [authority_id(next.root())]);
    assert!(f.m.lock().awaiting.is_empty());
}

#[tokio::test]
async fn a_held_leaf_that_no_bundle_validates_is_dropped_after_the_wait() {
    let f = fixture();
    set_entries(&f.m, &["web"]);
    let (results, keys) = signed(&f.m, &["web"], f.ca.authority());
    f.m.accept(results, keys, SystemTime::now());
    let rogue = TestCa::new(td()).unwrap();
    let (results, keys) = signed(&f.m, &["web"], rogue.authority());
    f.m.accept(results, keys, SystemTime::now());
    let now = SystemTime::now();
    // Another bundle that still lacks its root: it keeps waiting.
    f.m.apply_bundle(&bundle_pb(&[f.ca.root()], 2)).unwrap();
    assert!(f.m.lock().is_awaiting("web", now));
    // Past the wait, the entry is due again and the held SVID goes.
    let later = now + AWAIT_BUNDLE + Duration::from_secs(1);
    assert_eq!(
        f.m.due_entries(later).len(),
        0,
        "its SVID is not due for renewal"
    );
    assert!(!f.m.lock().is_awaiting("web", later));
    assert_eq!(f.m.lock().install_awaiting(later), 0);
    assert!(f.m.lock().awaiting.is_empty());
}

#[tokio::test]
async fn svids_through_a_tainted_intermediate_are_reissued_spread_over_its_window() {
    let f = fixture();
    let int = intermediate(&f.ca);
    let int_id = authority_id(int.cert());
    let root_id = authority_id(f.ca.root());
    let ids: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
    let mut all: Vec<&str> = ids.iter().map(String::as_str).collect();
    all.push("direct");
    set_entries(&f.m, &all);
    let (results, keys) = signed(&f.m, &all[..40], &int);
    assert_eq!(f.m.accept(results, keys, SystemTime::now()), 40);
    let (results, keys) = signed(&f.m, &["direct"], f.ca.authority());
    assert_eq!(f.m.accept(results, keys, SystemTime::now()), 1);

    // What the agent reports: the intermediate and the root (the node SVID
    // and "direct" chain to the root alone).
    let (sequence, count, through) = f.m.status();
    assert_eq!((sequence, count), (0, 41));
    let mut expected = vec![int_id.clone(), root_id.clone()];
    expected.sort();
    assert_eq!(through, expected);
    assert_eq!(
        f.m.subscribe().borrow().svids["w0"].chains_through,
        [int_id.clone(), root_id.clone()]
    );

    // The intermediate is tainted, effective a few seconds from now, to be
    // replaced within ten minutes.
    let tainted_at = unix_secs(SystemTime::now()) + 5;
    let window = 600;
    let mut message = bundle_pb(&[f.ca.root()], 4);
    message.tainted = vec![pb::TaintedAuthority {
        id: int_id.clone(),
        kind: pb::AuthorityKind::Intermediate as i32,
        public_material: int.cert().to_vec(),
        tainted_at,
        reissue_window_seconds: window,
    }];
    f.m.apply_bundle(&message).unwrap();
    assert_eq!(f.m.subscribe().borrow().reissue_pending, 40);

    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(tainted_at as u64);
    let end = start + Duration::from_secs(window as u64);
    let due: Vec<SystemTime> = {
        let inner = f.m.lock();
        ids.iter()
            .map(|id| inner.due_at(&inner.svids[id]))
            .collect()
    };
    // Each inside the window, not all at one moment.
    assert!(due.iter().all(|d| *d >= start && *d < end), "{due:?}");
    let mut distinct = due.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() > 30, "{distinct:?}");
    // Nothing is due before the taint takes effect; about half of them by
    // mid-window; every one by its end; never the SVID under the root.
    assert!(f.m.due_entries(start - Duration::from_secs(1)).is_empty());
    let mid = f.m.due_entries(start + Duration::from_secs(300)).len();
    assert!((5..=35).contains(&mid), "{mid}");
    let by_end = f.m.due_entries(end);
    assert_eq!(by_end.len(), 40);
    assert!(by_end.iter().all(|e| e.id != "direct"));

    // Re-issued (by a new intermediate): no longer pending, nothing due.
    let replacement = intermediate(&f.ca);
    let (results, keys) = signed(&f.m, &all[..40], &replacement);
    assert_eq!(f.m.accept(results, keys, SystemTime::now()), 40);
    assert_eq!(f.m.subscribe().borrow().reissue_pending, 0);
    assert!(f.m.due_entries(end).is_empty());
    assert!(!f.m.status().2.contains(&int_id));
}

#[tokio::test]
async fn a_tainted_root_brings_the_node_svid_forward_too() {
    let f = fixture();
    set_entries(&f.m, &["web"]);
    let (results, keys) = signed(&f.m, &["web"], f.ca.authority());
    f.m.accept(results, keys, SystemTime::now());
    let root_id = authority_id(f.ca.root());
    let tainted_at = unix_secs(SystemTime::now()) + 5;
    let mut message = bundle_pb(&[f.ca.root()], 2);
    message.tainted = vec![pb::TaintedAuthority {
        id: root_id,
        kind: pb::AuthorityKind::Root as i32,
        tainted_at,
        reissue_window_seconds: 60,
        ..pb::TaintedAuthority::default()
    }];
    f.m.apply_bundle(&message).unwrap();
    assert_eq!(f.m.subscribe().borrow().reissue_pending, 2);
    let node = f.m.node_svid();
    let deadline = f.m.node_taint_deadline(&node).unwrap();
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(tainted_at as u64);
    assert!(deadline >= start && deadline < start + Duration::from_secs(60));
    assert!(deadline < node.renew_at());
}

#[tokio::test]
async fn cached_jwt_svids_of_keys_no_longer_published_or_tainted_are_dropped() {
    let f = fixture();
    let k1 = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let k2 = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let with_keys = |keys: &[(&str, &PrivateKey)], seq: u64| {
        let mut b = f.ca.bundle().clone();
        for (kid, key) in keys {
            b.add_jwt_authority(JwtAuthority::new(*kid, &key.public_key_spki()).unwrap())
                .unwrap();
        }
        b.set_sequence(seq);
        signet_proto::convert::bundle_to_pb(&b)
    };
    let cache = |kid: &str| CachedJwt {
        token: format!("token-{kid}"),
        refresh_at: SystemTime::now() + Duration::from_secs(600),
        key_id: Some(kid.to_owned()),
    };
    let cached = |m: &Manager| {
        let mut kids: Vec<String> = m
            .jwt_cache
            .lock()
            .unwrap()
            .values()
            .filter_map(|c| c.key_id.clone())
            .collect();
        kids.sort();
        kids
    };
    f.m.apply_bundle(&with_keys(&[("k1", &k1), ("k2", &k2)], 2))
        .unwrap();
    {
        let mut c = f.m.jwt_cache.lock().unwrap();
        c.insert(("a".into(), vec!["x".into()]), cache("k1"));
        c.insert(("b".into(), vec!["x".into()]), cache("k2"));
    }
    // k2 leaves the bundle (pruned or revoked): its tokens go.
    f.m.apply_bundle(&with_keys(&[("k1", &k1)], 3)).unwrap();
    assert_eq!(cached(&f.m), ["k1"]);
    // k1 is tainted: its tokens go too, though it is still published.
    let mut message = with_keys(&[("k1", &k1)], 4);
    message.tainted = vec![pb::TaintedAuthority {
        id: "k1".into(),
        kind: pb::AuthorityKind::Jwt as i32,
        tainted_at: unix_secs(SystemTime::now()),
        ..pb::TaintedAuthority::default()
    }];
    f.m.apply_bundle(&message).unwrap();
    assert!(cached(&f.m).is_empty());
}

#[tokio::test]
async fn a_held_leaf_for_an_entry_that_changed_meanwhile_is_never_served() {
    let f = fixture();
    set_entries(&f.m, &["web"]);
    let next = TestCa::new(td()).unwrap();
    let (results, keys) = signed(&f.m, &["web"], next.authority());
    assert_eq!(f.m.accept(results, keys, SystemTime::now()), 0);
    // The entry gains a DNS name before the new root's bundle arrives.
    let mut changed = entry_pb("web");
    changed.dns_names = vec!["web.example.org".into()];
    changed.revision = 2;
    f.m.apply_entries(pb::AuthorizedEntriesUpdate {
        snapshot: false,
        upserted: vec![changed],
        removed_ids: vec![],
        revision: 2,
    });
    f.m.apply_bundle(&bundle_pb(&[f.ca.root(), next.root()], 2))
        .unwrap();
    assert!(serial_of(&f.m, "web").is_none());
    assert_eq!(f.m.due_entries(SystemTime::now()).len(), 1);
}

#[tokio::test]
async fn an_svid_asked_for_just_before_the_taint_in_the_same_second_is_still_replaced() {
    // The taint's time has whole seconds: an SVID asked for a moment before
    // the taint may look "newer" than the taint and than its deadline. It
    // was asked for before the agent saw the taint, so it is replaced.
    let f = fixture();
    set_entries(&f.m, &["web"]);
    let asked = SystemTime::now();
    let (results, keys) = signed(&f.m, &["web"], f.ca.authority());
    f.m.accept(results, keys, asked);
    let mut message = bundle_pb(&[f.ca.root()], 2);
    message.tainted = vec![pb::TaintedAuthority {
        id: authority_id(f.ca.root()),
        kind: pb::AuthorityKind::Root as i32,
        tainted_at: unix_secs(asked),
        reissue_window_seconds: 0,
        ..pb::TaintedAuthority::default()
    }];
    f.m.apply_bundle(&message).unwrap();
    let due = f.m.due_entries(SystemTime::now());
    assert_eq!(due.len(), 1);
    // Its replacement, asked for once the agent knew, is not replaced again
    // though the root it chains through is still tainted.
    let (results, keys) = signed(&f.m, &["web"], f.ca.authority());
    f.m.accept(results, keys, SystemTime::now());
    assert!(f.m.due_entries(SystemTime::now()).is_empty());
    assert_eq!(
        f.m.subscribe().borrow().reissue_pending,
        1,
        "only the node SVID"
    );
}

#[tokio::test]
async fn an_svid_whose_root_left_the_bundle_is_due_at_once() {
    let f = fixture();
    set_entries(&f.m, &["web"]);
    let (results, keys) = signed(&f.m, &["web"], f.ca.authority());
    f.m.accept(results, keys, SystemTime::now());
    let next = TestCa::new(td()).unwrap();
    f.m.apply_bundle(&bundle_pb(&[f.ca.root(), next.root()], 2))
        .unwrap();
    assert!(f.m.due_entries(SystemTime::now()).is_empty());
    // The old root is revoked: out of the bundle.
    f.m.apply_bundle(&bundle_pb(&[next.root()], 3)).unwrap();
    let due = f.m.due_entries(SystemTime::now());
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, "web");
}

#[test]
fn federates_with_is_parsed_and_a_bad_name_costs_only_that_federation() {
    let mut e = entry_pb("web");
    e.federates_with = vec!["b.test".into(), "not a trust domain".into()];
    let entry = entry_from_pb(e).unwrap();
    assert_eq!(entry.federates_with, [TrustDomain::new("b.test").unwrap()]);
    assert_eq!(entry.spiffe_id.as_str(), "spiffe://example.org/web");
}
