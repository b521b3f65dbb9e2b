//! CRLs for revoked intermediates. Envoy (BoringSSL with
//! X509_V_FLAG_CRL_CHECK_ALL) checks a CRL for every certificate of a chain
//! once any CRL is configured, so while an intermediate is revoked the node
//! bundle carries one CRL per published root (listing its revoked
//! intermediates, possibly none) and one empty CRL per unexpired, unrevoked
//! intermediate. nextUpdate is the issuer's notAfter: these CRLs only change
//! when the bundle does, and agents get every new one at once.

use std::time::SystemTime;

use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, RevocationReason, RevokedCertParams,
    SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::authorities::cert_id;
use super::bundle::Content;
use super::time::{from_unix, unix};
use super::{Ca, CaError};
use crate::store::AuthorityRow;

/// Signs one CRL with the CA certificate `issuer_der` and its key, listing
/// `revoked` (intermediate certificates).
fn sign_crl(
    issuer_der: &[u8],
    key: &signet_identity::PrivateKey,
    revoked: &[&AuthorityRow],
    number: u64,
    now: SystemTime,
) -> Result<Vec<u8>, CaError> {
    let internal = |what: &str, e: String| CaError::Internal(format!("CRL: {what}: {e}"));
    let issuer_cert = CertificateDer::from(issuer_der.to_vec());
    let (_, parsed) =
        X509Certificate::from_der(issuer_der).map_err(|e| internal("issuer", e.to_string()))?;
    let next_update = from_unix(parsed.validity().not_after.timestamp());
    // The CRL's authority key identifier must equal the issuer's subject
    // key identifier, or validators do not match the CRL to the issuer.
    let ski = parsed
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .ok_or_else(|| internal("issuer", "has no subject key identifier".into()))?;
    let issuer = Issuer::from_ca_cert_der(&issuer_cert, key.key_pair())
        .map_err(|e| internal("issuer", e.to_string()))?;
    let mut revoked_certs = Vec::with_capacity(revoked.len());
    for r in revoked {
        let (_, cert) =
            X509Certificate::from_der(&r.cert_der).map_err(|e| internal(&r.id, e.to_string()))?;
        revoked_certs.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(cert.raw_serial()),
            revocation_time: OffsetDateTime::from(from_unix(r.revoked_at.unwrap_or(unix(now)))),
            reason_code: Some(RevocationReason::KeyCompromise),
            invalidity_date: None,
        });
    }
    let params = CertificateRevocationListParams {
        this_update: OffsetDateTime::from(now),
        next_update: OffsetDateTime::from(next_update),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::PreSpecified(ski),
    };
    let crl = params
        .signed_by(&issuer)
        .map_err(|e| internal("signing", e.to_string()))?;
    Ok(crl.der().to_vec())
}

impl Ca {
    /// The CRLs of the node bundle (see the module docs); none while no
    /// published root has a revoked intermediate. While there is one, a
    /// new intermediate changes the CRL set, so it is published (and
    /// gated) with the sequence that carries its own CRL.
    pub(super) fn crls(
        &self,
        rows: &[AuthorityRow],
        content: &Content,
        number: u64,
        now: SystemTime,
    ) -> Result<Vec<Vec<u8>>, CaError> {
        if content.revoked.is_empty() {
            return Ok(Vec::new());
        }
        let mut crls = Vec::new();
        for root in &content.roots {
            let root_id = cert_id(root);
            let listed: Vec<&AuthorityRow> = content
                .revoked
                .iter()
                .filter(|r| r.parent_id.as_deref() == Some(root_id.as_str()))
                .collect();
            let crl = match &self.upstream {
                Some(up) => {
                    let up = up.read().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if up.parent.cert() != root {
                        return Err(CaError::FailedPrecondition(
                            "the upstream CA is not itself the trust anchor, so its CRL cannot be published".into(),
                        ));
                    }
                    sign_crl(root, up.parent.key(), &listed, number, now)?
                }
                None => {
                    let row = rows.iter().find(|r| r.id == root_id).ok_or_else(|| {
                        CaError::Internal(format!("published root {root_id} has no row"))
                    })?;
                    // Only the replica holding a key signs with it: the
                    // CRLs of other replicas' roots are theirs to sign.
                    if !self.keys.owns(row) {
                        continue;
                    }
                    sign_crl(root, &self.keys.load_key_of(row)?, &listed, number, now)?
                }
            };
            crls.push(crl);
        }
        for r in content
            .live_intermediates
            .iter()
            .filter(|r| self.keys.owns(r))
        {
            let key = self.keys.load_key_of(r)?;
            crls.push(sign_crl(&r.cert_der, &key, &[], number, now)?);
        }
        Ok(crls)
    }
}
