//! Entries derived from pod policies, held in memory and never written to the store:
//! they live exactly as long as the pod watch says their pod runs on their node. One
//! writer (the pod watch) replaces a pod's entries; readers (the node and admin APIs)
//! take snapshots under a read lock. A separate revision counts their changes, so that
//! the entry revision nodes see (store + derived) moves on every change of either.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::store::EntryRow;

/// Where an entry comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// Stored through the admin API.
    Api,
    /// Derived from the `[[k8s.policy]]` of this name.
    Policy(String),
    /// Derived from the IdentityPolicy object of this name.
    Crd(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Api => f.write_str("api"),
            Self::Policy(n) => write!(f, "policy:{n}"),
            Self::Crd(n) => write!(f, "crd:{n}"),
        }
    }
}

/// An entry with its origin: what nodes and the admin are shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryView {
    pub row: EntryRow,
    pub origin: Origin,
}

impl EntryView {
    /// A stored entry.
    pub fn stored(row: EntryRow) -> Self {
        Self {
            row,
            origin: Origin::Api,
        }
    }
}

/// A derived entry and the pod it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    pub entry: EntryView,
    /// `namespace/name` of the pod, for messages.
    pub pod: String,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Derived>,
    /// Pod UID -> ids of its entries.
    by_pod: HashMap<String, BTreeSet<String>>,
    /// Parent (node SPIFFE ID) -> ids of its entries.
    by_parent: HashMap<String, BTreeSet<String>>,
    revision: u64,
}

impl Inner {
    fn remove_pod(&mut self, pod_uid: &str) -> bool {
        let Some(ids) = self.by_pod.remove(pod_uid) else {
            return false;
        };
        for id in ids {
            if let Some(d) = self.by_id.remove(&id)
                && let Some(set) = self.by_parent.get_mut(&d.entry.row.parent_id)
            {
                set.remove(&id);
                if set.is_empty() {
                    self.by_parent.remove(&d.entry.row.parent_id);
                }
            }
        }
        true
    }

    fn insert(&mut self, pod_uid: &str, d: Derived) {
        let id = d.entry.row.id.clone();
        self.by_pod
            .entry(pod_uid.to_owned())
            .or_default()
            .insert(id.clone());
        self.by_parent
            .entry(d.entry.row.parent_id.clone())
            .or_default()
            .insert(id.clone());
        self.by_id.insert(id, d);
    }

    /// The pod's entries as they are now, without revisions (for comparison).
    fn current(&self, pod_uid: &str) -> BTreeMap<String, Derived> {
        self.by_pod
            .get(pod_uid)
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
            .map(|d| {
                let mut d = d.clone();
                d.entry.row.revision = 0;
                (d.entry.row.id.clone(), d)
            })
            .collect()
    }
}

/// The derived entries of every pod the watch follows.
#[derive(Default)]
pub struct DerivedEntries {
    inner: RwLock<Inner>,
}

impl DerivedEntries {
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many changes have been made; only grows.
    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    /// How many derived entries there are.
    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One entry by id.
    pub fn get(&self, id: &str) -> Option<Derived> {
        self.read().by_id.get(id).cloned()
    }

    /// The entries parented to `parent` (all when `None`), ordered by SPIFFE ID.
    pub fn list(&self, parent: Option<&str>) -> Vec<EntryView> {
        let inner = self.read();
        let mut out: Vec<EntryView> = match parent {
            Some(p) => inner
                .by_parent
                .get(p)
                .into_iter()
                .flatten()
                .filter_map(|id| inner.by_id.get(id))
                .map(|d| d.entry.clone())
                .collect(),
            None => inner.by_id.values().map(|d| d.entry.clone()).collect(),
        };
        out.sort_by(|a, b| (&a.row.spiffe_id, &a.row.id).cmp(&(&b.row.spiffe_id, &b.row.id)));
        out
    }

    /// Sets the entries of pod `pod_uid` (none: the pod lost them). Returns whether
    /// anything changed; changed entries take the new revision.
    pub fn set_pod(&self, pod_uid: &str, entries: Vec<Derived>) -> bool {
        let mut inner = self.write();
        let wanted: BTreeMap<String, Derived> = entries
            .into_iter()
            .map(|mut d| {
                d.entry.row.revision = 0;
                (d.entry.row.id.clone(), d)
            })
            .collect();
        let current = inner.current(pod_uid);
        if current == wanted {
            return false;
        }
        inner.revision += 1;
        let revision = inner.revision;
        // Unchanged entries keep their revision, so that streams resend only changes.
        let kept: HashMap<String, u64> = inner
            .by_pod
            .get(pod_uid)
            .into_iter()
            .flatten()
            .filter(|id| current.get(*id) == wanted.get(*id))
            .filter_map(|id| {
                inner
                    .by_id
                    .get(id)
                    .map(|d| (id.clone(), d.entry.row.revision))
            })
            .collect();
        inner.remove_pod(pod_uid);
        for (id, mut d) in wanted {
            d.entry.row.revision = kept.get(&id).copied().unwrap_or(revision);
            inner.insert(pod_uid, d);
        }
        true
    }

    /// Keeps only the pods in `alive` (after a relist). Returns whether any went.
    pub fn retain_pods(&self, alive: &dyn Fn(&str) -> bool) -> bool {
        let mut inner = self.write();
        let gone: Vec<String> = inner
            .by_pod
            .keys()
            .filter(|uid| !alive(uid))
            .cloned()
            .collect();
        if gone.is_empty() {
            return false;
        }
        for uid in &gone {
            inner.remove_pod(uid);
        }
        inner.revision += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn derived(id: &str, parent: &str, spiffe: &str) -> Derived {
        Derived {
            entry: EntryView {
                row: EntryRow {
                    id: id.into(),
                    spiffe_id: spiffe.into(),
                    parent_id: parent.into(),
                    selectors: vec![("k8s".into(), "pod-uid:u1".into())],
                    ttl_seconds: 0,
                    dns_names: vec![],
                    created_at: 0,
                    revision: 0,
                    federates_with: vec![],
                },
                origin: Origin::Policy("p".into()),
            },
            pod: "ns/pod".into(),
        }
    }

    #[test]
    fn a_pod_gains_moves_and_loses_its_entries() {
        let set = DerivedEntries::default();
        assert!(set.set_pod("u1", vec![derived("a", "n1", "spiffe://t/x")]));
        assert_eq!(set.revision(), 1);
        assert_eq!(set.list(Some("n1")).len(), 1);
        assert_eq!(set.list(Some("n1"))[0].row.revision, 1);
        // The same again changes nothing.
        assert!(!set.set_pod("u1", vec![derived("a", "n1", "spiffe://t/x")]));
        assert_eq!(set.revision(), 1);
        // Moved to another node: the first node is no longer authorized.
        assert!(set.set_pod("u1", vec![derived("a", "n2", "spiffe://t/x")]));
        assert!(set.list(Some("n1")).is_empty());
        assert_eq!(set.list(Some("n2"))[0].row.revision, 2);
        assert_eq!(set.get("a").unwrap().entry.origin.to_string(), "policy:p");
        // A second entry leaves the first one's revision alone.
        assert!(set.set_pod(
            "u1",
            vec![
                derived("a", "n2", "spiffe://t/x"),
                derived("b", "n2", "spiffe://t/y")
            ]
        ));
        let l = set.list(None);
        assert_eq!(l.iter().map(|e| e.row.revision).collect::<Vec<_>>(), [2, 3]);
        assert!(set.set_pod("u1", vec![]));
        assert!(set.is_empty());
        assert!(set.list(Some("n2")).is_empty());
        assert!(set.get("a").is_none());

        set.set_pod("u2", vec![derived("c", "n1", "spiffe://t/z")]);
        set.set_pod("u3", vec![derived("d", "n1", "spiffe://t/w")]);
        assert!(set.retain_pods(&|uid| uid == "u3"));
        assert_eq!(set.list(None).len(), 1);
        assert!(!set.retain_pods(&|uid| uid == "u3"));
    }
}
