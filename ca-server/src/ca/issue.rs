//! X.509-SVID issuance: signing with the active intermediate, the lifetime
//! policy, batch signing for nodes, and the admin's mint.

use std::time::Duration;

use signet_identity::SpiffeId;
use signet_identity::x509::{
    IssueError, IssuedCert, VerifiedCsr, X509SvidParams, issue_dns_leaf, issue_x509_svid,
};

use super::time::unix;
use super::{Ca, CaError};
use crate::store::{AuditRecord, EntryRow};

/// One item of a batch signing request, already decoded.
#[derive(Debug, Clone)]
pub struct SignItem {
    pub entry_id: String,
    pub csr: Vec<u8>,
    pub ttl: Option<Duration>,
}

/// What a mesh proxy's certificate carries besides its key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshLeaf {
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// Whether the SPIFFE ID is a URI SAN (an X.509-SVID); without it the
    /// leaf is named by `dns_names` alone, as linkerd-identity issues them.
    pub spiffe_uri: bool,
    /// The lifetime asked for; the CA's default and cap apply.
    pub ttl: Option<Duration>,
}

/// The outcome of one batch item.
pub type ItemResult = Result<(SpiffeId, IssuedCert), CaError>;

/// The audit record of an issued certificate.
pub(super) fn issued_record(
    caller: &str,
    action: &str,
    id: &SpiffeId,
    cert: &IssuedCert,
    now: i64,
) -> AuditRecord {
    AuditRecord {
        at: now,
        caller: caller.into(),
        action: action.into(),
        spiffe_id: id.to_string(),
        serial: cert.serial_hex(),
        not_after: unix(cert.not_after),
        result: "issued".into(),
        detail: String::new(),
    }
}

pub(super) fn parse_csr(der: &[u8]) -> Result<VerifiedCsr, CaError> {
    VerifiedCsr::from_der(der).map_err(|e| CaError::InvalidArgument(e.to_string()))
}

impl Ca {
    /// Signs `csr` for `spiffe_id` with the active intermediate. Decides
    /// nothing about who may have the ID: callers check that first.
    ///
    /// # Errors
    /// [`CaError::InvalidArgument`] for a bad DNS name or TTL; internal errors.
    pub fn sign(
        &self,
        csr: &VerifiedCsr,
        spiffe_id: &SpiffeId,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<IssuedCert, CaError> {
        let signing = self.signing();
        let params = X509SvidParams {
            spiffe_id: spiffe_id.clone(),
            dns_names: dns_names.to_vec(),
            ttl,
            backdate: self.config.backdate,
        };
        issue_x509_svid(csr, &params, &signing.signer, self.now()).map_err(|e| match e {
            IssueError::InvalidDnsName(_)
            | IssueError::ZeroTtl
            | IssueError::WrongTrustDomain { .. }
            | IssueError::EmptyPath(_) => CaError::InvalidArgument(e.to_string()),
            other => CaError::Internal(other.to_string()),
        })
    }

    /// Signs a batch of workload CSRs for `node`. Each item succeeds or fails
    /// on its own; every outcome is recorded durably in one group before
    /// anything is returned.
    ///
    /// # Errors
    /// The whole batch fails only when the node is not authorized, the batch
    /// is too large, or the audit log cannot be written (then nothing is
    /// returned: Unavailable).
    pub fn sign_batch(
        &self,
        node: &SpiffeId,
        items: &[SignItem],
    ) -> Result<Vec<ItemResult>, CaError> {
        self.refusing(node.as_str(), "sign_batch", "", || {
            if items.len() > self.config.max_batch {
                return Err(CaError::InvalidArgument(format!(
                    "batch has {} items; the limit is {}",
                    items.len(),
                    self.config.max_batch
                )));
            }
            self.authorize_node(node)
        })?;
        let clock = self.now();
        let now = unix(clock);
        let results: Vec<ItemResult> = items
            .iter()
            .map(|item| self.sign_item(node, item))
            .collect();
        let mut records = Vec::with_capacity(items.len());
        for (item, result) in items.iter().zip(&results) {
            match result {
                Ok((id, cert)) => {
                    let mut r = issued_record(node.as_str(), "sign_x509_svid", id, cert, now);
                    r.detail = format!("entry {}", item.entry_id);
                    records.push(r);
                }
                Err(e) => {
                    // Refused items are rate limited like any refusal, so
                    // that a node cannot grow the log with bad batches.
                    let (admit, summaries) = self.auditor.admit_refusal(
                        node.as_str(),
                        "sign_x509_svid",
                        e.kind(),
                        clock,
                    );
                    records.extend(summaries);
                    if admit {
                        records.push(AuditRecord {
                            at: now,
                            caller: node.to_string(),
                            action: "sign_x509_svid".into(),
                            result: "rejected".into(),
                            detail: format!("entry {}: {e}", item.entry_id),
                            ..AuditRecord::default()
                        });
                    }
                }
            }
        }
        self.auditor.durable(records)?;
        Ok(results)
    }

    fn sign_item(&self, node: &SpiffeId, item: &SignItem) -> ItemResult {
        let entry = self.entry_of(node, &item.entry_id)?;
        let csr = parse_csr(&item.csr)?;
        let id = SpiffeId::parse(&entry.spiffe_id)
            .map_err(|e| CaError::Internal(format!("stored entry {}: {e}", entry.id)))?;
        // Entries stored before a rule existed are held to it too.
        self.check_claimable(&id, &entry.dns_names)?;
        let ttl = self.effective_ttl(&entry, item.ttl);
        let cert = self.sign(&csr, &id, &entry.dns_names, ttl)?;
        Ok((id, cert))
    }

    /// The entry `entry_id` (stored, or derived from a pod on `node`) when it is
    /// parented to `node`.
    ///
    /// # Errors
    /// PermissionDenied otherwise, with the same message whether it does not
    /// exist or belongs to another node.
    pub(super) fn entry_of(&self, node: &SpiffeId, entry_id: &str) -> Result<EntryRow, CaError> {
        let derived = self.derived.get(entry_id).map(|d| d.entry.row);
        let stored = match derived {
            Some(d) => Some(d),
            None => self.store.get_entry(entry_id)?,
        };
        stored
            .filter(|e| e.parent_id == node.as_str())
            .ok_or_else(|| {
                CaError::PermissionDenied(format!(
                    "entry {entry_id:?} does not exist or is not authorized for {node}"
                ))
            })
    }

    /// min(requested, the entry's maximum or the server's); the signer's
    /// notAfter caps it again when signing.
    pub fn effective_ttl(&self, entry: &EntryRow, requested: Option<Duration>) -> Duration {
        let (default, max) = match super::time::ttl_from_secs(entry.ttl_seconds) {
            Some(t) => (t, t),
            None => (
                self.config.default_x509_svid_ttl,
                self.config.max_x509_svid_ttl,
            ),
        };
        requested
            .filter(|d| !d.is_zero())
            .map_or(default, |r| r.min(max))
    }

    /// Mints an SVID for any non-reserved ID of the trust domain (admin only).
    ///
    /// # Errors
    /// InvalidArgument for a bad or reserved ID, a bad CSR, a bad DNS name or
    /// one the CA serves under, a bad TTL; Unavailable when the audit log
    /// cannot be written (then nothing is returned).
    pub fn mint(
        &self,
        id: &str,
        csr: &[u8],
        ttl: Option<Duration>,
        dns_names: &[String],
        caller: &str,
    ) -> Result<(SpiffeId, IssuedCert), CaError> {
        self.refusing(caller, "mint", id, || {
            let id = SpiffeId::parse(id)
                .map_err(|e| CaError::InvalidArgument(format!("invalid SPIFFE ID {id:?}: {e}")))?;
            self.check_claimable(&id, dns_names)?;
            let csr = parse_csr(csr)?;
            let ttl = ttl
                .filter(|t| !t.is_zero())
                .unwrap_or(self.config.default_x509_svid_ttl)
                .min(self.config.max_x509_svid_ttl);
            let cert = self.sign(&csr, &id, dns_names, ttl)?;
            let now = unix(self.now());
            // The issuing intermediate, so that revoking it can tell whether
            // an admin-minted SVID still depends on it.
            let mut record = issued_record(caller, "mint", &id, &cert, now);
            if let Some(signer) = cert.chain.get(1) {
                record.detail = format!("signer {}", super::authorities::cert_id(signer));
            }
            self.auditor.durable(vec![record])?;
            Ok((id, cert))
        })
    }

    /// Issues an SVID for a mesh proxy (Istio, Linkerd) whose identity the
    /// caller has already derived from a reviewed token: `caller` is that
    /// token's account, `action` names the API. The CSR contributes only its
    /// key. Refusals and the issuance are audited.
    ///
    /// # Errors
    /// InvalidArgument for an ID or DNS name no one may claim; Unavailable
    /// when the audit log cannot be written (then nothing is returned).
    pub fn issue_for_mesh(
        &self,
        caller: &str,
        action: &str,
        id: &SpiffeId,
        leaf: &MeshLeaf,
        csr: &VerifiedCsr,
    ) -> Result<IssuedCert, CaError> {
        let dns_names = &leaf.dns_names;
        self.refusing(caller, action, id.as_str(), || {
            self.check_claimable(id, dns_names)?;
            let ttl = leaf
                .ttl
                .filter(|t| !t.is_zero())
                .unwrap_or(self.config.default_x509_svid_ttl)
                .min(self.config.max_x509_svid_ttl);
            let cert = if leaf.spiffe_uri {
                self.sign(csr, id, dns_names, ttl)?
            } else {
                let signing = self.signing();
                issue_dns_leaf(
                    csr,
                    dns_names,
                    ttl,
                    self.config.backdate,
                    &signing.signer,
                    self.now(),
                )
                .map_err(|e| match e {
                    IssueError::InvalidDnsName(_) | IssueError::NoName => {
                        CaError::InvalidArgument(e.to_string())
                    }
                    other => CaError::Internal(other.to_string()),
                })?
            };
            let now = unix(self.now());
            self.auditor
                .durable(vec![issued_record(caller, action, id, &cert, now)])?;
            Ok(cert)
        })
    }
}
