//! `io.linkerd.proxy.identity.Identity/Certify`, as linkerd-identity
//! answers it: the identity name `<sa>.<ns>.serviceaccount.identity.
//! <controlNS>.<trustDomain>` must be the token's and the CSR's one DNS
//! name; the leaf carries it as its DNS SAN and subject CN (plus the SPIFFE
//! ID as URI SAN when `linkerd_spiffe_uri` is set); `intermediate_certificates`
//! is the issued chain after the leaf, up to and excluding the trust anchor
//! (linkerd-identity sends its issuer's chain); `valid_until` is the leaf's
//! notAfter.

use signet_identity::x509::VerifiedCsr;
use signet_proto::linkerd::identity::identity_server::Identity;
use signet_proto::linkerd::identity::{CertifyRequest, CertifyResponse};
use tonic::{Request, Response, Status};

use super::review::ServiceAccount;
use super::{Caller, MeshAuth};
use crate::ca::CaError;

/// The audit log's name for this API.
pub const ACTION: &str = "mesh_linkerd_certify";

/// The Linkerd identity service.
#[derive(Debug, Clone)]
pub struct LinkerdApi {
    auth: MeshAuth,
}

impl LinkerdApi {
    #[must_use]
    pub fn new(auth: MeshAuth) -> Self {
        Self { auth }
    }

    /// The Linkerd identity name of `account`.
    #[must_use]
    pub fn identity_name(&self, account: &ServiceAccount) -> String {
        format!(
            "{}.{}.serviceaccount.identity.{}.{}",
            account.name,
            account.namespace,
            self.auth.config.linkerd_control_namespace,
            self.auth.config.linkerd_trust_domain
        )
    }

    async fn certify(&self, req: Request<CertifyRequest>) -> Result<CertifyResponse, Status> {
        let remote = req
            .remote_addr()
            .or_else(|| {
                req.extensions()
                    .get::<crate::api::tls::PeerInfo>()
                    .map(|p| p.remote)
            })
            .map_or_else(|| "mesh:unknown".to_owned(), |a| format!("mesh:{}", a.ip()));
        let body = req.into_inner();
        let caller = match self.caller(&body).await {
            Ok(c) => c,
            Err(e) => return Err(self.auth.refused(&remote, ACTION, "", e).into()),
        };
        let name = caller.audit_name();
        let (id, dns, csr) = match self.check(&caller, &body) {
            Ok(t) => t,
            Err(e) => {
                return Err(self.auth.refused(&name, ACTION, &body.identity, e).into());
            }
        };
        let ca = self.auth.ca.clone();
        let leaf = crate::ca::MeshLeaf {
            dns_names: vec![dns],
            spiffe_uri: self.auth.config.linkerd_spiffe_uri,
            ttl: None,
        };
        let cert = crate::api::status::blocking(move || {
            ca.issue_for_mesh(&name, ACTION, &id, &leaf, &csr)
        })
        .await?;
        let mut chain = cert.chain.into_iter();
        let leaf = chain.next().map(|c| c.to_vec()).unwrap_or_default();
        tracing::info!(identity = %body.identity, "issued a certificate to a Linkerd proxy");
        Ok(CertifyResponse {
            leaf_certificate: leaf,
            intermediate_certificates: chain.map(|c| c.to_vec()).collect(),
            valid_until: Some(prost_types::Timestamp::from(cert.not_after)),
        })
    }

    async fn caller(&self, body: &CertifyRequest) -> Result<Caller, CaError> {
        let token = std::str::from_utf8(&body.token)
            .map_err(|_| CaError::Unauthenticated("token is not UTF-8".into()))?
            .trim();
        self.auth
            .authenticate(token, &self.auth.config.linkerd_audience)
            .await
    }

    fn check(
        &self,
        caller: &Caller,
        body: &CertifyRequest,
    ) -> Result<(signet_identity::SpiffeId, String, VerifiedCsr), CaError> {
        let expected = self.identity_name(&caller.account);
        if body.identity != expected {
            return Err(CaError::PermissionDenied(format!(
                "identity {:?} is not the token's ({expected})",
                body.identity
            )));
        }
        let csr = VerifiedCsr::from_der(&body.certificate_signing_request)
            .map_err(|e| CaError::InvalidArgument(format!("csr: {e}")))?;
        let names = super::csr::requested_names(&body.certificate_signing_request)
            .map_err(|e| CaError::InvalidArgument(format!("csr: {e}")))?;
        // As linkerd-identity: exactly one DNS name, the identity; nothing
        // else; a subject CN, if any, equal to it.
        if names.dns != [expected.as_str()]
            || !names.uris.is_empty()
            || names.other > 0
            || names.common_name.as_ref().is_some_and(|cn| *cn != expected)
        {
            return Err(CaError::PermissionDenied(format!(
                "the CSR must name {expected} as its one DNS SAN (and CN, if any); \
                 it asks for DNS {:?}, URI {:?}, CN {:?}",
                names.dns, names.uris, names.common_name
            )));
        }
        let id = self.auth.workload_id(&caller.account)?;
        Ok((id, expected, csr))
    }
}

#[tonic::async_trait]
impl Identity for LinkerdApi {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        LinkerdApi::certify(self, request).await.map(Response::new)
    }
}
