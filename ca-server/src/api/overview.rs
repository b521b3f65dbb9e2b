//! `GetStatus`: the CA's health on one screen, for `signet ca status`. It
//! reuses what `ListAuthorities` and `ListAgents` answer and adds the CA's
//! clock and the last audit write, so that an operator sees in one call
//! whether authorities are close to expiry, whether agents serve the
//! current bundle, and whether the audit log is still being written.

use signet_proto::ca::v1 as pb;

use crate::ca::time::unix;
use crate::ca::{Ca, CaError};

/// The status answer from the authority and agent lists.
///
/// # Errors
/// The audit log cannot be read.
pub fn status(
    ca: &Ca,
    authorities: pb::ListAuthoritiesResponse,
    agents: pb::ListAgentsResponse,
) -> Result<pb::GetStatusResponse, CaError> {
    let last_audit = ca.store().audit_tail(1)?.pop().map(|r| pb::AuditSummary {
        at: r.at,
        caller: r.caller,
        action: r.action,
        spiffe_id: r.spiffe_id,
        result: r.result,
    });
    Ok(pb::GetStatusResponse {
        now: unix(ca.now()),
        trust_domain: ca.config().trust_domain.to_string(),
        bundle_sequence: agents.bundle_sequence,
        authorities: authorities
            .authorities
            .into_iter()
            .map(|a| pb::Authority {
                certificate: Vec::new(),
                ..a
            })
            .collect(),
        agents: agents.agents,
        last_audit,
        replicas: authorities.replicas,
    })
}
