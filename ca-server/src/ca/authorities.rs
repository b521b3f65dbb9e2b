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
    /// The active root has expired (the CA was down past the whole
    /// rotation window of the root).
    #[error(
        "the active root {0} has expired; prepare and activate a new one, or start over with a new data directory"
    )]
    RootExpired(String),
    /// An active authority was never published: refusing to sign with it.
    #[error("the active {kind} {id} was never published; refusing to sign with it")]
    Unpublished {
        /// Its kind.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// A kind has no active authority.
    #[error("there is no active {0}")]
    NoActive(&'static str),
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

/// The active JWT-SVID signing key. Its public half is published in the
/// bundle as a `jwt-svid` key under `key_id`.
pub struct JwtKey {
    pub key_id: String,
    pub key: PrivateKey,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// A short stable id for a certificate or key: the first 8 bytes of its
/// SHA-256, hex.
pub fn cert_id(der: &[u8]) -> String {
    signet_identity::x509::authority_id(der)
}

/// Who the audit log names for changes the CA makes on its own.
pub const SELF: &str = "ca";

/// The key store: owns the data directory's key files and, of the
/// authority rows of the store, those of this replica. Every replica has
/// its own keys (no private key is ever shared between replicas): the rows
/// it creates carry its replica id, and it loads, rotates and signs with
/// those only. The bundle is the union of every replica's rows.
#[derive(Clone)]
pub struct KeyStore {
    config: Arc<Config>,
    store: Store,
    replica_id: Arc<str>,
}

impl KeyStore {
    /// A key store over the configured data directory and `store`, for the
    /// replica `replica_id`.
    pub fn new(config: Arc<Config>, store: Store, replica_id: &str) -> Self {
        Self {
            config,
            store,
            replica_id: replica_id.into(),
        }
    }

    /// Whether `row` belongs to this replica.
    pub fn owns(&self, row: &AuthorityRow) -> bool {
        row.replica_id.as_deref() == Some(&*self.replica_id)
    }

    /// This replica's authorities, newest first.
    ///
    /// # Errors
    /// Store errors.
    pub fn own(&self) -> Result<Vec<AuthorityRow>, KeyStoreError> {
        let mut rows = self.store.authorities(None)?;
        rows.retain(|r| self.owns(r));
        Ok(rows)
    }

    /// Adopts the authorities no replica owns yet (rows from before
    /// replicas owned authorities, or copied by `signet-ca migrate`) whose
    /// key file is in this data directory. Returns how many it adopted.
    ///
    /// # Errors
    /// Store errors.
    pub fn adopt(&self) -> Result<u64, KeyStoreError> {
        let ids: Vec<String> = self
            .store
            .authorities(None)?
            .into_iter()
            .filter(|r| {
                r.replica_id.is_none()
                    && !r.key_file.is_empty()
                    && self.config.data_dir.join(&r.key_file).is_file()
            })
            .map(|r| r.id)
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let adopted = self
            .store
            .transaction(|tx| crate::store::authorities::adopt(tx, &self.replica_id, &ids))?;
        tracing::info!(
            replica = %self.replica_id,
            adopted,
            "adopted the authorities whose keys are in this data directory"
        );
        Ok(adopted)
    }

    /// Creates what a CA cannot start without: an active root on first
    /// start (unless an upstream CA is configured), an active intermediate
    /// when there is none under the current parent (or it has expired), an
    /// active JWT key when there is none (or it has expired). Everything
    /// else (rotation) is the rotation schedule's job. The new rows are
    /// published by the caller before anything is signed.
    ///
    /// # Errors
    /// Unreadable or inconsistent key material, store errors, a failed self-test.
    pub fn bootstrap(
        &self,
        now: SystemTime,
        upstream: Option<(&SigningAuthority, &CertificateDer<'static>)>,
    ) -> Result<(), KeyStoreError> {
        self.adopt()?;
        let rows = self.own()?;
        let active = |kind| {
            rows.iter()
                .find(|r| r.kind == kind && r.state == AuthorityState::Active)
        };
        let owned;
        let (parent, anchor): (&SigningAuthority, CertificateDer<'static>) = match upstream {
            Some((parent, anchor)) => (parent, anchor.clone()),
            None => {
                owned = match active(AuthorityKind::Root) {
                    Some(row) if row.not_after <= unix(now) => {
                        // Down past the whole rotation window: a published
                        // successor takes over; without one, nothing can.
                        let next = self
                            .published_successor(&rows, AuthorityKind::Root, now)
                            .ok_or_else(|| KeyStoreError::RootExpired(row.id.clone()))?;
                        self.promote(next, now)?;
                        self.load_root(next)?
                    }
                    Some(row) => self.load_root(row)?,
                    None => {
                        let row = self.create_root(now, AuthorityState::Active, SELF)?;
                        self.load_root(&row)?
                    }
                };
                (&owned, owned.cert().clone())
            }
        };
        let parent_id = cert_id(parent.cert());
        let usable = active(AuthorityKind::Intermediate).is_some_and(|r| {
            r.parent_id.as_deref() == Some(parent_id.as_str())
                && r.not_after > unix(now + Duration::from_secs(60))
        });
        if !usable {
            tracing::info!("no usable intermediate under the current parent; making one");
            self.create_intermediate(
                parent,
                &parent_id,
                &[anchor],
                now,
                AuthorityState::Active,
                SELF,
            )?;
        }
        if active(AuthorityKind::Jwt).is_none_or(|r| r.not_after <= unix(now)) {
            // Prefer a successor that agents were sent before the stop; a new
            // key (first start, or none prepared) signs from the bundle
            // published before the CA serves.
            match self.published_successor(&rows, AuthorityKind::Jwt, now) {
                Some(next) => self.promote(next, now)?,
                None => {
                    self.create_jwt(now, AuthorityState::Active, SELF)?;
                }
            }
        }
        Ok(())
    }

    /// The newest prepared, published, unexpired authority of `kind`.
    fn published_successor<'a>(
        &self,
        rows: &'a [AuthorityRow],
        kind: AuthorityKind,
        now: SystemTime,
    ) -> Option<&'a AuthorityRow> {
        rows.iter().find(|r| {
            r.kind == kind
                && r.state == AuthorityState::Prepared
                && r.published_sequence.is_some()
                && r.not_after > unix(now)
        })
    }

    /// At start, when the active authority of its kind has expired: makes
    /// the published `next` active and retires the expired one, with their
    /// audit records, in one transaction.
    fn promote(&self, next: &AuthorityRow, now: SystemTime) -> Result<(), KeyStoreError> {
        let t = unix(now);
        tracing::warn!(kind = next.kind.as_str(), id = %next.id, "the active authority expired while the CA was down; its published successor takes over");
        self.store.transaction(|tx| {
            for old in crate::store::authorities::list(tx, Some(next.kind))?
                .into_iter()
                .filter(|r| r.state == AuthorityState::Active && self.owns(r))
            {
                let old = AuthorityRow {
                    state: AuthorityState::Retired,
                    retired_at: Some(t),
                    ..old
                };
                crate::store::authorities::update(tx, &old)?;
                crate::store::insert_audit(tx, &transition_record(&old, "authority_retire", t))?;
            }
            let next = AuthorityRow {
                state: AuthorityState::Active,
                activated_at: Some(t),
                ..next.clone()
            };
            crate::store::authorities::update(tx, &next)?;
            crate::store::insert_audit(tx, &transition_record(&next, "authority_activate", t))
        })?;
        Ok(())
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

    /// The private key of a stored authority.
    ///
    /// # Errors
    /// Unreadable key file.
    pub fn load_key_of(&self, row: &AuthorityRow) -> Result<PrivateKey, KeyStoreError> {
        self.load_key(&row.key_file)
    }

    /// Reads the configured upstream CA: the CA that signs our
    /// intermediates, and the top of its chain (the trust anchor when no
    /// upstream bundle file is configured).
    ///
    /// # Errors
    /// Unreadable or unusable files.
    pub fn load_upstream(
        &self,
        cert: &Path,
        key: &Path,
    ) -> Result<(SigningAuthority, CertificateDer<'static>), KeyStoreError> {
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
        Ok((parent, anchor))
    }

    /// Loads a stored root with its key.
    ///
    /// # Errors
    /// Unreadable key, inconsistent certificate.
    pub fn load_root(&self, row: &AuthorityRow) -> Result<SigningAuthority, KeyStoreError> {
        SigningAuthority::new(
            self.config.trust_domain.clone(),
            CertificateDer::from(row.cert_der.clone()),
            Vec::new(),
            self.load_key(&row.key_file)?,
        )
        .map_err(|source| KeyStoreError::Authority {
            what: format!("root {}", row.id),
            source,
        })
    }

    /// Loads a stored intermediate with its key, under `parent`.
    ///
    /// # Errors
    /// Unreadable key, inconsistent certificate.
    pub fn load_intermediate(
        &self,
        row: &AuthorityRow,
        parent: &SigningAuthority,
    ) -> Result<SigningAuthority, KeyStoreError> {
        SigningAuthority::new(
            self.config.trust_domain.clone(),
            CertificateDer::from(row.cert_der.clone()),
            parent.served_chain(),
            self.load_key(&row.key_file)?,
        )
        .map_err(|source| KeyStoreError::Authority {
            what: format!("intermediate {}", row.id),
            source,
        })
    }

    /// Loads a stored JWT key.
    ///
    /// # Errors
    /// Unreadable key.
    pub fn load_jwt(&self, row: &AuthorityRow) -> Result<JwtKey, KeyStoreError> {
        Ok(JwtKey {
            key_id: row.id.clone(),
            key: self.load_key(&row.key_file)?,
            not_before: from_unix(row.not_before),
            not_after: from_unix(row.not_after),
        })
    }

    /// Creates and persists a new root in `state` (active only on first
    /// start; otherwise prepared: published before anything is signed by
    /// it). `caller` is named in the audit record.
    ///
    /// # Errors
    /// Key generation, signing, key files, the store.
    pub fn create_root(
        &self,
        now: SystemTime,
        state: AuthorityState,
        caller: &str,
    ) -> Result<AuthorityRow, KeyStoreError> {
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
        let id = cert_id(&cert);
        let key_file = self.save_key(&id, &key)?;
        let row = AuthorityRow::new(
            id.clone(),
            AuthorityKind::Root,
            state,
            cert.to_vec(),
            key_file,
            validity(&id, &cert)?,
            unix(now),
            None,
        );
        let row = self.insert(row, caller, now)?;
        tracing::info!(root = %id, state = state.as_str(), not_after = row.not_after, "created a root");
        Ok(row)
    }

    /// Creates, self-tests against `anchors` and persists a new
    /// intermediate under `parent` in `state` (active only when there is
    /// none; the previous active one is then retired).
    ///
    /// # Errors
    /// Key generation, signing, the self-test or the store.
    pub fn create_intermediate(
        &self,
        parent: &SigningAuthority,
        parent_id: &str,
        anchors: &[CertificateDer<'static>],
        now: SystemTime,
        state: AuthorityState,
        caller: &str,
    ) -> Result<AuthorityRow, KeyStoreError> {
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
        let row = AuthorityRow::new(
            id.clone(),
            AuthorityKind::Intermediate,
            state,
            issued.der.to_vec(),
            key_file,
            validity(&id, &issued.der)?,
            unix(now),
            Some(parent_id.to_owned()),
        );
        let row = self.insert(row, caller, now)?;
        tracing::info!(intermediate = %id, parent = parent_id, state = state.as_str(), not_after = row.not_after, "new intermediate passed its self-test");
        Ok(row)
    }

    /// Creates, tests and persists a new JWT key in `state` (active only
    /// when there is none).
    ///
    /// # Errors
    /// Key generation, the self-test, key files and the store.
    pub fn create_jwt(
        &self,
        now: SystemTime,
        state: AuthorityState,
        caller: &str,
    ) -> Result<AuthorityRow, KeyStoreError> {
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
        let not_after = unix(now + self.config.rotation.jwt_key_ttl);
        let row = AuthorityRow::new(
            id.clone(),
            AuthorityKind::Jwt,
            state,
            spki,
            key_file,
            (not_before, not_after),
            not_before,
            None,
        );
        let row = self.insert(row, caller, now)?;
        tracing::info!(kid = %id, state = state.as_str(), "new JWT signing key passed its self-test");
        Ok(row)
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
        mut row: AuthorityRow,
        caller: &str,
        now: SystemTime,
    ) -> Result<AuthorityRow, KeyStoreError> {
        if row.state == AuthorityState::Active {
            row.activated_at = Some(unix(now));
        }
        row.replica_id = Some(self.replica_id.to_string());
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
        Ok(row)
    }
}

fn transition_record(row: &AuthorityRow, action: &str, at: i64) -> AuditRecord {
    AuditRecord {
        at,
        caller: SELF.into(),
        action: action.into(),
        serial: row.id.clone(),
        not_after: row.not_after,
        result: "ok".into(),
        detail: format!("{} {} {}", row.kind.as_str(), row.id, row.state.as_str()),
        ..AuditRecord::default()
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
