//! What the agent reads from a bundle message beyond its own bundle, and the
//! decisions that follow from it: federated bundles, CRLs, tainted
//! authorities (when an SVID that chains through one is re-issued), and
//! which authorities an SVID chains through.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use signet_identity::x509::authority_id;
use signet_identity::{TrustBundle, TrustDomain};
use signet_proto::ca::v1 as pb;
use x509_parser::prelude::FromDer as _;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::node;

/// Most federated bundles taken from one message.
pub const MAX_FEDERATED: usize = 1024;
/// Most CRLs taken from one message.
pub const MAX_CRLS: usize = 1024;
/// Most tainted authorities taken from one message.
pub const MAX_TAINTED: usize = 256;
/// The longest re-issue window honoured: a longer one from the CA is cut to
/// this, so that a taint cannot postpone replacements indefinitely.
pub const MAX_REISSUE_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// An authority whose SVIDs the agent replaces early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    /// [`authority_id`] of a root or intermediate; the key id of a JWT key.
    pub id: String,
    pub kind: pb::AuthorityKind,
    pub tainted_at: SystemTime,
    pub window: Duration,
    /// When this agent first saw the taint (its own clock). An SVID asked
    /// for after that was signed by a CA that had tainted the authority
    /// already: it is a replacement, even if it still chains through the
    /// authority (a tainted root with no successor yet), and replacing it
    /// again would loop.
    pub seen_at: SystemTime,
}

impl Taint {
    /// The same taint, whenever it was seen.
    pub fn same(&self, other: &Taint) -> bool {
        self.id == other.id
            && self.kind == other.kind
            && self.tainted_at == other.tainted_at
            && self.window == other.window
    }

    /// When the SVID of `key` (an entry id, or the node's SPIFFE ID) is due:
    /// `tainted_at` plus an offset spread uniformly over the window, the same
    /// for the same key every time, so that a node's SVIDs (and a fleet's)
    /// are not replaced all at once and a restart does not reshuffle them.
    pub fn deadline(&self, key: &str) -> SystemTime {
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(digest.as_ref().get(..8).unwrap_or(&[0; 8]));
        let fraction = u64::from_be_bytes(first) as f64 / (u64::MAX as f64 + 1.0);
        self.tainted_at + self.window.mul_f64(fraction)
    }
}

/// The taints of a bundle message, as seen at `now` unless `known` holds
/// the same taint already; malformed ones are logged and skipped.
pub fn taints_from_pb(
    list: &[pb::TaintedAuthority],
    known: &[Taint],
    now: SystemTime,
) -> Vec<Taint> {
    if list.len() > MAX_TAINTED {
        tracing::warn!(
            count = list.len(),
            kept = MAX_TAINTED,
            "the CA sent more tainted authorities than the agent follows"
        );
    }
    list.iter()
        .take(MAX_TAINTED)
        .filter_map(|t| {
            if t.id.is_empty() || t.tainted_at < 0 {
                tracing::warn!(id = %t.id, tainted_at = t.tainted_at, "ignoring a malformed tainted authority");
                return None;
            }
            let window = Duration::from_secs(u64::try_from(t.reissue_window_seconds).unwrap_or(0))
                .min(MAX_REISSUE_WINDOW);
            let mut taint = Taint {
                id: t.id.clone(),
                kind: pb::AuthorityKind::try_from(t.kind)
                    .unwrap_or(pb::AuthorityKind::Unspecified),
                tainted_at: SystemTime::UNIX_EPOCH
                    + Duration::from_secs(u64::try_from(t.tainted_at).unwrap_or(0)),
                window,
                seen_at: now,
            };
            if let Some(old) = known.iter().find(|k| k.same(&taint)) {
                taint.seen_at = old.seen_at;
            }
            Some(taint)
        })
        .collect()
}

/// When an SVID must be re-issued because of `taints`: the earliest deadline
/// of a taint on an authority it chains through, among the taints this
/// agent saw only after it asked for the SVID (see [`Taint::seen_at`]).
pub fn reissue_deadline(
    taints: &[Taint],
    key: &str,
    chains_through: &[String],
    requested_at: SystemTime,
) -> Option<SystemTime> {
    taints
        .iter()
        .filter(|t| t.kind != pb::AuthorityKind::Jwt)
        .filter(|t| chains_through.contains(&t.id) && requested_at < t.seen_at)
        .map(|t| t.deadline(key))
        .min()
}

/// The ids of the authorities `chain` (leaf first) goes through: each
/// certificate after the leaf, and the root of `bundle` that validates it
/// at `now` (none when no root does).
pub fn chains_through(
    chain: &[CertificateDer<'static>],
    bundle: &TrustBundle,
    now: SystemTime,
) -> Vec<String> {
    let mut ids: Vec<String> = chain.iter().skip(1).map(|c| authority_id(c)).collect();
    let root = bundle.x509_authorities().iter().find(|root| {
        TrustBundle::new(bundle.trust_domain().clone())
            .with_x509_authorities([(*root).clone()])
            .is_ok_and(|single| {
                signet_identity::x509::verify_x509_svid(chain, &single, now).is_ok()
            })
    });
    if let Some(root) = root {
        let id = authority_id(root);
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// The federated bundles of a message. A bundle that does not parse, one
/// for the agent's own trust domain and every copy of a trust domain sent
/// twice are refused with a log line; the rest are kept.
pub fn federated_from_pb(
    list: &[pb::Bundle],
    own: &TrustDomain,
) -> BTreeMap<TrustDomain, Arc<TrustBundle>> {
    if list.len() > MAX_FEDERATED {
        tracing::warn!(
            count = list.len(),
            kept = MAX_FEDERATED,
            "the CA sent more federated bundles than the agent serves"
        );
    }
    let mut out = BTreeMap::new();
    let mut duplicated = BTreeSet::new();
    for message in list.iter().take(MAX_FEDERATED) {
        let bundle = match node::bundle_from_pb(message) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(trust_domain = %message.trust_domain, error = %e, "refusing a federated bundle");
                continue;
            }
        };
        let td = bundle.trust_domain().clone();
        if &td == own {
            tracing::warn!(trust_domain = %td, "refusing a federated bundle for the agent's own trust domain");
            continue;
        }
        if duplicated.contains(&td) || out.insert(td.clone(), Arc::new(bundle)).is_some() {
            if out.remove(&td).is_some() {
                tracing::warn!(trust_domain = %td, "refusing federated bundles sent twice for one trust domain");
            }
            duplicated.insert(td);
        }
    }
    out
}

/// The CRLs of a message: each must parse as a DER X.509 CRL; one that does
/// not is logged and left out.
pub fn crls_from_pb(list: &[Vec<u8>]) -> Arc<[Vec<u8>]> {
    if list.len() > MAX_CRLS {
        tracing::warn!(
            count = list.len(),
            kept = MAX_CRLS,
            "the CA sent more CRLs than the agent serves"
        );
    }
    list.iter()
        .take(MAX_CRLS)
        .filter(|der| match CertificateRevocationList::from_der(der) {
            Ok(([], _)) => true,
            Ok(_) => {
                tracing::warn!("refusing a CRL with trailing data");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "refusing a CRL that does not parse");
                false
            }
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pki::TestCa;

    fn taint(id: &str, at: u64, window: u64) -> Taint {
        Taint {
            id: id.into(),
            kind: pb::AuthorityKind::Intermediate,
            tainted_at: SystemTime::UNIX_EPOCH + Duration::from_secs(at),
            window: Duration::from_secs(window),
            // Seen by the agent a little after the CA tainted it.
            seen_at: SystemTime::UNIX_EPOCH + Duration::from_secs(at + 1),
        }
    }

    #[test]
    fn deadlines_spread_over_the_window_and_stay_inside_it() {
        let t = taint("a", 1_000_000, 600);
        let start = t.tainted_at;
        let end = start + t.window;
        let mut buckets = [0usize; 4];
        for i in 0..400 {
            let key = format!("entry-{i}");
            let d = t.deadline(&key);
            assert!(d >= start && d < end, "{key}: {d:?}");
            // Deterministic per key.
            assert_eq!(d, t.deadline(&key));
            let offset = d.duration_since(start).unwrap().as_secs();
            buckets[(offset / 150) as usize] += 1;
        }
        // Uniform enough: every quarter of the window gets a share, none most.
        for b in buckets {
            assert!((50..=150).contains(&b), "{buckets:?}");
        }
        // No window: all at the moment of the taint.
        assert_eq!(
            taint("a", 5, 0).deadline("x"),
            SystemTime::UNIX_EPOCH + Duration::from_secs(5)
        );
    }

    #[test]
    fn only_svids_through_a_tainted_authority_asked_for_before_it_was_seen_are_due() {
        let taints = [taint("int-1", 1000, 100), taint("root-2", 2000, 0)];
        let before = SystemTime::UNIX_EPOCH + Duration::from_secs(900);
        let through = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let d = reissue_deadline(&taints, "e1", &through(&["int-1", "root-1"]), before).unwrap();
        assert_eq!(d, taints[0].deadline("e1"));
        assert!(reissue_deadline(&taints, "e1", &through(&["int-9", "root-1"]), before).is_none());
        // Through both: the earlier deadline.
        let both = reissue_deadline(&taints, "e1", &through(&["int-1", "root-2"]), before).unwrap();
        assert_eq!(both, taints[0].deadline("e1"));
        // Asked for after the taint was tainted but before the agent saw
        // it, even past its deadline (the taint's time has whole seconds,
        // the offset may be tiny): still due, at once.
        let just_before_seen = SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_900);
        let d = reissue_deadline(&taints, "e1", &through(&["int-1"]), just_before_seen).unwrap();
        assert_eq!(d, taints[0].deadline("e1"));
        // Asked for once the agent knew: a replacement, never due again.
        let after = SystemTime::UNIX_EPOCH + Duration::from_secs(1001);
        assert!(reissue_deadline(&taints, "e1", &through(&["int-1"]), after).is_none());
        assert!(
            reissue_deadline(
                &taints,
                "e1",
                &through(&["int-1", "root-2"]),
                after + Duration::from_secs(1000)
            )
            .is_none()
        );
    }

    #[test]
    fn a_taint_keeps_the_time_it_was_first_seen() {
        let message = [pb::TaintedAuthority {
            id: "x".into(),
            kind: pb::AuthorityKind::Intermediate as i32,
            tainted_at: 10,
            reissue_window_seconds: 60,
            ..Default::default()
        }];
        let first = SystemTime::UNIX_EPOCH + Duration::from_secs(20);
        let later = first + Duration::from_secs(30);
        let seen = taints_from_pb(&message, &[], first);
        assert_eq!(seen[0].seen_at, first);
        let again = taints_from_pb(&message, &seen, later);
        assert_eq!(again, seen);
        // Tainted again (a new time): a new taint.
        let mut retainted = message.clone();
        retainted[0].tainted_at = 40;
        assert_eq!(taints_from_pb(&retainted, &seen, later)[0].seen_at, later);
    }

    #[test]
    fn taints_are_bounded_and_malformed_ones_skipped() {
        let list = vec![
            pb::TaintedAuthority {
                id: "x".into(),
                kind: pb::AuthorityKind::Root as i32,
                tainted_at: 10,
                reissue_window_seconds: i64::MAX,
                ..Default::default()
            },
            pb::TaintedAuthority {
                id: String::new(),
                tainted_at: 10,
                ..Default::default()
            },
            pb::TaintedAuthority {
                id: "y".into(),
                tainted_at: -1,
                ..Default::default()
            },
            pb::TaintedAuthority {
                id: "z".into(),
                tainted_at: 10,
                reissue_window_seconds: -5,
                ..Default::default()
            },
        ];
        let got = taints_from_pb(&list, &[], SystemTime::now());
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].window, MAX_REISSUE_WINDOW);
        assert_eq!(got[0].kind, pb::AuthorityKind::Root);
        assert_eq!(got[1].id, "z");
        assert_eq!(got[1].window, Duration::ZERO);
    }

    #[test]
    fn chains_through_names_the_validating_root() {
        let ca = TestCa::new("example.org");
        let other = TestCa::new("example.org");
        let (_, cert) = ca.issue("spiffe://example.org/web", &[]);
        let both = TrustBundle::new(TrustDomain::new("example.org").unwrap())
            .with_x509_authorities([other.root.clone(), ca.root.clone()])
            .unwrap();
        let now = SystemTime::now();
        assert_eq!(
            chains_through(&cert.chain, &both, now),
            vec![authority_id(&ca.root)]
        );
        assert!(chains_through(&cert.chain, &other.bundle, now).is_empty());
    }

    #[test]
    fn federated_bundles_for_the_own_or_a_repeated_trust_domain_are_refused() {
        let own = TrustDomain::new("example.org").unwrap();
        let mine = TestCa::new("example.org");
        let a = TestCa::new("a.test");
        let b = TestCa::new("b.test");
        let b2 = TestCa::new("b.test");
        let c = TestCa::new("c.test");
        let mut broken = signet_proto::convert::bundle_to_pb(&c.bundle);
        broken.x509_authorities = vec![b"not a certificate".to_vec()];
        let list: Vec<pb::Bundle> = [&mine.bundle, &a.bundle, &b.bundle, &b2.bundle]
            .into_iter()
            .map(signet_proto::convert::bundle_to_pb)
            .chain([broken])
            .collect();
        let got = federated_from_pb(&list, &own);
        let tds: Vec<&str> = got.keys().map(TrustDomain::as_str).collect();
        assert_eq!(tds, ["a.test"]);
        assert_eq!(*got[&TrustDomain::new("a.test").unwrap()], a.bundle);
    }

    #[test]
    fn crls_that_do_not_parse_are_left_out() {
        let good = crate::test_pki::test_crl(7);
        let mut trailing = good.clone();
        trailing.push(0);
        let got = crls_from_pb(&[b"junk".to_vec(), good.clone(), trailing]);
        assert_eq!(&*got, [good]);
    }
}
