//! Acting as a node agent: join tokens, keys and CSRs, node attestation.

use anyhow::{Context as _, bail};
use rustls_pki_types::CertificateDer;
use signet_identity::{KeyType, PrivateKey};
use signet_proto::ca::v1 as pb;

use crate::ca::CaProcess;
use crate::pki::pem_chain;

/// A node SVID obtained through `AttestNode`, ready to be used as TLS client
/// identity. `Debug` does not print the key.
#[derive(Clone)]
pub struct NodeIdentity {
    /// `spiffe://<td>/signet/node/<name>`, as the CA reported it.
    pub spiffe_id: String,
    /// The chain (leaf, then intermediates), PEM.
    pub chain_pem: String,
    /// The node's private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The chain, DER.
    pub chain_der: Vec<CertificateDer<'static>>,
    /// The bundle that came with the SVID.
    pub bundle: pb::Bundle,
}

impl NodeIdentity {
    /// `(chain PEM, key PEM)`, as [`CaProcess::node_client`] takes it.
    #[must_use]
    pub fn tls_identity(&self) -> (&str, &str) {
        (&self.chain_pem, &self.key_pem)
    }
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("spiffe_id", &self.spiffe_id)
            .field("chain_len", &self.chain_der.len())
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A fresh P-256 key and a DER CSR for it.
///
/// # Errors
/// Key generation failures.
pub fn new_key_and_csr() -> anyhow::Result<(PrivateKey, Vec<u8>)> {
    let key = PrivateKey::generate(KeyType::EcdsaP256)?;
    let csr = key.csr_der()?;
    Ok((key, csr))
}

/// The DER chain of an SVID message.
#[must_use]
pub fn chain_of(svid: &pb::X509Svid) -> Vec<CertificateDer<'static>> {
    svid.cert_chain
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect()
}

/// Creates a join token for `node_name` through the Admin API
/// (`ttl_seconds` 0 = the server's default).
///
/// # Errors
/// A failing admin call.
pub async fn create_token(
    ca: &CaProcess,
    node_name: &str,
    ttl_seconds: i64,
) -> anyhow::Result<String> {
    let response = ca
        .admin()
        .await?
        .create_join_token(pb::CreateJoinTokenRequest {
            node_name: node_name.to_owned(),
            ttl_seconds,
        })
        .await
        .context("CreateJoinToken")?;
    Ok(response.into_inner().token)
}

/// Attests a node with `token`: a new key, its CSR, `AttestNode` without a
/// client certificate.
///
/// # Errors
/// A refused or failed call, or a response without an SVID or bundle.
pub async fn attest_with_token(ca: &CaProcess, token: &str) -> anyhow::Result<NodeIdentity> {
    let (key, csr) = new_key_and_csr()?;
    let response = ca
        .node_client(None)
        .await?
        .attest_node(pb::AttestNodeRequest {
            join_token: token.to_owned(),
            csr,
            k8s_psat_token: Vec::new(),
        })
        .await
        .context("AttestNode")?
        .into_inner();
    let (Some(svid), Some(bundle)) = (response.svid, response.bundle) else {
        bail!("AttestNode answered without an SVID or a bundle");
    };
    let chain_der = chain_of(&svid);
    Ok(NodeIdentity {
        spiffe_id: svid.spiffe_id,
        chain_pem: pem_chain(&chain_der),
        key_pem: key.to_pem().to_string(),
        chain_der,
        bundle,
    })
}

/// Creates a join token for `name` through the Admin API and attests with it.
///
/// # Errors
/// As [`create_token`] and [`attest_with_token`].
pub async fn attest_node(ca: &CaProcess, name: &str) -> anyhow::Result<NodeIdentity> {
    let token = create_token(ca, name, 0).await?;
    attest_with_token(ca, &token).await
}
