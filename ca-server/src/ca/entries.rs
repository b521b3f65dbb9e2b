//! Registration entries and join tokens: what the admin may register, and
//! the rules every claimed identity must follow (no reserved ID, no DNS name
//! the CA itself serves under). Every change commits with its audit record.

use std::time::Duration;

use signet_identity::x509::issue::validate_dns_name;
use signet_identity::{SpiffeId, reserved};

use super::time::{secs, unix};
use super::{Ca, CaError};
use crate::k8s::derived::EntryView;
use crate::store::{self, AuditRecord, EntryRow};

/// A registration entry as the admin asks for it, before it is checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewEntry {
    pub spiffe_id: String,
    pub parent_id: String,
    pub selectors: Vec<(String, String)>,
    /// 0 for the server's default.
    pub ttl_seconds: i64,
    pub dns_names: Vec<String>,
    /// Trust domains whose bundles the entry's workloads receive.
    pub federates_with: Vec<String>,
}

/// Most trust domains one entry may federate with.
pub const MAX_FEDERATES_WITH: usize = 32;

/// Checks `federates_with`: valid trust domain names, not `own`, at most
/// [`MAX_FEDERATES_WITH`]; returns them sorted without duplicates.
fn check_federates_with(
    own: &signet_identity::TrustDomain,
    tds: &[String],
) -> Result<Vec<String>, CaError> {
    if tds.len() > MAX_FEDERATES_WITH {
        return Err(CaError::InvalidArgument(format!(
            "an entry may federate with at most {MAX_FEDERATES_WITH} trust domains"
        )));
    }
    let mut out = Vec::with_capacity(tds.len());
    for td in tds {
        let parsed = signet_identity::TrustDomain::new(td).map_err(|e| {
            CaError::InvalidArgument(format!("invalid federates_with trust domain {td:?}: {e}"))
        })?;
        if &parsed == own {
            return Err(CaError::InvalidArgument(format!(
                "federates_with names {td}, the CA's own trust domain"
            )));
        }
        out.push(parsed.to_string());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A join token just created. The token itself is shown once and never stored.
#[derive(Debug, Clone)]
pub struct JoinToken {
    pub token: String,
    pub node_id: SpiffeId,
    pub expires_at: i64,
}

pub(crate) fn random_hex<const N: usize>() -> Result<String, CaError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| CaError::Internal("system random generator failed".into()))?;
    Ok(hex::encode(b))
}

/// Whether `pattern` (a DNS name, possibly `*.rest`) covers `name`.
fn dns_covers(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.to_ascii_lowercase(), name.to_ascii_lowercase());
    let (pattern, name) = (pattern.trim_end_matches('.'), name.trim_end_matches('.'));
    if pattern == name {
        return true;
    }
    match (pattern.strip_prefix("*."), name.split_once('.')) {
        (Some(rest), Some((_, name_rest))) => rest == name_rest,
        _ => false,
    }
}

impl Ca {
    /// Checks that a workload may be given `id` with `dns_names`: a
    /// non-empty path in this trust domain, outside the reserved
    /// namespace, and no DNS name under which the CA itself serves (a
    /// workload holding one could pass for the CA).
    ///
    /// # Errors
    /// InvalidArgument naming the rule.
    pub fn check_claimable(&self, id: &SpiffeId, dns_names: &[String]) -> Result<(), CaError> {
        let td = &self.config.trust_domain;
        if !id.is_member_of(td) {
            return Err(CaError::InvalidArgument(format!(
                "{id} is not in trust domain {td}"
            )));
        }
        if id.path().is_empty() {
            return Err(CaError::InvalidArgument(format!("{id} needs a path")));
        }
        if reserved::is_reserved(id) {
            return Err(CaError::InvalidArgument(format!(
                "{id} is reserved: the path {} belongs to Signet's own identities",
                reserved::RESERVED_PATH_PREFIX
            )));
        }
        for name in dns_names {
            validate_dns_name(name).map_err(|e| CaError::InvalidArgument(e.to_string()))?;
            if let Some(server) = self
                .config
                .server_names
                .iter()
                .find(|s| dns_covers(name, s))
            {
                return Err(CaError::InvalidArgument(format!(
                    "DNS name {name:?} is reserved: the CA serves under {server:?}"
                )));
            }
        }
        Ok(())
    }

    fn validate_entry(&self, req: &NewEntry) -> Result<EntryRow, CaError> {
        let td = &self.config.trust_domain;
        let id = SpiffeId::parse(&req.spiffe_id).map_err(|e| {
            CaError::InvalidArgument(format!("invalid spiffe_id {:?}: {e}", req.spiffe_id))
        })?;
        self.check_claimable(&id, &req.dns_names)?;
        let parent = SpiffeId::parse(&req.parent_id).map_err(|e| {
            CaError::InvalidArgument(format!("invalid parent_id {:?}: {e}", req.parent_id))
        })?;
        if self.node_name(&parent).is_none() {
            return Err(CaError::InvalidArgument(format!(
                "parent_id {parent} is not a node of {td} (spiffe://{td}{}<name>)",
                reserved::NODE_PATH_PREFIX
            )));
        }
        let mut selectors = Vec::with_capacity(req.selectors.len());
        for (kind, value) in &req.selectors {
            if kind.is_empty() || value.is_empty() || kind.contains(':') {
                return Err(CaError::InvalidArgument(format!(
                    "invalid selector {kind}:{value}"
                )));
            }
            selectors.push((kind.clone(), value.clone()));
        }
        if selectors.is_empty() {
            return Err(CaError::InvalidArgument(
                "an entry needs at least one selector".into(),
            ));
        }
        selectors.sort();
        selectors.dedup();
        let max = secs(self.config.max_x509_svid_ttl);
        if req.ttl_seconds < 0 || req.ttl_seconds > max {
            return Err(CaError::InvalidArgument(format!(
                "x509_svid_ttl_seconds must be between 0 and {max}"
            )));
        }
        Ok(EntryRow {
            id: random_hex::<16>()?,
            spiffe_id: id.to_string(),
            parent_id: parent.to_string(),
            selectors,
            ttl_seconds: req.ttl_seconds,
            dns_names: req.dns_names.clone(),
            created_at: unix(self.now()),
            revision: 0,
            federates_with: check_federates_with(td, &req.federates_with)?,
        })
    }

    fn ok_record(
        &self,
        caller: &str,
        action: &str,
        spiffe_id: &str,
        detail: String,
    ) -> AuditRecord {
        AuditRecord {
            at: unix(self.now()),
            caller: caller.into(),
            action: action.into(),
            spiffe_id: spiffe_id.into(),
            result: "ok".into(),
            detail,
            ..AuditRecord::default()
        }
    }

    /// Writes the audit record of a successful admin change made in `tx`
    /// (outside this module, e.g. federation relationships), so that it
    /// commits with the change or not at all.
    ///
    /// # Errors
    /// Unavailable when the audit log cannot be written.
    pub fn audit_change_in(
        &self,
        tx: &crate::store::Tx<'_>,
        caller: &str,
        action: &str,
        detail: String,
    ) -> Result<(), CaError> {
        let record = self.ok_record(caller, action, "", detail);
        self.auditor.durable_in(tx, &record)
    }

    /// Checks and stores a registration entry; its record commits with it.
    ///
    /// # Errors
    /// InvalidArgument for a bad or reserved ID, parent, selector, TTL or DNS
    /// name; AlreadyExists for a duplicate; Unavailable when the audit log
    /// cannot be written.
    pub fn create_entry(&self, req: &NewEntry, caller: &str) -> Result<EntryRow, CaError> {
        let entry = self.refusing(caller, "create_entry", &req.spiffe_id, || {
            let row = self.validate_entry(req)?;
            self.store.transaction(|tx| {
                let entry = store::insert_entry(tx, row)?;
                let record = self.ok_record(
                    caller,
                    "create_entry",
                    &entry.spiffe_id,
                    format!("entry {}", entry.id),
                );
                self.auditor.durable_in(tx, &record)?;
                Ok(entry)
            })
        })?;
        self.entries_changed();
        Ok(entry)
    }

    /// Deletes an entry; its record commits with the deletion.
    ///
    /// # Errors
    /// NotFound for an unknown id; Unavailable when the audit log cannot be
    /// written.
    pub fn delete_entry(&self, id: &str, caller: &str) -> Result<(), CaError> {
        self.refusing(caller, "delete_entry", "", || {
            if let Some(d) = self.derived.get(id) {
                return Err(CaError::FailedPrecondition(format!(
                    "entry {id:?} is derived from {} for pod {} and is not stored: change the policy or the pod instead",
                    d.entry.origin, d.pod
                )));
            }
            self.store.transaction(|tx| {
                if !store::remove_entry(tx, id)? {
                    return Err(CaError::NotFound(format!("no entry {id:?}")));
                }
                let record = self.ok_record(caller, "delete_entry", "", format!("entry {id}"));
                self.auditor.durable_in(tx, &record)
            })
        })?;
        self.entries_changed();
        Ok(())
    }

    /// One entry.
    ///
    /// # Errors
    /// NotFound for an unknown id.
    pub fn get_entry(&self, id: &str) -> Result<EntryRow, CaError> {
        self.store
            .get_entry(id)?
            .ok_or_else(|| CaError::NotFound(format!("no entry {id:?}")))
    }

    /// One entry, stored or derived from a pod policy.
    ///
    /// # Errors
    /// NotFound for an unknown id.
    pub fn get_any_entry(&self, id: &str) -> Result<EntryView, CaError> {
        match self.derived.get(id) {
            Some(d) => Ok(d.entry),
            None => self.get_entry(id).map(EntryView::stored),
        }
    }

    /// Entries stored and derived from pod policies, all or those of one parent.
    ///
    /// # Errors
    /// Store errors.
    pub fn list_any_entries(&self, parent_id: Option<&str>) -> Result<Vec<EntryView>, CaError> {
        let mut out: Vec<EntryView> = self
            .list_entries(parent_id)?
            .into_iter()
            .map(EntryView::stored)
            .collect();
        out.extend(self.derived.list(parent_id));
        Ok(out)
    }

    /// Entries, all or those of one parent.
    ///
    /// # Errors
    /// Store errors.
    pub fn list_entries(&self, parent_id: Option<&str>) -> Result<Vec<EntryRow>, CaError> {
        Ok(self.store.list_entries(parent_id)?)
    }

    /// Announces an entry change (stored or derived) to the watchers.
    pub fn entries_changed(&self) {
        match self.store.revision() {
            Ok(rev) => {
                // Both counters only grow, so their sum does too.
                self.entries
                    .send_replace(rev.saturating_add(self.derived.revision()));
            }
            Err(e) => tracing::error!(error = %e, "could not read the entry revision"),
        }
    }

    /// Creates a single-use join token for the node `node_name`, valid for
    /// `ttl` (or the configured default). Only its hash is stored.
    ///
    /// # Errors
    /// InvalidArgument for a bad node name; Unavailable when the audit log
    /// cannot be written.
    pub fn create_join_token(
        &self,
        node_name: &str,
        ttl: Option<Duration>,
        caller: &str,
    ) -> Result<JoinToken, CaError> {
        self.refusing(caller, "create_join_token", "", || {
            // `<cluster>/<node-uid>` names belong to Kubernetes nodes (k8s_psat): a join
            // token may not claim one.
            if node_name.contains('/') {
                return Err(CaError::InvalidArgument(format!(
                    "invalid node name {node_name:?}: a join token names a single path segment"
                )));
            }
            let node_id = self.node_id(node_name)?;
            let ttl = ttl.unwrap_or(self.config.join_token_ttl);
            let token = random_hex::<32>()?;
            let now = unix(self.now());
            let expires_at = now.saturating_add(secs(ttl));
            self.store.transaction(|tx| {
                store::insert_join_token(
                    tx,
                    &super::token_hash(&token),
                    node_name,
                    now,
                    expires_at,
                )?;
                let record = self.ok_record(
                    caller,
                    "create_join_token",
                    node_id.as_str(),
                    format!("expires_at {expires_at}"),
                );
                self.auditor.durable_in(tx, &record)
            })?;
            Ok(JoinToken {
                token,
                node_id,
                expires_at,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_patterns() {
        for (pattern, name, covers) in [
            ("localhost", "localhost", true),
            ("LocalHost.", "localhost", true),
            ("*.example.org", "ca.example.org", true),
            ("*.example.org", "example.org", false),
            ("*.example.org", "a.b.example.org", false),
            ("ca.example.org", "other.example.org", false),
        ] {
            assert_eq!(dns_covers(pattern, name), covers, "{pattern} {name}");
        }
    }
}

#[cfg(test)]
mod ca_tests {
    use super::*;
    use crate::ca::testing::{self, TestClock};
    use crate::config::Settings;

    #[test]
    fn entries_and_mints_may_not_claim_what_belongs_to_signet() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let settings = Settings {
            server_names: vec!["localhost".into(), "ca.test.org".into()],
            ..Settings::default()
        };
        let ca = testing::open(dir.path(), &clock, settings);
        let node = testing::attest(&ca, "n1");
        let new = |path: &str, dns: &[&str]| NewEntry {
            spiffe_id: format!("spiffe://test.org{path}"),
            parent_id: node.to_string(),
            selectors: vec![("unix".into(), "uid:1".into())],
            ttl_seconds: 0,
            dns_names: dns.iter().map(|d| (*d).to_owned()).collect(),
            federates_with: vec![],
        };
        let refused = [
            new("/signet/ca", &[]),
            new("/signet", &[]),
            new("/signet/node/n2", &[]),
            new("/web", &["localhost"]),
            new("/web", &["LOCALHOST"]),
            new("/web", &["ca.test.org"]),
            new("/web", &["*.test.org"]),
            new("/web", &["not a name"]),
            NewEntry {
                spiffe_id: "spiffe://other.org/web".into(),
                ..new("/web", &[])
            },
        ];
        let records = testing::audit(&ca).len();
        for req in &refused {
            let err = ca.create_entry(req, "admin").unwrap_err();
            assert!(
                matches!(err, CaError::InvalidArgument(_)),
                "{req:?}: {err:?}"
            );
            let minted = ca.mint(
                &req.spiffe_id,
                &testing::csr(),
                None,
                &req.dns_names,
                "admin",
            );
            assert!(
                matches!(minted, Err(CaError::InvalidArgument(_))),
                "{req:?}: {minted:?}"
            );
        }
        assert!(ca.list_entries(None).unwrap().is_empty());
        let audit = testing::audit(&ca);
        assert!(
            audit[records..].iter().all(|r| r.result == "rejected"),
            "{audit:?}"
        );
        // Other names are fine, and the change is recorded.
        let entry = ca
            .create_entry(&new("/web", &["web.test.org"]), "admin")
            .unwrap();
        let last = testing::audit(&ca).pop().unwrap();
        assert_eq!(
            (last.action.as_str(), last.result.as_str(), last.detail),
            ("create_entry", "ok", format!("entry {}", entry.id))
        );
        ca.delete_entry(&entry.id, "admin").unwrap();
        assert_eq!(testing::audit(&ca).pop().unwrap().action, "delete_entry");
        assert!(matches!(
            ca.delete_entry(&entry.id, "admin"),
            Err(CaError::NotFound(_))
        ));
    }

    #[test]
    fn federates_with_names_other_valid_trust_domains_only() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let ca = testing::open(dir.path(), &clock, Settings::default());
        let node = testing::attest(&ca, "n1");
        let new = |tds: Vec<String>| NewEntry {
            spiffe_id: "spiffe://test.org/web".into(),
            parent_id: node.to_string(),
            selectors: vec![("unix".into(), "uid:1".into())],
            federates_with: tds,
            ..NewEntry::default()
        };
        for bad in [
            vec!["test.org".to_owned()],
            vec!["Not A Domain".to_owned()],
            (0..=MAX_FEDERATES_WITH)
                .map(|i| format!("td{i}.org"))
                .collect(),
        ] {
            let err = ca.create_entry(&new(bad.clone()), "admin").unwrap_err();
            assert!(
                matches!(err, CaError::InvalidArgument(_)),
                "{bad:?}: {err:?}"
            );
        }
        assert!(ca.list_entries(None).unwrap().is_empty());
        let made = ca
            .create_entry(
                &new(vec!["b.org".into(), "a.org".into(), "b.org".into()]),
                "admin",
            )
            .unwrap();
        assert_eq!(made.federates_with, ["a.org", "b.org"]);
        assert_eq!(ca.get_entry(&made.id).unwrap(), made);
    }
}
