//! The admin API (`signet.ca.v1.Admin`), served on a unix socket that only
//! the CA's user can open (mode 0600): file permissions are the credential.
//! A thin shell: decode, call the CA on the blocking pool, convert.

use std::sync::Arc;

use signet_proto::ca::v1 as pb;
use signet_proto::ca::v1::admin_server::Admin;
use tonic::{Request, Response, Status};

use super::convert;
use super::status::blocking;
use crate::ca::time::ttl_from_secs;
use crate::ca::{Ca, CaError, NewEntry};
use crate::federation::{Federations, api as federation};

/// The admin API over a shared CA.
pub struct AdminApi {
    ca: Arc<Ca>,
    federations: Option<Federations>,
}

impl AdminApi {
    pub fn new(ca: Arc<Ca>) -> Self {
        Self {
            ca,
            federations: None,
        }
    }

    /// Serves the federation RPCs from `federations`.
    #[must_use]
    pub fn with_federations(mut self, federations: Federations) -> Self {
        self.federations = Some(federations);
        self
    }

    fn caller<T>(req: &Request<T>) -> String {
        match req
            .extensions()
            .get::<tonic::transport::server::UdsConnectInfo>()
        {
            Some(info) => match &info.peer_cred {
                Some(cred) => format!("admin(uid={},pid={})", cred.uid(), cred.pid().unwrap_or(0)),
                None => "admin".to_owned(),
            },
            None => "admin".to_owned(),
        }
    }
}

fn not_negative(what: &str, secs: i64) -> Result<(), CaError> {
    if secs < 0 {
        return Err(CaError::InvalidArgument(format!(
            "{what} must not be negative"
        )));
    }
    Ok(())
}

fn changed_response(
    (authority, bundle_sequence): (crate::ca::signing::AuthorityInfo, u64),
) -> pb::AuthorityChangeResponse {
    pb::AuthorityChangeResponse {
        authority: Some(convert::authority(&authority)),
        bundle_sequence,
    }
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn create_entry(
        &self,
        req: Request<pb::CreateEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let caller = Self::caller(&req);
        let body = req.into_inner();
        let new = NewEntry {
            spiffe_id: body.spiffe_id,
            parent_id: body.parent_id,
            selectors: body
                .selectors
                .into_iter()
                .map(|s| (s.r#type, s.value))
                .collect(),
            ttl_seconds: body.x509_svid_ttl_seconds,
            dns_names: body.dns_names,
            federates_with: body.federates_with,
        };
        let ca = self.ca.clone();
        let entry = blocking(move || ca.create_entry(&new, &caller)).await?;
        Ok(Response::new(convert::entry(&entry)))
    }

    async fn list_entries(
        &self,
        req: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let parent = req.into_inner().parent_id;
        let parent = (!parent.is_empty()).then_some(parent);
        let ca = self.ca.clone();
        let entries = blocking(move || ca.list_any_entries(parent.as_deref())).await?;
        Ok(Response::new(pb::ListEntriesResponse {
            entries: entries.iter().map(convert::any_entry).collect(),
        }))
    }

    async fn get_entry(
        &self,
        req: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let id = req.into_inner().id;
        let ca = self.ca.clone();
        let entry = blocking(move || ca.get_any_entry(&id)).await?;
        Ok(Response::new(convert::any_entry(&entry)))
    }

    async fn delete_entry(
        &self,
        req: Request<pb::DeleteEntryRequest>,
    ) -> Result<Response<pb::DeleteEntryResponse>, Status> {
        let caller = Self::caller(&req);
        let id = req.into_inner().id;
        let ca = self.ca.clone();
        blocking(move || ca.delete_entry(&id, &caller)).await?;
        Ok(Response::new(pb::DeleteEntryResponse {}))
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let caller = Self::caller(&req);
        let body = req.into_inner();
        not_negative("ttl_seconds", body.ttl_seconds)?;
        let ca = self.ca.clone();
        let token = blocking(move || {
            ca.create_join_token(&body.node_name, ttl_from_secs(body.ttl_seconds), &caller)
        })
        .await?;
        Ok(Response::new(pb::CreateJoinTokenResponse {
            token: token.token,
            node_spiffe_id: token.node_id.to_string(),
            expires_at: token.expires_at,
        }))
    }

    async fn get_bundle(
        &self,
        _req: Request<pb::GetBundleRequest>,
    ) -> Result<Response<pb::Bundle>, Status> {
        Ok(Response::new(convert::bundle(&self.ca.bundle())))
    }

    async fn list_authorities(
        &self,
        _req: Request<pb::ListAuthoritiesRequest>,
    ) -> Result<Response<pb::ListAuthoritiesResponse>, Status> {
        let ca = self.ca.clone();
        let (authorities, replicas) =
            blocking(move || Ok((ca.list_authorities()?, ca.replicas()?))).await?;
        Ok(Response::new(pb::ListAuthoritiesResponse {
            authorities: authorities.iter().map(convert::authority).collect(),
            replicas: replicas
                .into_iter()
                .map(|r| convert::replica(r, self.ca.replica_id()))
                .collect(),
        }))
    }

    async fn prepare_authority(
        &self,
        req: Request<pb::PrepareAuthorityRequest>,
    ) -> Result<Response<pb::PrepareAuthorityResponse>, Status> {
        let caller = Self::caller(&req);
        let kind = convert::kind_from_pb(req.into_inner().kind);
        let ca = self.ca.clone();
        let (authority, bundle_sequence) =
            blocking(move || ca.prepare_authority(kind, &caller)).await?;
        Ok(Response::new(pb::PrepareAuthorityResponse {
            bundle_sequence,
            authority: Some(convert::authority(&authority)),
        }))
    }

    async fn activate_authority(
        &self,
        req: Request<pb::ActivateAuthorityRequest>,
    ) -> Result<Response<pb::AuthorityChangeResponse>, Status> {
        let caller = Self::caller(&req);
        let body = req.into_inner();
        let ca = self.ca.clone();
        let changed =
            blocking(move || ca.activate_authority(&body.id, body.force, &caller)).await?;
        Ok(Response::new(changed_response(changed)))
    }

    async fn taint_authority(
        &self,
        req: Request<pb::TaintAuthorityRequest>,
    ) -> Result<Response<pb::AuthorityChangeResponse>, Status> {
        let caller = Self::caller(&req);
        let body = req.into_inner();
        let ca = self.ca.clone();
        let changed = blocking(move || ca.taint_authority(&body.id, &caller)).await?;
        Ok(Response::new(changed_response(changed)))
    }

    async fn revoke_authority(
        &self,
        req: Request<pb::RevokeAuthorityRequest>,
    ) -> Result<Response<pb::AuthorityChangeResponse>, Status> {
        let caller = Self::caller(&req);
        let body = req.into_inner();
        let ca = self.ca.clone();
        let changed = blocking(move || ca.revoke_authority(&body.id, body.force, &caller)).await?;
        Ok(Response::new(changed_response(changed)))
    }

    async fn create_federation(
        &self,
        req: Request<pb::CreateFederationRequest>,
    ) -> Result<Response<pb::Federation>, Status> {
        let caller = Self::caller(&req);
        let fed = self.federations.as_ref();
        federation::create(&self.ca, fed, &caller, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_federations(
        &self,
        _req: Request<pb::ListFederationsRequest>,
    ) -> Result<Response<pb::ListFederationsResponse>, Status> {
        federation::list(self.federations.as_ref()).map(Response::new)
    }

    async fn get_federation(
        &self,
        req: Request<pb::GetFederationRequest>,
    ) -> Result<Response<pb::Federation>, Status> {
        federation::get(self.federations.as_ref(), &req.into_inner().trust_domain)
            .map(Response::new)
    }

    async fn delete_federation(
        &self,
        req: Request<pb::DeleteFederationRequest>,
    ) -> Result<Response<pb::DeleteFederationResponse>, Status> {
        let caller = Self::caller(&req);
        let td = req.into_inner().trust_domain;
        federation::delete(&self.ca, self.federations.as_ref(), &caller, td)
            .await
            .map(Response::new)
    }

    async fn refresh_federation(
        &self,
        req: Request<pb::RefreshFederationRequest>,
    ) -> Result<Response<pb::Federation>, Status> {
        federation::refresh(self.federations.as_ref(), &req.into_inner().trust_domain)
            .await
            .map(Response::new)
    }

    async fn list_agents(
        &self,
        _req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let ca = self.ca.clone();
        let nodes = blocking(move || ca.nodes()).await?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: nodes.into_iter().map(convert::agent).collect(),
            bundle_sequence: self.ca.bundle().sequence(),
        }))
    }

    async fn get_status(
        &self,
        _req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let authorities = self.list_authorities(Request::new(pb::ListAuthoritiesRequest {}));
        let agents = self.list_agents(Request::new(pb::ListAgentsRequest {}));
        let (authorities, agents) = (authorities.await?.into_inner(), agents.await?.into_inner());
        Ok(Response::new(super::overview::status(
            &self.ca,
            authorities,
            agents,
        )?))
    }

    async fn mint_x509_svid(
        &self,
        req: Request<pb::MintX509SvidRequest>,
    ) -> Result<Response<pb::MintX509SvidResponse>, Status> {
        let caller = Self::caller(&req);
        let body = req.into_inner();
        not_negative("ttl_seconds", body.ttl_seconds)?;
        let ca = self.ca.clone();
        let started = std::time::Instant::now();
        let minted = blocking(move || {
            ca.mint(
                &body.spiffe_id,
                &body.csr,
                ttl_from_secs(body.ttl_seconds),
                &body.dns_names,
                &caller,
            )
        })
        .await;
        let (id, cert) = crate::metrics::record("mint_x509_svid", started, minted)?;
        Ok(Response::new(pb::MintX509SvidResponse {
            svid: Some(convert::svid(&id, &cert)),
            bundle: Some(convert::bundle(&self.ca.bundle())),
        }))
    }

    async fn evict_agent(
        &self,
        req: Request<pb::EvictAgentRequest>,
    ) -> Result<Response<pb::EvictAgentResponse>, Status> {
        super::admin_nodes::evict(&self.ca, &Self::caller(&req), req.into_inner()).await
    }

    async fn ban_agent(
        &self,
        req: Request<pb::BanAgentRequest>,
    ) -> Result<Response<pb::BanAgentResponse>, Status> {
        super::admin_nodes::ban(&self.ca, &Self::caller(&req), req.into_inner()).await
    }

    async fn unban_agent(
        &self,
        req: Request<pb::UnbanAgentRequest>,
    ) -> Result<Response<pb::UnbanAgentResponse>, Status> {
        super::admin_nodes::unban(&self.ca, &Self::caller(&req), req.into_inner()).await
    }
}
