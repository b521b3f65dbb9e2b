//! `istio.v1.auth.IstioCertificateService/CreateCertificate`, as istiod
//! answers it: identity from the bearer token (audience `istio-ca`), the
//! chain leaf first through the root, one PEM string each.

use std::time::Duration;

use prost_types::value::Kind;
use signet_identity::SpiffeId;
use signet_identity::x509::VerifiedCsr;
use signet_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateService;
use signet_proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use tonic::{Request, Response, Status};

use super::review::ServiceAccount;
use super::{Caller, MeshAuth};
use crate::ca::CaError;

/// The audit log's name for this API.
pub const ACTION: &str = "mesh_istio_create_certificate";
/// The metadata key through which a node proxy asks for another identity.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// The Istio CA service.
#[derive(Debug, Clone)]
pub struct IstioApi {
    auth: MeshAuth,
}

impl IstioApi {
    #[must_use]
    pub fn new(auth: MeshAuth) -> Self {
        Self { auth }
    }

    async fn create(
        &self,
        req: Request<IstioCertificateRequest>,
    ) -> Result<IstioCertificateResponse, Status> {
        let remote = req
            .remote_addr()
            .or_else(|| {
                req.extensions()
                    .get::<crate::api::tls::PeerInfo>()
                    .map(|p| p.remote)
            })
            .map_or_else(|| "mesh:unknown".to_owned(), |a| format!("mesh:{}", a.ip()));
        // Who the caller is: until the token is reviewed, its address.
        let caller = match self.caller(&req).await {
            Ok(c) => c,
            Err(e) => return Err(self.auth.refused(&remote, ACTION, "", e).into()),
        };
        let name = caller.audit_name();
        let body = req.into_inner();
        let (id, csr) = match self.target(&caller, &body).await {
            Ok(t) => t,
            Err((id, e)) => return Err(self.auth.refused(&name, ACTION, &id, e).into()),
        };
        let ttl = u64::try_from(body.validity_duration)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        let ca = self.auth.ca.clone();
        let id2 = id.clone();
        let leaf = crate::ca::MeshLeaf {
            dns_names: Vec::new(),
            spiffe_uri: true,
            ttl,
        };
        let cert = crate::api::status::blocking(move || {
            ca.issue_for_mesh(&name, ACTION, &id2, &leaf, &csr)
        })
        .await?;
        let mut chain = cert.chain.clone();
        match crate::api::tls::root_of(&self.auth.ca, &chain) {
            Ok(Some(root)) => chain.push(root),
            // istio-agent and ztunnel refuse a chain without its root.
            Ok(None) => return Err(Status::internal("the issued chain reaches no current root")),
            Err(e) => return Err(Status::internal(format!("root: {e}"))),
        }
        let cert_chain = chain.iter().map(|c| pem_lf(c)).collect();
        tracing::info!(%id, "issued a certificate to an Istio proxy");
        Ok(IstioCertificateResponse { cert_chain })
    }

    /// Checks `clusterid` and the bearer token.
    async fn caller(&self, req: &Request<IstioCertificateRequest>) -> Result<Caller, CaError> {
        let md = req.metadata();
        if let Some(want) = &self.auth.config.cluster_id {
            let got = md.get("clusterid").and_then(|v| v.to_str().ok());
            if got != Some(want.as_str()) {
                return Err(CaError::Unauthenticated(format!(
                    "clusterid {:?} is not this cluster's",
                    got.unwrap_or("")
                )));
            }
        }
        let token = md
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| CaError::Unauthenticated("no bearer token".into()))?;
        self.auth
            .authenticate(token, &self.auth.config.istio_audience)
            .await
    }

    /// The identity to issue and the verified CSR; on refusal, the ID asked
    /// for (for the audit record) and why.
    async fn target(
        &self,
        caller: &Caller,
        body: &IstioCertificateRequest,
    ) -> Result<(SpiffeId, VerifiedCsr), (String, CaError)> {
        let own = self
            .auth
            .workload_id(&caller.account)
            .map_err(|e| (String::new(), e))?;
        let impersonated = match body
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
        {
            None => None,
            Some(v) => match &v.kind {
                Some(Kind::StringValue(s)) => Some(s.clone()),
                _ => {
                    return Err((
                        String::new(),
                        CaError::InvalidArgument(format!(
                            "metadata {IMPERSONATED_IDENTITY} must be a string"
                        )),
                    ));
                }
            },
        };
        let id = match impersonated {
            Some(asked) if asked != own.as_str() => self
                .impersonate(caller, &asked)
                .await
                .map_err(|e| (asked.clone(), e))?,
            _ => own,
        };
        let refuse = |e: CaError| (id.to_string(), e);
        let der = pem::parse(&body.csr)
            .map_err(|e| refuse(CaError::InvalidArgument(format!("csr is not PEM: {e}"))))?;
        let csr = VerifiedCsr::from_der(der.contents())
            .map_err(|e| refuse(CaError::InvalidArgument(format!("csr: {e}"))))?;
        let names = super::csr::requested_names(der.contents())
            .map_err(|e| refuse(CaError::InvalidArgument(format!("csr: {e}"))))?;
        // istio-agent and ztunnel ask for exactly the identity they are
        // entitled to; a CSR for anything else is someone trying.
        if names.uris.iter().any(|u| u != id.as_str()) || names.other > 0 || !names.dns.is_empty() {
            return Err(refuse(CaError::PermissionDenied(format!(
                "the CSR asks for names other than {id}: {:?} {:?}",
                names.uris, names.dns
            ))));
        }
        if names.uris.is_empty() {
            return Err(refuse(CaError::InvalidArgument(format!(
                "the CSR must carry the URI SAN {id}"
            ))));
        }
        Ok((id, csr))
    }

    /// A node proxy (ztunnel) asking for the identity of a service account
    /// with a pod on its node.
    async fn impersonate(&self, caller: &Caller, asked: &str) -> Result<SpiffeId, CaError> {
        if !self
            .auth
            .config
            .node_accounts
            .contains(&caller.account.key())
        {
            return Err(CaError::PermissionDenied(format!(
                "{} may not act for other identities",
                caller.account.key()
            )));
        }
        let target = parse_workload_id(asked, &self.auth.ca.config().trust_domain)?;
        let node = caller
            .review
            .extra_value(super::review::EXTRA_NODE_NAME)
            .ok_or_else(|| {
                CaError::PermissionDenied(
                    "the caller's token is not bound to a node; impersonation needs one".into(),
                )
            })?;
        let on_node = self
            .auth
            .pods
            .has_pod_on_node(&target.namespace, &target.name, node)
            .await
            .map_err(|e| CaError::Unavailable(e.to_string()))?;
        if !on_node {
            return Err(CaError::PermissionDenied(format!(
                "{}:{} has no pod on node {node}",
                target.namespace, target.name
            )));
        }
        self.auth.workload_id(&target)
    }
}

/// One certificate as PEM with "\n" line ends (the pem crate's default is
/// CRLF; istiod answers LF).
pub fn pem_lf(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// `spiffe://<td>/ns/<ns>/sa/<sa>` back to its service account.
fn parse_workload_id(
    s: &str,
    td: &signet_identity::TrustDomain,
) -> Result<ServiceAccount, CaError> {
    let bad = || CaError::InvalidArgument(format!("{s:?} is not spiffe://{td}/ns/NS/sa/SA"));
    let id = SpiffeId::parse(s).map_err(|_| bad())?;
    if !id.is_member_of(td) {
        return Err(bad());
    }
    let parts: Vec<&str> = id.path().trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["ns", ns, "sa", sa]
            if super::review::is_dns_label(ns) && super::review::is_dns_subdomain(sa) =>
        {
            Ok(ServiceAccount {
                namespace: (*ns).to_owned(),
                name: (*sa).to_owned(),
            })
        }
        _ => Err(bad()),
    }
}

#[tonic::async_trait]
impl IstioCertificateService for IstioApi {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        self.create(request).await.map(Response::new)
    }
}
