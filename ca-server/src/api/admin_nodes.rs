//! The admin API's node lifecycle calls: evict, ban, unban. The decisions
//! are the CA's (`ca::revocation`); this is the gRPC shell.

use std::sync::Arc;

use signet_proto::ca::v1 as pb;
use tonic::{Response, Status};

use super::status::blocking;
use crate::ca::Ca;

/// `EvictAgent`.
///
/// # Errors
/// As [`Ca::evict_node`].
pub async fn evict(
    ca: &Arc<Ca>,
    caller: &str,
    req: pb::EvictAgentRequest,
) -> Result<Response<pb::EvictAgentResponse>, Status> {
    let (ca, caller) = (ca.clone(), caller.to_owned());
    let id = blocking(move || {
        ca.evict_node(&req.node, false, &caller)?;
        ca.node_arg_id(&req.node)
    })
    .await?;
    Ok(Response::new(pb::EvictAgentResponse {
        spiffe_id: id.to_string(),
    }))
}

/// `BanAgent`.
///
/// # Errors
/// As [`Ca::evict_node`].
pub async fn ban(
    ca: &Arc<Ca>,
    caller: &str,
    req: pb::BanAgentRequest,
) -> Result<Response<pb::BanAgentResponse>, Status> {
    let (ca, caller) = (ca.clone(), caller.to_owned());
    let (outcome, id) = blocking(move || {
        let outcome = ca.evict_node(&req.node, true, &caller)?;
        Ok((outcome, ca.node_arg_id(&req.node)?))
    })
    .await?;
    Ok(Response::new(pb::BanAgentResponse {
        spiffe_id: id.to_string(),
        was_attested: outcome.was_attested,
        newly_banned: outcome.newly_banned,
    }))
}

/// `UnbanAgent`.
///
/// # Errors
/// As [`Ca::unban_node`].
pub async fn unban(
    ca: &Arc<Ca>,
    caller: &str,
    req: pb::UnbanAgentRequest,
) -> Result<Response<pb::UnbanAgentResponse>, Status> {
    let (ca, caller) = (ca.clone(), caller.to_owned());
    blocking(move || ca.unban_node(&req.node, &caller)).await?;
    Ok(Response::new(pb::UnbanAgentResponse {}))
}
