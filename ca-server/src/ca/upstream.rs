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
#[cfg(test)]
use crate::store::AuthorityKind;

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

/// Where the root set of upstream-CA mode without a bundle file is kept
/// across restarts: every upstream root seen, so that SVIDs under an
/// earlier upstream CA keep validating until its root expires.
const ROOTS_META: &str = "upstream_roots";

fn roots_pem(roots: &[CertificateDer<'static>]) -> String {
    roots
        .iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
        .collect()
}

impl Upstream {
    /// Without an upstream bundle file: adds the unexpired roots of earlier
    /// upstream CAs kept in the store, and stores the set.
    ///
    /// # Errors
    /// The store.
    pub fn merge_stored_roots(
        &mut self,
        config: &Config,
        store: &crate::store::Store,
        now: std::time::SystemTime,
    ) -> Result<(), crate::store::StoreError> {
        if config.upstream_bundle.is_some() {
            return Ok(());
        }
        if let Some(text) = store.meta(ROOTS_META)? {
            let now = super::time::unix(now);
            for root in pem::parse_many(text.as_bytes())
                .unwrap_or_default()
                .into_iter()
                .map(|p| CertificateDer::from(p.into_contents()))
            {
                let live = x509_parser::parse_x509_certificate(&root)
                    .is_ok_and(|(_, c)| c.validity().not_after.timestamp() > now);
                if live && !self.roots.contains(&root) {
                    self.roots.insert(0, root);
                }
            }
        }
        store.set_meta(ROOTS_META, &roots_pem(&self.roots))
    }

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
            pending: None,
        })
    }
}

impl Ca {
    /// Re-reads the upstream files when their content changed. A new
    /// upstream CA becomes pending (see [`Ca::switch_upstream`]); without an
    /// upstream bundle file its root joins the root set, next to the old
    /// ones, so that it is published before anything chains to it. Callers
    /// hold the writer lock.
    pub(super) fn follow_upstream(&self, now: i64) {
        let (Some(lock), Some((cert, key))) = (&self.upstream, &self.config.upstream_ca) else {
            return;
        };
        let files = read(cert).and_then(|c| Ok(digest(&[&c, &read(key)?])));
        let (current, pending) = {
            let up = lock
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (
                up.files_hash.clone(),
                up.pending.as_ref().map(|p| p.files_hash.clone()),
            )
        };
        match files {
            Ok(hash) if hash != current && Some(&hash) != pending.as_ref() => {
                match self.keys.load_upstream(cert, key) {
                    Ok((parent, anchor)) => {
                        tracing::info!(
                            "the upstream CA files changed; the new upstream CA takes over once its root is in the bundle agents serve"
                        );
                        let mut up = lock
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        if self.config.upstream_bundle.is_none() && !up.roots.contains(&anchor) {
                            up.roots.push(anchor.clone());
                            if let Err(e) = self.store.set_meta(ROOTS_META, &roots_pem(&up.roots)) {
                                tracing::error!(error = %e, "cannot store the upstream root set");
                            }
                        }
                        up.pending = Some(super::PendingUpstream {
                            parent: Arc::new(parent),
                            anchor,
                            files_hash: hash,
                            since: now,
                        });
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the upstream CA files changed but do not load; keeping the previous upstream CA")
                    }
                }
            }
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
                        // Remembered either way: a bad file is reported once.
                        up.bundle_hash = hash;
                        match parse_roots(path, &text) {
                            Ok(roots) => {
                                tracing::info!(
                                    roots = roots.len(),
                                    "the upstream bundle changed; publishing its roots"
                                );
                                up.roots = roots;
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
    }

    /// Lets a pending upstream CA sign our intermediates once its root is
    /// in the published bundle and every connected agent serves that bundle
    /// (or the ack timeout has passed): a new intermediate under it is made
    /// and activated, and the previous one retired. Returns whether it
    /// switched. Callers hold the writer lock.
    ///
    /// # Errors
    /// Key generation, the store, the audit log.
    pub(super) fn switch_upstream(
        &self,
        now: std::time::SystemTime,
    ) -> Result<bool, super::CaError> {
        use super::authorities::{SELF, cert_id};
        use crate::store::{AuthorityKind, AuthorityRow, AuthorityState};
        let Some(lock) = &self.upstream else {
            return Ok(false);
        };
        let Some((parent, anchor, since)) = lock
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pending
            .as_ref()
            .map(|p| (p.parent.clone(), p.anchor.clone(), p.since))
        else {
            return Ok(false);
        };
        let t = super::time::unix(now);
        let bundle = self.node_bundle();
        if !bundle.bundle.x509_authorities().contains(&anchor) {
            tracing::warn!(
                "the new upstream CA chains to a root that is not in the bundle (add it to upstream_bundle); the previous upstream CA keeps signing"
            );
            return Ok(false);
        }
        let sequence = bundle.bundle.sequence();
        let lagging: Vec<(String, u64)> = self
            .agent_lag()?
            .into_iter()
            .filter(|(_, s)| *s < sequence)
            .collect();
        if !lagging.is_empty() {
            let timeout = i64::try_from(self.config.rotation.activation_ack_timeout.as_secs())
                .unwrap_or(i64::MAX);
            if t < since.saturating_add(timeout) {
                return Ok(false);
            }
            tracing::warn!(
                ?lagging,
                "switching to the new upstream CA after the ack timeout; these agents had not acknowledged the bundle"
            );
        }
        let parent_id = cert_id(parent.cert());
        let fresh = self.keys.create_intermediate(
            &parent,
            &parent_id,
            std::slice::from_ref(&anchor),
            now,
            AuthorityState::Prepared,
            SELF,
        )?;
        let rows = self.keys.own()?;
        let mut changes: Vec<(AuthorityRow, &'static str)> = rows
            .iter()
            .filter(|r| r.kind == AuthorityKind::Intermediate && r.state == AuthorityState::Active)
            .map(|r| {
                (
                    AuthorityRow {
                        state: AuthorityState::Retired,
                        retired_at: Some(t),
                        ..r.clone()
                    },
                    "authority_retire",
                )
            })
            .collect();
        // Published: its root is in the bundle every agent serves.
        changes.push((
            AuthorityRow {
                state: AuthorityState::Active,
                activated_at: Some(t),
                published_sequence: Some(sequence),
                published_at: Some(t),
                ..fresh
            },
            "authority_activate",
        ));
        self.commit(&changes, SELF)?;
        {
            let mut up = lock
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(p) = up.pending.take() {
                up.parent = p.parent;
                up.anchor = p.anchor;
                up.files_hash = p.files_hash;
            }
        }
        self.reload_signing()?;
        tracing::info!(parent = %parent_id, "the new upstream CA signs our intermediates now");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use signet_identity::x509::{SigningCaParams, new_root, verify_x509_svid};
    use signet_identity::{KeyType, PrivateKey, SpiffeId, TrustDomain};

    use super::*;
    use crate::ca::authorities::cert_id;
    use crate::ca::testing::{self, TestClock};
    use crate::config::Settings;

    /// A self-signed upstream CA written to CERT and KEY files; returns its certificate.
    fn upstream(dir: &Path, name: &str, clock: &TestClock) -> CertificateDer<'static> {
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let params = SigningCaParams {
            trust_domain: TrustDomain::new("test.org").unwrap(),
            ttl: Duration::from_secs(365 * 86_400),
            backdate: Duration::from_secs(30),
        };
        let cert = new_root(&params, &key, clock.now()).unwrap();
        std::fs::write(
            dir.join(format!("{name}.pem")),
            pem::encode(&pem::Pem::new("CERTIFICATE", cert.to_vec())),
        )
        .unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.to_pem().as_bytes()).unwrap();
        cert
    }

    fn install(dir: &Path, name: &str) {
        std::fs::copy(dir.join(format!("{name}.pem")), dir.join("up.pem")).unwrap();
        std::fs::copy(dir.join(format!("{name}.key")), dir.join("up.key")).unwrap();
    }

    fn settings(files: &Path, bundle: bool) -> Settings {
        Settings {
            upstream_ca: Some(format!(
                "{},{}",
                files.join("up.pem").display(),
                files.join("up.key").display()
            )),
            upstream_bundle: bundle.then(|| files.join("roots.pem")),
            ..Settings::default()
        }
    }

    fn sign(ca: &Ca) -> Vec<CertificateDer<'static>> {
        let csr = signet_identity::x509::VerifiedCsr::from_der(&testing::csr()).unwrap();
        let id = SpiffeId::parse("spiffe://test.org/w").unwrap();
        ca.sign(&csr, &id, &[], Duration::from_secs(600))
            .unwrap()
            .chain
    }

    #[test]
    fn a_new_upstream_ca_is_published_before_it_signs_and_old_svids_stay_valid() {
        let files = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let u1 = upstream(files.path(), "u1", &clock);
        let u2 = upstream(files.path(), "u2", &clock);
        install(files.path(), "u1");
        let ca = Arc::new(testing::open(
            data.path(),
            &clock,
            settings(files.path(), false),
        ));
        assert_eq!(ca.bundle().x509_authorities(), std::slice::from_ref(&u1));
        let before = sign(&ca);
        let node = testing::attest(&ca, "n1");
        let _stream = ca.agent_connected(&node);
        ca.report_status(&node, ca.bundle().sequence(), 0, &[])
            .unwrap();

        install(files.path(), "u2");
        clock.advance(Duration::from_secs(10));
        ca.rotate_if_due().unwrap();
        // Published next to the old root; the old upstream still signs
        // until the agent serves that bundle.
        assert_eq!(ca.bundle().x509_authorities(), [u1.clone(), u2.clone()]);
        let parent_before = ca.signing().parent.clone();
        assert_eq!(parent_before.cert(), &u1);
        ca.report_status(&node, ca.bundle().sequence(), 0, &[])
            .unwrap();
        clock.advance(Duration::from_secs(10));
        ca.rotate_if_due().unwrap();
        assert_eq!(ca.signing().parent.cert(), &u2);
        let after = sign(&ca);
        let now = clock.now();
        verify_x509_svid(&after, &ca.bundle(), now).unwrap();
        verify_x509_svid(&before, &ca.bundle(), now).unwrap();
        let active = ca
            .store()
            .authorities(Some(AuthorityKind::Intermediate))
            .unwrap()
            .into_iter()
            .find(|r| r.state == crate::store::AuthorityState::Active)
            .unwrap();
        assert_eq!(active.parent_id, Some(cert_id(&u2)));
        // A restart keeps the new upstream CA.
        drop(_stream);
        drop(ca);
        let ca = testing::open(data.path(), &clock, settings(files.path(), false));
        assert_eq!(ca.signing().parent.cert(), &u2);
        assert_eq!(ca.bundle().x509_authorities(), [u1, u2]);
        verify_x509_svid(&before, &ca.bundle(), clock.now()).unwrap();
    }

    #[test]
    fn the_root_set_follows_the_upstream_bundle_file_and_a_bad_file_keeps_the_last_good_one() {
        let files = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let u1 = upstream(files.path(), "u1", &clock);
        let other = upstream(files.path(), "other", &clock);
        install(files.path(), "u1");
        let roots = files.path().join("roots.pem");
        let pem_of = |certs: &[&CertificateDer<'static>]| -> String {
            certs
                .iter()
                .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
                .collect()
        };
        std::fs::write(&roots, pem_of(&[&u1])).unwrap();
        let ca = testing::open(data.path(), &clock, settings(files.path(), true));
        assert_eq!(ca.bundle().x509_authorities(), std::slice::from_ref(&u1));
        let seq = ca.bundle().sequence();

        std::fs::write(&roots, pem_of(&[&u1, &other])).unwrap();
        ca.rotate_if_due().unwrap();
        assert_eq!(ca.bundle().x509_authorities(), [u1.clone(), other.clone()]);
        assert!(ca.bundle().sequence() > seq);
        let seq = ca.bundle().sequence();

        for bad in ["not pem at all", ""] {
            std::fs::write(&roots, bad).unwrap();
            ca.rotate_if_due().unwrap();
            assert_eq!(ca.bundle().x509_authorities(), [u1.clone(), other.clone()]);
            assert_eq!(ca.bundle().sequence(), seq);
        }
        std::fs::remove_file(&roots).unwrap();
        ca.rotate_if_due().unwrap();
        assert_eq!(ca.bundle().sequence(), seq);
        // Signing is unaffected throughout.
        verify_x509_svid(&sign(&ca), &ca.bundle(), clock.now()).unwrap();
    }

    #[test]
    fn revoking_an_intermediate_needs_the_upstream_ca_to_be_the_anchor() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        // An upstream issuing CA under a company root: Signet cannot sign
        // a CRL for the root, so it refuses to revoke an intermediate.
        let files = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let clock = TestClock::at(std::time::SystemTime::now());
        let ca_params = |name: &str, depth: u8| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(depth));
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            p.use_authority_key_identifier_extension = true;
            p
        };
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca_params("company root", 2);
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, root_key);
        let issuing = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let issuing_cert = ca_params("issuing", 1)
            .signed_by(issuing.key_pair(), &root_issuer)
            .unwrap();
        std::fs::write(
            files.path().join("up.pem"),
            [issuing_cert.pem(), root.pem()].concat(),
        )
        .unwrap();
        std::fs::write(files.path().join("up.key"), issuing.to_pem().as_bytes()).unwrap();
        let ca = testing::open(data.path(), &clock, settings(files.path(), false));
        assert_eq!(ca.bundle().x509_authorities(), [root.der().clone()]);
        let inter = ca.signing().signer_id.clone();
        ca.taint_authority(&inter, "admin").unwrap();
        let e = ca.revoke_authority(&inter, true, "admin").unwrap_err();
        assert!(
            matches!(e, crate::ca::CaError::FailedPrecondition(_))
                && e.to_string().contains("upstream"),
            "{e}"
        );
        assert!(ca.node_bundle().crls.is_empty());

        // When the upstream CA is itself the anchor, its CRL is published.
        let data = tempfile::tempdir().unwrap();
        upstream(files.path(), "u1", &clock);
        install(files.path(), "u1");
        let ca = testing::open(data.path(), &clock, settings(files.path(), false));
        let inter = ca.signing().signer_id.clone();
        ca.taint_authority(&inter, "admin").unwrap();
        ca.revoke_authority(&inter, true, "admin").unwrap();
        assert_eq!(ca.node_bundle().crls.len(), 2);
    }
}
