//! The admin federation RPCs and the wire forms of relationships and
//! federated bundles. Called from `api/admin.rs` and `api/node.rs`.

use signet_identity::TrustBundle;
use signet_proto::ca::v1 as pb;
use tokio::sync::watch;
use tonic::Status;

use super::registry::FederatedBundles;
use super::{Federations, NewRelationship, Profile, ProfileKind, View};
use crate::api::status::blocking;
use crate::ca::{Ca, CaError};

/// The federated bundles in wire form, each naming its trust domain.
pub fn federated_pb(bundles: &[TrustBundle]) -> Vec<pb::Bundle> {
    bundles
        .iter()
        .map(signet_proto::convert::bundle_to_pb)
        .collect()
}

/// `bundle` with the federated bundles of `federated`, marked as seen.
pub fn add_federated(
    mut bundle: pb::Bundle,
    federated: Option<&mut watch::Receiver<FederatedBundles>>,
) -> pb::Bundle {
    if let Some(f) = federated {
        bundle.federated = federated_pb(&f.borrow_and_update());
    }
    bundle
}

/// Resolves when the federated set changes; never when there is none.
pub async fn changed(federated: &mut Option<watch::Receiver<FederatedBundles>>) {
    match federated {
        Some(f) => {
            if f.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

fn profile_to_pb(kind: ProfileKind) -> pb::FederationProfile {
    match kind {
        ProfileKind::HttpsWeb => pb::FederationProfile::HttpsWeb,
        ProfileKind::HttpsSpiffe => pb::FederationProfile::HttpsSpiffe,
    }
}

/// The wire form of a relationship.
pub fn federation_pb(v: &View) -> pb::Federation {
    let rel = &v.relationship;
    pb::Federation {
        trust_domain: rel.trust_domain.to_string(),
        bundle_endpoint_url: rel.url.as_str().to_owned(),
        profile: profile_to_pb(rel.profile.kind()).into(),
        endpoint_spiffe_id: match &rel.profile {
            Profile::HttpsSpiffe { endpoint_id, .. } => endpoint_id.to_string(),
            Profile::HttpsWeb { .. } => String::new(),
        },
        from_config: rel.from_config,
        bundle: v.bundle.as_ref().map(signet_proto::convert::bundle_to_pb),
        last_attempt_at: v.status.last_attempt_at,
        last_success_at: v.status.last_success_at,
        last_error: v.status.last_error.clone(),
        next_fetch_at: v.next_fetch_at,
        consecutive_failures: v.status.consecutive_failures,
    }
}

fn registry(f: Option<&Federations>) -> Result<&Federations, Status> {
    f.ok_or_else(|| Status::unavailable("federation is not running"))
}

fn profile_name(p: i32) -> Result<&'static str, CaError> {
    match pb::FederationProfile::try_from(p) {
        Ok(pb::FederationProfile::HttpsWeb) => Ok("https_web"),
        Ok(pb::FederationProfile::HttpsSpiffe) => Ok("https_spiffe"),
        _ => Err(CaError::InvalidArgument(
            "profile must be HTTPS_WEB or HTTPS_SPIFFE".into(),
        )),
    }
}

/// CreateFederation.
///
/// # Errors
/// The status of the rule broken; nothing is created then.
pub async fn create(
    ca: &std::sync::Arc<Ca>,
    f: Option<&Federations>,
    caller: &str,
    req: pb::CreateFederationRequest,
) -> Result<pb::Federation, Status> {
    let registry = registry(f)?.clone();
    let own = ca.config().trust_domain.clone();
    let caller = caller.to_owned();
    let ca = ca.clone();
    let view = blocking(move || {
        let result = (|| {
            let new = NewRelationship {
                trust_domain: req.trust_domain,
                url: req.bundle_endpoint_url,
                profile: profile_name(req.profile)?.to_owned(),
                endpoint_spiffe_id: req.endpoint_spiffe_id,
                initial_bundle: req.initial_bundle,
                web_roots_pem: req.web_roots_pem,
            };
            let rel = new.check(&own, false)?;
            Ok::<_, CaError>(registry.create(rel, &caller)?)
        })();
        if let Err(e) = &result {
            ca.audit_rejection(&caller, "create_federation", "", e);
        }
        result
    })
    .await?;
    Ok(federation_pb(&view))
}

/// ListFederations.
///
/// # Errors
/// UNAVAILABLE when federation is not running.
pub fn list(f: Option<&Federations>) -> Result<pb::ListFederationsResponse, Status> {
    Ok(pb::ListFederationsResponse {
        federations: registry(f)?.list().iter().map(federation_pb).collect(),
    })
}

/// GetFederation.
///
/// # Errors
/// NOT_FOUND.
pub fn get(f: Option<&Federations>, td: &str) -> Result<pb::Federation, Status> {
    let view = registry(f)?.get(td).map_err(CaError::from)?;
    Ok(federation_pb(&view))
}

/// DeleteFederation.
///
/// # Errors
/// NOT_FOUND; FAILED_PRECONDITION for a relationship of the configuration.
pub async fn delete(
    ca: &std::sync::Arc<Ca>,
    f: Option<&Federations>,
    caller: &str,
    td: String,
) -> Result<pb::DeleteFederationResponse, Status> {
    let registry = registry(f)?.clone();
    let caller = caller.to_owned();
    let ca = ca.clone();
    blocking(move || {
        let r = registry.delete(&td, &caller).map_err(CaError::from);
        if let Err(e) = &r {
            ca.audit_rejection(&caller, "delete_federation", "", e);
        }
        r
    })
    .await?;
    Ok(pb::DeleteFederationResponse {})
}

/// RefreshFederation.
///
/// # Errors
/// NOT_FOUND. A failed fetch is not an error of the call: it is in
/// `last_error` of the answer.
pub async fn refresh(f: Option<&Federations>, td: &str) -> Result<pb::Federation, Status> {
    let view = registry(f)?.refresh(td).await.map_err(CaError::from)?;
    Ok(federation_pb(&view))
}
