//! Upstream-CA mode: our intermediates are signed by a configured CA, and
//! the bundle's roots are the top of its chain or, when configured, the
//! roots of an `upstream_bundle` file. Both files are re-read when their
//! content changes; a file that does not load is logged and the last good
//! state kept.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;

use super::authorities::{KeyStore, KeyStoreError};
use super::{Ca, Upstream};
use crate::config::Config;

fn digest(parts: &[&[u8]]) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p);
    }
    ctx.finish().as_ref().to_vec()
}

fn read(path: &Path) -> Result<Vec<u8>, KeyStoreError> {
    std::fs::read(path).map_err(|e| KeyStoreError::Upstream {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The roots of a PEM bundle file.
fn parse_roots(
    path: &Path,
    pem_text: &[u8],
) -> Result<Vec<CertificateDer<'static>>, KeyStoreError> {
    let bad = |reason: String| KeyStoreError::Upstream {
        path: path.to_path_buf(),
        reason,
    };
    let roots: Vec<CertificateDer<'static>> = pem::parse_many(pem_text)
        .map_err(|e| bad(e.to_string()))?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect();
    if roots.is_empty() {
        return Err(bad("holds no CERTIFICATE".into()));
    }
    for r in &roots {
        x509_parser::parse_x509_certificate(r)
            .map_err(|e| bad(format!("a root does not parse: {e}")))?;
    }
    Ok(roots)
}

impl Upstream {
    /// Reads the upstream CA and, when configured, the upstream bundle.
    ///
    /// # Errors
    /// Unreadable or unusable files.
    pub fn load(
        config: &Config,
        keys: &KeyStore,
        cert: &Path,
        key: &Path,
    ) -> Result<Self, KeyStoreError> {
        let files_hash = digest(&[&read(cert)?, &read(key)?]);
        let (parent, anchor) = keys.load_upstream(cert, key)?;
        let (roots, bundle_hash) = match &config.upstream_bundle {
            Some(path) => {
                let text = read(path)?;
                (parse_roots(path, &text)?, digest(&[&text]))
            }
            None => (vec![anchor.clone()], Vec::new()),
        };
        Ok(Self {
            parent: Arc::new(parent),
            anchor,
            roots,
            files_hash,
            bundle_hash,
        })
    }
}

impl Ca {
    /// Re-reads the upstream files when their content changed. Returns
    /// whether the upstream CA (not only the root set) changed, so that the
    /// caller makes a new intermediate under it. Callers hold the writer lock.
    pub(super) fn follow_upstream(&self) -> bool {
        let (Some(lock), Some((cert, key))) = (&self.upstream, &self.config.upstream_ca) else {
            return false;
        };
        let mut ca_changed = false;
        let files = read(cert).and_then(|c| Ok(digest(&[&c, &read(key)?])));
        let current = lock
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .files_hash
            .clone();
        match files {
            Ok(hash) if hash != current => match self.keys.load_upstream(cert, key) {
                Ok((parent, anchor)) => {
                    let mut up = lock
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    tracing::info!(
                        "the upstream CA files changed; new intermediates come from the new upstream CA"
                    );
                    up.parent = Arc::new(parent);
                    if self.config.upstream_bundle.is_none() {
                        up.roots = vec![anchor.clone()];
                    }
                    up.anchor = anchor;
                    up.files_hash = hash;
                    ca_changed = true;
                }
                Err(e) => {
                    tracing::error!(error = %e, "the upstream CA files changed but do not load; keeping the previous upstream CA")
                }
            },
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot read the upstream CA files; keeping the previous upstream CA")
            }
        }
        if let Some(path) = &self.config.upstream_bundle {
            match read(path) {
                Ok(text) => {
                    let hash = digest(&[&text]);
                    let mut up = lock
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if hash != up.bundle_hash {
                        match parse_roots(path, &text) {
                            Ok(roots) => {
                                tracing::info!(
                                    roots = roots.len(),
                                    "the upstream bundle changed; publishing its roots"
                                );
                                up.roots = roots;
                                up.bundle_hash = hash;
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "the upstream bundle does not load; keeping the previous root set")
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the upstream bundle; keeping the previous root set")
                }
            }
        }
        ca_changed
    }
}
