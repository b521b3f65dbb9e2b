//! (a) Roots and intermediates rotate on the CA's own schedule, with
//! lifetimes short enough that two full root rotations (prepared,
//! published, activated, retired, pruned out of the bundle and out of what
//! the Envoys trust) and two intermediate rotations of their own happen in
//! under two minutes, while requests flow client → server through two
//! Envoys that are never restarted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use signet_proto::ca::v1 as pb;
use signet_tests::{CaOptions, CaProcess, Traffic, Validation, envoy_binary};

use crate::{
    Mesh, REQUEST_INTERVAL, SAMPLE_INTERVAL, assert_traffic_flowed, authorities,
    intermediates_in_use, serial_of,
};
use signet_tests::SERVER_BODY;

const CLIENT_UID: u32 = 4311;
const SERVER_UID: u32 = 4312;

/// Every X.509-SVID's lifetime (at most intermediate_ttl x
/// rotation_activate_before, or the CA refuses the configuration); the
/// agent renews at about half of it.
const SVID_TTL: &str = "20s";

/// Traffic goes on this long after the last rotation was seen everywhere.
const TRAILING: Duration = Duration::from_secs(5);

/// Longest the whole rotation phase may take.
const ROTATION_DEADLINE: Duration = Duration::from_secs(160);

/// Root 130 s and intermediate 75 s; a successor is prepared (and
/// published) at 1/5 of the active one's life and activated when 3/5 of it
/// are left. Roots then activate at about 52 s and 78 s, each with a new
/// intermediate, and each intermediate is replaced on its own 30 s into its
/// life (at about 30 s, 56 s and 82 s). The CA makes no intermediate under
/// a root with less than a minute left, and roots keep 78 s when replaced.
/// JWT keys keep a long life (the longest JWT-SVID, 1 h, must fit in 3/5
/// of it).
fn fast_rotation() -> CaOptions {
    CaOptions::default()
        .flag("root-ttl", "130s")
        .flag("intermediate-ttl", "75s")
        .flag("default-x509-svid-ttl", SVID_TTL)
        .flag("max-x509-svid-ttl", SVID_TTL)
        .flag("node-svid-ttl", SVID_TTL)
        .flag("jwt-key-ttl", "3h")
        .flag("backdate", "1s")
        .flag("rotation-prepare-at", "0.2")
        .flag("rotation-activate-before", "0.6")
        .flag("rotation-tick", "1s")
        // A retired authority leaves the bundle as soon as nothing it
        // signed can still be valid, so that pruning happens in the test.
        .flag("prune-grace", "0s")
        .flag("agent-sync-interval", "1s")
        .flag("activation-ack-timeout", "30s")
}

/// `t` in seconds after `since`; `-` for 0 (never).
fn rel(t: i64, since: i64) -> String {
    if t == 0 {
        "-".to_owned()
    } else {
        (t - since).to_string()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

/// What the CA's authorities say about rotations since `since` (Unix s).
#[derive(Debug, Default)]
struct Rotations {
    /// Roots activated after `since`: the CA's first root (activated when
    /// it started) and every successor.
    roots: Vec<String>,
    /// Intermediates activated after `since` under a root that was already
    /// active before them: rotations of the intermediate on its own, not
    /// as part of a root's activation.
    own_intermediates: Vec<String>,
    /// Every intermediate activated after `since`.
    intermediates: Vec<String>,
    /// Intermediate certificate serial -> (intermediate id, root id).
    by_serial: BTreeMap<String, (String, String)>,
    /// Roots that went all the way: retired, then pruned out of the bundle.
    pruned_roots: Vec<(String, Vec<u8>)>,
}

fn rotations(all: &[pb::Authority], since: i64) -> Rotations {
    let root_kind = i32::from(pb::AuthorityKind::Root);
    let int_kind = i32::from(pb::AuthorityKind::Intermediate);
    let activated: BTreeMap<&str, i64> = all
        .iter()
        .map(|a| (a.id.as_str(), a.activated_at))
        .collect();
    let mut r = Rotations::default();
    for a in all {
        if a.kind == root_kind && a.state == i32::from(pb::AuthorityState::Pruned) {
            r.pruned_roots.push((a.id.clone(), a.certificate.clone()));
        }
        if a.kind == int_kind {
            r.by_serial.insert(
                serial_of(&a.certificate),
                (a.id.clone(), a.parent_id.clone()),
            );
        }
        if a.activated_at == 0 || a.activated_at < since {
            continue;
        }
        if a.kind == root_kind {
            r.roots.push(a.id.clone());
        } else if a.kind == int_kind {
            r.intermediates.push(a.id.clone());
            let parent_since = activated.get(a.parent_id.as_str()).copied().unwrap_or(0);
            if parent_since > 0 && parent_since < a.activated_at {
                r.own_intermediates.push(a.id.clone());
            }
        }
    }
    r
}

/// The test (a): zero failed requests and the same two Envoy PIDs
/// across two full root rotations and two intermediate rotations; each
/// Envoy has really served SVIDs under at least three roots (the first and
/// the two new ones) and four intermediates, and no longer trusts the two
/// pruned roots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_carry_traffic_through_two_root_and_two_intermediate_rotations() {
    envoy_binary().unwrap();
    let since = unix_now();
    let ca = CaProcess::start(fast_rotation()).await.unwrap();
    // The client checks the server with Envoy's SPIFFE validator (`ALL`),
    // the server checks the client with the plain roots (`ROOTCA`).
    let mesh = Mesh::start(
        ca,
        "rotation",
        [CLIENT_UID, SERVER_UID],
        SVID_TTL,
        [Validation::SpiffeAll, Validation::RootCa],
    )
    .await;
    let traffic = Traffic::start(mesh.client.port().unwrap(), REQUEST_INTERVAL, SERVER_BODY);

    // Per Envoy: the (intermediate, root) pairs its SVIDs went through.
    let mut seen: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    let mut unknown: BTreeSet<String> = BTreeSet::new();
    let mut enough_since = None;
    loop {
        let all = authorities(&mesh.ca).await;
        let r = rotations(&all, since);
        for (envoy, ints) in intermediates_in_use(&mesh.envoys()).await {
            for serial in ints {
                match r.by_serial.get(&serial) {
                    Some(pair) => {
                        seen.entry(envoy.clone()).or_default().insert(pair.clone());
                    }
                    None => {
                        unknown.insert(serial);
                    }
                }
            }
        }
        let served_everywhere = seen.len() == 2
            && seen.values().all(|pairs| {
                let roots: BTreeSet<&String> = pairs.iter().map(|(_, root)| root).collect();
                roots.len() >= 3 && pairs.len() >= 4
            });
        // The first root and two successors (two full root rotations), and
        // two intermediates that replaced one under the same root.
        let rotated = r.roots.len() >= 3 && r.own_intermediates.len() >= 2;
        // Full rotations: the first two roots retired and pruned, and gone
        // from what both Envoys trust (no lingering anchor).
        let mut lingering = Vec::new();
        for envoy in mesh.envoys() {
            let trusted = envoy.validation_roots().await.unwrap();
            assert!(!trusted.is_empty(), "{} trusts no root", envoy.name());
            for (id, cert) in &r.pruned_roots {
                if trusted.contains(cert) {
                    lingering.push(format!("{} still trusts pruned root {id}", envoy.name()));
                }
            }
        }
        let pruned = r.pruned_roots.len() >= 2 && lingering.is_empty();
        if rotated && served_everywhere && pruned && enough_since.is_none() {
            enough_since = Some(traffic.elapsed());
        }
        // Keep the traffic going a little past that point.
        if let Some(at) = enough_since
            && traffic.elapsed() >= at + TRAILING
        {
            eprintln!(
                "rotations after {:.1?}: roots activated {:?}, intermediates activated {:?} \
                 (of their own: {:?}), roots pruned {:?}; (intermediate, root) pairs served \
                 per Envoy: {seen:?}",
                traffic.elapsed(),
                r.roots,
                r.intermediates,
                r.own_intermediates,
                r.pruned_roots.iter().map(|(id, _)| id).collect::<Vec<_>>()
            );
            break;
        }
        mesh.assert_no_failures(&traffic, "while the authorities rotated")
            .await;
        assert!(
            traffic.elapsed() < ROTATION_DEADLINE,
            "not two root and two intermediate rotations served and pruned within \
             {ROTATION_DEADLINE:?}: roots activated {:?}, intermediates {:?} (of their own {:?}); \
             roots pruned {:?}; {lingering:?}; served per Envoy: {seen:?}; \
             intermediates the CA does not list: {unknown:?}\n--- CA log ---\n{}",
            r.roots,
            r.intermediates,
            r.own_intermediates,
            r.pruned_roots.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            mesh.ca.log()
        );
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
    assert!(
        unknown.is_empty(),
        "Envoys held SVIDs under intermediates the CA does not list: {unknown:?}"
    );
    let history: Vec<String> = authorities(&mesh.ca)
        .await
        .iter()
        .filter(|a| a.kind != i32::from(pb::AuthorityKind::Jwt))
        .map(|a| {
            format!(
                "{:?} {} parent {:?}: not_before {} activated {} retired {} {:?}",
                pb::AuthorityKind::try_from(a.kind).unwrap_or_default(),
                a.id,
                a.parent_id,
                a.not_before - since,
                rel(a.activated_at, since),
                rel(a.retired_at, since),
                pb::AuthorityState::try_from(a.state).unwrap_or_default()
            )
        })
        .collect();
    eprintln!(
        "authorities (seconds since the start):\n{}",
        history.join("\n")
    );
    let took = traffic.elapsed();
    mesh.assert_no_failures(&traffic, "while the authorities rotated")
        .await;
    let outcomes = traffic.stop().await;
    assert_traffic_flowed(outcomes.len(), took);
    mesh.assert_never_restarted();
    eprintln!(
        "{} requests in {took:.1?}, all 200, Envoys never restarted",
        outcomes.len()
    );
    mesh.shut_down().await;
}
