//! The trust bundle: the anchors and every unexpired JWT key, with a
//! sequence number that is bumped whenever that set changes; published on a
//! `watch` channel and in DATA_DIR/bundle.pem.

use std::sync::Arc;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use signet_identity::TrustBundle;

use super::authorities::{KeyStore, cert_id};
use super::{Ca, CaError};
use crate::config::Config;
use crate::store::Store;

/// Builds the bundle from `anchors` and the stored JWT keys.
pub(super) fn build(
    config: &Config,
    store: &Store,
    keys: &KeyStore,
    anchors: &[CertificateDer<'static>],
    now: SystemTime,
) -> Result<TrustBundle, CaError> {
    let jwt = keys.jwt_authorities(now)?;
    let mut ids: Vec<String> = anchors.iter().map(|a| cert_id(a)).collect();
    ids.extend(jwt.iter().map(|j| format!("jwt:{}", j.key_id())));
    let mut bundle =
        TrustBundle::new(config.trust_domain.clone()).with_x509_authorities(anchors.to_vec())?;
    for j in jwt {
        bundle.add_jwt_authority(j)?;
    }
    bundle.set_sequence(sequence(store, ids)?);
    Ok(bundle)
}

/// The sequence for the authority set `ids`: the stored one when the set is
/// unchanged, the next one otherwise.
fn sequence(store: &Store, mut ids: Vec<String>) -> Result<u64, CaError> {
    ids.sort();
    let fingerprint = ids.join(",");
    let seq: u64 = store
        .meta("bundle_sequence")?
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if store.meta("bundle_anchors")?.as_deref() == Some(fingerprint.as_str()) {
        return Ok(seq);
    }
    let next = seq + 1;
    store.set_meta("bundle_anchors", &fingerprint)?;
    store.set_meta("bundle_sequence", &next.to_string())?;
    Ok(next)
}

/// Writes DATA_DIR/bundle.pem for operators and for bootstrapping agents.
pub(super) fn write_file(config: &Config, bundle: &TrustBundle) -> Result<(), CaError> {
    signet_identity::fsutil::write_atomic(
        &config.data_dir.join("bundle.pem"),
        bundle.to_pem().as_bytes(),
        0o644,
    )?;
    Ok(())
}

impl Ca {
    /// Rebuilds the bundle from the store and publishes it when it changed.
    ///
    /// # Errors
    /// Store and file errors.
    pub fn republish_bundle(&self) -> Result<(), CaError> {
        let anchors = self.signing().anchors.clone();
        let bundle = build(&self.config, &self.store, &self.keys, &anchors, self.now())?;
        if *self.bundle.borrow().as_ref() != bundle {
            write_file(&self.config, &bundle)?;
            tracing::info!(
                sequence = bundle.sequence(),
                "publishing a new trust bundle"
            );
            self.bundle.send_replace(Arc::new(bundle));
        }
        Ok(())
    }
}
