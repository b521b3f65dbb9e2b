//! The trust domain's key store: the root(s) that form the bundle, the one
//! active intermediate that signs X.509-SVIDs, and the JWT-SVID keys.
//! Authorities are rows in the store with their key in a 0600 file in the
//! data directory; the model holds many roots per trust domain so that
//! rotation can add one without a format change. Every new authority is
//! recorded in the audit log in the transaction that stores it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use signet_identity::jwt::JwtError;
use signet_identity::x509::{
    IssueError, SigningAuthority, SigningCaParams, new_intermediate, new_root,
};
use signet_identity::{
    BundleError, JwtAuthority, KeyError, KeyType, PrivateKey, SpiffeId, SpiffeIdError, TrustBundle,
    fsutil,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::time::{from_unix, unix};
use crate::config::Config;
use crate::store::{AuditRecord, AuthorityKind, AuthorityRow, AuthorityState, Store, StoreError};

/// Why an authority could not be loaded or created.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A key file cannot be read or written.
    #[error("key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A stored or configured key does not load.
    #[error("key {path}: {source}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: KeyError,
    },
    /// Generating a key failed.
    #[error("generating a key: {0}")]
    Generate(KeyError),
    /// Building or loading a CA certificate failed.
    #[error("authority {what}: {source}")]
    Authority {
        /// Which authority.
        what: String,
        /// What failed.
        source: IssueError,
    },
    /// A stored certificate does not parse.
    #[error("stored certificate {id} does not parse: {reason}")]
    Certificate {
        /// The authority id.
        id: String,
        /// The parser's message.
        reason: String,
    },
    /// The configured upstream CA is unusable.
    #[error("upstream CA {path}: {reason}")]
    Upstream {
        /// The certificate or key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The active root has expired.
    #[error("the active root {0} has expired; automatic root rotation is not implemented yet")]
    RootExpired(String),
    /// The parent expires too soon for a useful intermediate.
    #[error("the parent CA expires too soon to create an intermediate")]
    ParentExpiresSoon,
    /// A new key failed its self-test and was not trusted.
    #[error("the new {what} failed its self-test: {reason}")]
    SelfTest {
        /// Which authority.
        what: &'static str,
        /// What failed.
        reason: String,
    },
    /// Signing or checking a JWT failed.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// A bundle could not be built.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// An ID could not be built.
    #[error(transparent)]
    Id(#[from] SpiffeIdError),
}

/// The authorities the CA starts with.
pub struct Authorities {
    /// The CA that signs intermediates (generated root or upstream CA).
    pub parent: SigningAuthority,
    /// The trust anchors published in the bundle.
    pub anchors: Vec<CertificateDer<'static>>,
    /// The active intermediate.
    pub signer: SigningAuthority,
    /// The active JWT-SVID key.
    pub jwt: JwtKey,
}

/// The active JWT-SVID signing key. Its public half is published in the
/// bundle as a `jwt-svid` key under `key_id`.
pub struct JwtKey {
    pub key_id: String,
    pub key: PrivateKey,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl JwtKey {
    /// Whether half of the key's life has passed.
    pub fn needs_rotation(&self, now: SystemTime) -> bool {
        past_half_life(self.not_before, self.not_after, now)
    }
}

/// Whether half of the authority's lifetime has passed.
pub fn needs_rotation(signer: &SigningAuthority, now: SystemTime) -> bool {
    past_half_life(signer.not_before(), signer.not_after(), now)
}

fn past_half_life(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> bool {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    now >= not_before + life / 2
}

/// A short stable id for a certificate or key: the first 8 bytes of its
/// SHA-256, hex.
pub fn cert_id(der: &[u8]) -> String {
    signet_identity::x509::authority_id(der)
}

/// Who the audit log names for changes the CA makes on its own.
const SELF: &str = "ca";

/// The key store: owns the data directory's key files and the authority
/// rows of the store.
#[derive(Clone)]
pub struct KeyStore {
    config: Arc<Config>,
    store: Store,
}

impl KeyStore {
    /// A key store over the configured data directory and `store`.
    pub fn new(config: Arc<Config>, store: Store) -> Self {
        Self { config, store }
    }

    /// Loads the authorities from the store, creating what is missing: a
    /// root on first start (unless an upstream CA is configured) and an
    /// intermediate whenever there is none, the parent changed, or half its
    /// life has passed.
    ///
    /// # Errors
    /// Unreadable or inconsistent key material, store errors, a failed self-test.
    pub fn load_or_create(&self, now: SystemTime) -> Result<Authorities, KeyStoreError> {
        let (parent, anchors) = match &self.config.upstream_ca {
            Some((cert, key)) => self.load_upstream(cert, key)?,
            None => self.load_or_create_root(now)?,
        };
        let signer = match self.load_signer(&parent, now)? {
            Some(signer) => signer,
            None => self.create_signer(&parent, &anchors, now)?,
        };
        let jwt = self.load_or_create_jwt(now)?;
        Ok(Authorities {
            parent,
            anchors,
            signer,
            jwt,
        })
    }

    fn key_path(&self, id: &str) -> PathBuf {
        self.config
            .data_dir
            .join("keys")
            .join(format!("{id}.key.pem"))
    }

    fn save_key(&self, id: &str, key: &PrivateKey) -> Result<String, KeyStoreError> {
        let path = self.key_path(id);
        fsutil::write_atomic(&path, key.to_pem().as_bytes(), 0o600)
            .map_err(|source| KeyStoreError::KeyFile { path, source })?;
        Ok(format!("keys/{id}.key.pem"))
    }

    fn load_key(&self, rel: &str) -> Result<PrivateKey, KeyStoreError> {
        read_key(&self.config.data_dir.join(rel))
    }

    fn load_upstream(
        &self,
        cert: &Path,
        key: &Path,
    ) -> Result<(SigningAuthority, Vec<CertificateDer<'static>>), KeyStoreError> {
        let upstream = |reason: String| KeyStoreError::Upstream {
            path: cert.to_path_buf(),
            reason,
        };
        let pem_text = std::fs::read(cert).map_err(|e| upstream(e.to_string()))?;
        let certs: Vec<CertificateDer<'static>> = pem::parse_many(&pem_text)
            .map_err(|e| upstream(e.to_string()))?
            .into_iter()
            .filter(|p| p.tag() == "CERTIFICATE")
            .map(|p| CertificateDer::from(p.into_contents()))
            .collect();
        let Some((first, rest)) = certs.split_first() else {
            return Err(upstream("holds no CERTIFICATE".into()));
        };
        let key = read_key(key)?;
        // The top of the given chain is the trust anchor; the rest are served.
        let (anchor, between) = match rest.split_last() {
            Some((top, between)) => (top.clone(), between.to_vec()),
            None => (first.clone(), Vec::new()),
        };
        let parent = SigningAuthority::new(
            self.config.trust_domain.clone(),
            first.clone(),
            between,
            key,
        )
        .map_err(|source| KeyStoreError::Authority {
            what: "upstream CA".into(),
            source,
        })?;
        Ok((parent, vec![anchor]))
    }

    fn load_or_create_root(
        &self,
        now: SystemTime,
    ) -> Result<(SigningAuthority, Vec<CertificateDer<'static>>), KeyStoreError> {
        let roots = self.store.authorities(Some(AuthorityKind::Root))?;
        let anchors = self.root_anchors(now)?;
        if let Some(active) = roots.iter().find(|r| r.state == AuthorityState::Active) {
            let key = self.load_key(&active.key_file)?;
            let parent = SigningAuthority::new(
                self.config.trust_domain.clone(),
                CertificateDer::from(active.cert_der.clone()),
                Vec::new(),
                key,
            )
            .map_err(|source| KeyStoreError::Authority {
                what: format!("root {}", active.id),
                source,
            })?;
            if parent.not_after() <= now {
                return Err(KeyStoreError::RootExpired(active.id.clone()));
            }
            return Ok((parent, anchors));
        }
        let (parent, cert) = self.create_root(now, AuthorityState::Active, SELF)?;
        let mut anchors = anchors;
        anchors.push(cert);
        Ok((parent, anchors))
    }

    /// Creates and persists a new root in `state` (active, or prepared: in
    /// the bundle so that every peer trusts it before anything is signed by
    /// it, the first step of a zero-downtime root rotation). `caller` is
    /// named in the audit record.
    ///
    /// # Errors
    /// Key generation, signing, key files, the store.
    pub fn create_root(
        &self,
        now: SystemTime,
        state: AuthorityState,
        caller: &str,
    ) -> Result<(SigningAuthority, CertificateDer<'static>), KeyStoreError> {
        let td = &self.config.trust_domain;
        let key = PrivateKey::generate(KeyType::EcdsaP256).map_err(KeyStoreError::Generate)?;
        let params = SigningCaParams {
            trust_domain: td.clone(),
            ttl: self.config.root_ttl,
            backdate: self.config.backdate,
        };
        let what = || "new root".to_owned();
        let cert = new_root(&params, &key, now).map_err(|source| KeyStoreError::Authority {
            what: what(),
            source,
        })?;
        let root =
            SigningAuthority::new(td.clone(), cert.clone(), Vec::new(), key).map_err(|source| {
                KeyStoreError::Authority {
                    what: what(),
                    source,
                }
            })?;
        let id = cert_id(&cert);
        let key_file = self.save_key(&id, root.key())?;
        let (not_before, not_after) = validity(&id, &cert)?;
        self.insert(
            AuthorityRow {
                id: id.clone(),
                kind: AuthorityKind::Root,
                state,
                cert_der: cert.to_vec(),
                key_file,
                not_before,
                not_after,
                created_at: unix(now),
            },
            caller,
            now,
        )?;
        tracing::info!(root = %id, state = state.as_str(), not_after, "created a root");
        Ok((root, cert))
    }

    /// The roots to publish: every root that is not retired and not expired.
    ///
    /// # Errors
    /// Store errors.
    pub fn root_anchors(
        &self,
        now: SystemTime,
    ) -> Result<Vec<CertificateDer<'static>>, KeyStoreError> {
        Ok(self
            .store
            .authorities(Some(AuthorityKind::Root))?
            .iter()
            .filter(|r| r.state != AuthorityState::Retired && r.not_after > unix(now))
            .map(|r| CertificateDer::from(r.cert_der.clone()))
            .collect())
    }

    fn load_signer(
        &self,
        parent: &SigningAuthority,
        now: SystemTime,
    ) -> Result<Option<SigningAuthority>, KeyStoreError> {
        let Some(row) = self
            .store
            .authorities(Some(AuthorityKind::Intermediate))?
            .into_iter()
            .find(|r| r.state == AuthorityState::Active)
        else {
            return Ok(None);
        };
        let parent_id = cert_id(parent.cert());
        if self
            .store
            .meta(&format!("parent_of:{}", row.id))?
            .as_deref()
            != Some(parent_id.as_str())
        {
            tracing::info!(intermediate = %row.id, "the parent CA changed; a new intermediate is needed");
            return Ok(None);
        }
        let key = self.load_key(&row.key_file)?;
        let signer = SigningAuthority::new(
            self.config.trust_domain.clone(),
            CertificateDer::from(row.cert_der.clone()),
            parent.served_chain(),
            key,
        )
        .map_err(|source| KeyStoreError::Authority {
            what: format!("intermediate {}", row.id),
            source,
        })?;
        if needs_rotation(&signer, now) {
            tracing::info!(intermediate = %row.id, "the intermediate is past half of its life");
            return Ok(None);
        }
        Ok(Some(signer))
    }

    /// Creates, self-tests and persists a new active intermediate under
    /// `parent`; the previous one is retired.
    ///
    /// # Errors
    /// Key generation, signing, the self-test or the store.
    pub fn create_signer(
        &self,
        parent: &SigningAuthority,
        anchors: &[CertificateDer<'static>],
        now: SystemTime,
    ) -> Result<SigningAuthority, KeyStoreError> {
        let config = &self.config;
        let key = PrivateKey::generate(KeyType::EcdsaP256).map_err(KeyStoreError::Generate)?;
        let params = SigningCaParams {
            trust_domain: config.trust_domain.clone(),
            ttl: config.intermediate_ttl,
            backdate: config.backdate,
        };
        let what = || "new intermediate".to_owned();
        let issued = new_intermediate(&params, &key, parent, now).map_err(|source| {
            KeyStoreError::Authority {
                what: what(),
                source,
            }
        })?;
        let signer = SigningAuthority::new(
            config.trust_domain.clone(),
            issued.der.clone(),
            parent.served_chain(),
            key,
        )
        .map_err(|source| KeyStoreError::Authority {
            what: what(),
            source,
        })?;
        signer
            .self_test(anchors, now)
            .map_err(|e| KeyStoreError::SelfTest {
                what: "intermediate",
                reason: e.to_string(),
            })?;
        if signer.not_after() < now + Duration::from_secs(60) {
            return Err(KeyStoreError::ParentExpiresSoon);
        }
        let id = cert_id(&issued.der);
        let key_file = self.save_key(&id, signer.key())?;
        self.store
            .set_meta(&format!("parent_of:{id}"), &cert_id(parent.cert()))?;
        let (not_before, not_after) = validity(&id, &issued.der)?;
        self.insert(
            AuthorityRow {
                id: id.clone(),
                kind: AuthorityKind::Intermediate,
                state: AuthorityState::Active,
                cert_der: issued.der.to_vec(),
                key_file,
                not_before,
                not_after,
                created_at: unix(now),
            },
            SELF,
            now,
        )?;
        tracing::info!(intermediate = %id, not_after, "new signing intermediate passed its self-test and is active");
        Ok(signer)
    }

    /// Loads the active JWT key, or creates one when there is none or it is
    /// past half of its life. JWT keys live as long as intermediates.
    ///
    /// # Errors
    /// Key files and the store.
    pub fn load_or_create_jwt(&self, now: SystemTime) -> Result<JwtKey, KeyStoreError> {
        if let Some(row) = self
            .store
            .authorities(Some(AuthorityKind::Jwt))?
            .into_iter()
            .find(|r| r.state == AuthorityState::Active)
        {
            let loaded = JwtKey {
                key_id: row.id.clone(),
                key: self.load_key(&row.key_file)?,
                not_before: from_unix(row.not_before),
                not_after: from_unix(row.not_after),
            };
            if !loaded.needs_rotation(now) {
                return Ok(loaded);
            }
        }
        self.create_jwt(now, SELF)
    }

    /// Creates, tests and persists a new active JWT key; the previous one is
    /// retired (and stays in the bundle until it expires).
    ///
    /// # Errors
    /// Key generation, the self-test, key files and the store.
    pub fn create_jwt(&self, now: SystemTime, caller: &str) -> Result<JwtKey, KeyStoreError> {
        let td = &self.config.trust_domain;
        let key = PrivateKey::generate(KeyType::EcdsaP256).map_err(KeyStoreError::Generate)?;
        let spki = key.public_key_spki();
        let id = cert_id(&spki);
        // Same rule as for X.509 signers: sign and verify a throwaway token first.
        let probe = SpiffeId::from_segments(td, &["signet", "self-test"])?;
        let token = signet_identity::jwt::sign_es256(
            &key,
            &id,
            &probe,
            &["self-test".into()],
            Duration::from_secs(60),
            now,
        )?;
        let mut bundle = TrustBundle::new(td.clone());
        bundle.add_jwt_authority(JwtAuthority::new(id.clone(), &spki)?)?;
        signet_identity::jwt::validate(&token, &bundle, Some("self-test"), now).map_err(|e| {
            KeyStoreError::SelfTest {
                what: "JWT key",
                reason: e.to_string(),
            }
        })?;
        let key_file = self.save_key(&id, &key)?;
        let not_before = unix(now);
        let not_after = unix(now + self.config.intermediate_ttl);
        self.insert(
            AuthorityRow {
                id: id.clone(),
                kind: AuthorityKind::Jwt,
                state: AuthorityState::Active,
                cert_der: spki,
                key_file,
                not_before,
                not_after,
                created_at: not_before,
            },
            caller,
            now,
        )?;
        tracing::info!(kid = %id, "new JWT signing key passed its self-test and is active");
        Ok(JwtKey {
            key_id: id,
            key,
            not_before: from_unix(not_before),
            not_after: from_unix(not_after),
        })
    }

    /// The JWT authorities to publish: every JWT key not yet expired.
    ///
    /// # Errors
    /// Store errors or an unreadable stored key.
    pub fn jwt_authorities(&self, now: SystemTime) -> Result<Vec<JwtAuthority>, KeyStoreError> {
        self.store
            .authorities(Some(AuthorityKind::Jwt))?
            .into_iter()
            .filter(|r| r.not_after > unix(now))
            .map(|r| Ok(JwtAuthority::new(r.id.clone(), &r.cert_der)?.with_expires_at(r.not_after)))
            .collect()
    }

    /// Every stored authority, newest first.
    ///
    /// # Errors
    /// Store errors.
    pub fn list(&self) -> Result<Vec<AuthorityRow>, KeyStoreError> {
        Ok(self.store.authorities(None)?)
    }

    fn insert(
        &self,
        row: AuthorityRow,
        caller: &str,
        now: SystemTime,
    ) -> Result<(), KeyStoreError> {
        let audit = AuditRecord {
            at: unix(now),
            caller: caller.into(),
            action: format!("create_{}", row.kind.as_str()),
            serial: row.id.clone(),
            not_after: row.not_after,
            result: "ok".into(),
            detail: format!("{} {} {}", row.kind.as_str(), row.id, row.state.as_str()),
            ..AuditRecord::default()
        };
        self.store.insert_authority(&row, &audit)?;
        Ok(())
    }
}

fn read_key(path: &Path) -> Result<PrivateKey, KeyStoreError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyStoreError::KeyFile {
        path: path.to_path_buf(),
        source,
    })?;
    PrivateKey::from_pem(&text).map_err(|source| KeyStoreError::BadKey {
        path: path.to_path_buf(),
        source,
    })
}

fn validity(id: &str, der: &[u8]) -> Result<(i64, i64), KeyStoreError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| KeyStoreError::Certificate {
        id: id.into(),
        reason: e.to_string(),
    })?;
    Ok((
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
}
