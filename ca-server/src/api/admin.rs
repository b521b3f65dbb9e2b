//! The admin API (`signet.ca.v1.Admin`), served on a unix socket that only
//! the CA's user can open (mode 0600): file permissions are the credential.

use std::sync::Arc;
use std::time::Duration;

use signet_identity::SpiffeId;
use signet_identity::x509::issue::validate_dns_name;
use signet_proto::ca::v1 as pb;
use signet_proto::ca::v1::admin_server::Admin;
use tonic::{Request, Response, Status};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::convert;
use crate::ca::authorities::unix;
use crate::ca::{Ca, CaError};
use crate::store::{AuditRecord, EntryRow};

/// The admin API over a shared CA.
pub struct AdminApi {
    ca: Arc<Ca>,
}

impl AdminApi {
    pub fn new(ca: Arc<Ca>) -> Self {
        Self { ca }
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

    fn audit(&self, caller: &str, action: &str, spiffe_id: &str, result: &str, detail: String) {
        let _ = self.ca.store().audit(&AuditRecord {
            at: unix(self.ca.now()),
            caller: caller.into(),
            action: action.into(),
            spiffe_id: spiffe_id.into(),
            result: result.into(),
            detail,
            ..Default::default()
        });
    }

    fn validate_entry(&self, req: &pb::CreateEntryRequest) -> Result<EntryRow, CaError> {
        let td = &self.ca.config().trust_domain;
        let id = SpiffeId::parse(&req.spiffe_id).map_err(|e| {
            CaError::InvalidArgument(format!("invalid spiffe_id {:?}: {e}", req.spiffe_id))
        })?;
        if !id.is_member_of(td) {
            return Err(CaError::InvalidArgument(format!(
                "spiffe_id {id} is not in trust domain {td}"
            )));
        }
        if id.path().is_empty() {
            return Err(CaError::InvalidArgument("spiffe_id needs a path".into()));
        }
        if id.path().starts_with("/signet/") {
            return Err(CaError::InvalidArgument(
                "the path /signet/ is reserved for Signet's own identities".into(),
            ));
        }
        let parent = SpiffeId::parse(&req.parent_id).map_err(|e| {
            CaError::InvalidArgument(format!("invalid parent_id {:?}: {e}", req.parent_id))
        })?;
        if self.ca.node_name(&parent).is_none() {
            return Err(CaError::InvalidArgument(format!(
                "parent_id {parent} is not a node of {td} (spiffe://{td}/signet/node/<name>)"
            )));
        }
        let mut selectors = Vec::with_capacity(req.selectors.len());
        for s in &req.selectors {
            if s.r#type.is_empty() || s.value.is_empty() || s.r#type.contains(':') {
                return Err(CaError::InvalidArgument(format!(
                    "invalid selector {}:{}",
                    s.r#type, s.value
                )));
            }
            selectors.push((s.r#type.clone(), s.value.clone()));
        }
        if selectors.is_empty() {
            return Err(CaError::InvalidArgument(
                "an entry needs at least one selector".into(),
            ));
        }
        selectors.sort();
        selectors.dedup();
        let max = self.ca.config().max_x509_svid_ttl.as_secs() as i64;
        if req.x509_svid_ttl_seconds < 0 || req.x509_svid_ttl_seconds > max {
            return Err(CaError::InvalidArgument(format!(
                "x509_svid_ttl_seconds must be between 0 and {max}"
            )));
        }
        for name in &req.dns_names {
            validate_dns_name(name).map_err(|e| CaError::InvalidArgument(e.to_string()))?;
        }
        Ok(EntryRow {
            id: random_hex::<16>()?,
            spiffe_id: id.to_string(),
            parent_id: parent.to_string(),
            selectors,
            ttl_seconds: req.x509_svid_ttl_seconds,
            dns_names: req.dns_names.clone(),
            created_at: unix(self.ca.now()),
            revision: 0,
        })
    }
}

fn random_hex<const N: usize>() -> Result<String, CaError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| CaError::Internal("system random generator failed".into()))?;
    Ok(hex::encode(b))
}

fn secs(s: i64) -> Option<Duration> {
    u64::try_from(s)
        .ok()
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn create_entry(
        &self,
        req: Request<pb::CreateEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let caller = Self::caller(&req);
        let body = req.into_inner();
        let result = self
            .validate_entry(&body)
            .and_then(|row| Ok(self.ca.store().create_entry(row)?));
        match result {
            Ok(entry) => {
                self.audit(
                    &caller,
                    "create_entry",
                    &entry.spiffe_id,
                    "ok",
                    format!("entry {}", entry.id),
                );
                self.ca.entries_changed();
                Ok(Response::new(convert::entry(&entry)))
            }
            Err(e) => {
                self.audit(
                    &caller,
                    "create_entry",
                    &body.spiffe_id,
                    "rejected",
                    e.to_string(),
                );
                Err(e.into())
            }
        }
    }

    async fn list_entries(
        &self,
        req: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let parent = req.into_inner().parent_id;
        let parent = (!parent.is_empty()).then_some(parent);
        let entries = self
            .ca
            .store()
            .list_entries(parent.as_deref())
            .map_err(CaError::from)?;
        Ok(Response::new(pb::ListEntriesResponse {
            entries: entries.iter().map(convert::entry).collect(),
        }))
    }

    async fn get_entry(
        &self,
        req: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let id = req.into_inner().id;
        match self.ca.store().get_entry(&id).map_err(CaError::from)? {
            Some(e) => Ok(Response::new(convert::entry(&e))),
            None => Err(CaError::NotFound(format!("no entry {id:?}")).into()),
        }
    }

    async fn delete_entry(
        &self,
        req: Request<pb::DeleteEntryRequest>,
    ) -> Result<Response<pb::DeleteEntryResponse>, Status> {
        let caller = Self::caller(&req);
        let id = req.into_inner().id;
        if self.ca.store().delete_entry(&id).map_err(CaError::from)? {
            self.audit(&caller, "delete_entry", "", "ok", format!("entry {id}"));
            self.ca.entries_changed();
            Ok(Response::new(pb::DeleteEntryResponse {}))
        } else {
            Err(CaError::NotFound(format!("no entry {id:?}")).into())
        }
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let caller = Self::caller(&req);
        let body = req.into_inner();
        let node = self.ca.node_id(&body.node_name)?;
        if body.ttl_seconds < 0 {
            return Err(CaError::InvalidArgument("ttl_seconds must not be negative".into()).into());
        }
        let ttl = secs(body.ttl_seconds).unwrap_or(self.ca.config().join_token_ttl);
        let token = random_hex::<32>()?;
        let now = unix(self.ca.now());
        let expires_at = now + ttl.as_secs() as i64;
        self.ca
            .store()
            .create_join_token(
                &crate::ca::token_hash(&token),
                &body.node_name,
                now,
                expires_at,
            )
            .map_err(CaError::from)?;
        self.audit(
            &caller,
            "create_join_token",
            node.as_str(),
            "ok",
            format!("expires_at {expires_at}"),
        );
        Ok(Response::new(pb::CreateJoinTokenResponse {
            token,
            node_spiffe_id: node.to_string(),
            expires_at,
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
        let mut out = Vec::new();
        let signing = self.ca.signing();
        if self.ca.config().upstream_ca.is_some() {
            out.push(authority("upstream", "active", signing.parent.cert()));
        }
        for row in self.ca.store().authorities(None).map_err(CaError::from)? {
            out.push(pb::Authority {
                id: row.id,
                kind: row.kind,
                state: row.state,
                subject: subject_of(&row.cert_der),
                certificate: row.cert_der,
                not_before: row.not_before,
                not_after: row.not_after,
            });
        }
        Ok(Response::new(pb::ListAuthoritiesResponse {
            authorities: out,
        }))
    }

    async fn prepare_authority(
        &self,
        req: Request<pb::PrepareAuthorityRequest>,
    ) -> Result<Response<pb::PrepareAuthorityResponse>, Status> {
        let kind = req.into_inner().kind;
        let ca = self.ca.clone();
        let bundle_sequence = tokio::task::spawn_blocking(move || ca.prepare_authority(&kind))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(pb::PrepareAuthorityResponse {
            bundle_sequence,
        }))
    }

    async fn list_agents(
        &self,
        _req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let agents = self
            .ca
            .store()
            .nodes()
            .map_err(CaError::from)?
            .into_iter()
            .map(|n| pb::Agent {
                spiffe_id: n.spiffe_id,
                name: n.name,
                attested_at: n.attested_at,
                svid_serial: n.last_serial,
                svid_expires_at: n.svid_expires_at,
                bundle_sequence: n.bundle_sequence,
                last_seen: n.last_seen,
                svid_count: n.svid_count,
            })
            .collect();
        Ok(Response::new(pb::ListAgentsResponse {
            agents,
            bundle_sequence: self.ca.bundle().sequence(),
        }))
    }

    async fn mint_x509_svid(
        &self,
        req: Request<pb::MintX509SvidRequest>,
    ) -> Result<Response<pb::MintX509SvidResponse>, Status> {
        let caller = Self::caller(&req);
        let body = req.into_inner();
        if body.ttl_seconds < 0 {
            return Err(CaError::InvalidArgument("ttl_seconds must not be negative".into()).into());
        }
        let ca = self.ca.clone();
        let (id, cert) = tokio::task::spawn_blocking(move || {
            ca.mint(
                &body.spiffe_id,
                &body.csr,
                secs(body.ttl_seconds),
                &body.dns_names,
                &caller,
            )
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
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

fn subject_of(der: &[u8]) -> String {
    X509Certificate::from_der(der)
        .map(|(_, c)| c.subject().to_string())
        .unwrap_or_default()
}

fn authority(kind: &str, state: &str, der: &[u8]) -> pb::Authority {
    let (nb, na) = X509Certificate::from_der(der)
        .map(|(_, c)| {
            (
                c.validity().not_before.timestamp(),
                c.validity().not_after.timestamp(),
            )
        })
        .unwrap_or((0, 0));
    pb::Authority {
        id: crate::ca::authorities::cert_id(der),
        kind: kind.into(),
        state: state.into(),
        certificate: der.to_vec(),
        not_before: nb,
        not_after: na,
        subject: subject_of(der),
    }
}
