//! The certificate authority: holds the signing authorities and the bundle,
//! decides what each caller may obtain, signs, and records every decision in
//! the audit log. Transport-free: the gRPC layer in `api/` is a thin shell.

pub mod authorities;
pub mod nodes;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use signet_identity::x509::{
    IssuedCert, SigningAuthority, VerifiedCsr, X509SvidParams, issue_x509_svid,
};
use signet_identity::{SpiffeId, TrustBundle};
use tokio::sync::watch;

use crate::config::Config;
use crate::store::{self, AuditRecord, EntryRow, Store, StoreError, TokenState};
use authorities::unix;

/// Why a request was refused. Each maps to one gRPC status in `api::status`.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Malformed input (CSR, ID, TTL...).
    #[error("{0}")]
    InvalidArgument(String),
    /// Authenticated, but not allowed.
    #[error("{0}")]
    PermissionDenied(String),
    /// No valid credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// No such object.
    #[error("{0}")]
    NotFound(String),
    /// Exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The system is not in a state that allows it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Our fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for CaError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => Self::AlreadyExists(m),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<anyhow::Error> for CaError {
    fn from(e: anyhow::Error) -> Self {
        Self::Internal(format!("{e:#}"))
    }
}

/// The signing state, swapped whole on rotation; readers never block writers
/// for longer than an `Arc` clone.
pub struct Signing {
    /// Signs intermediates.
    pub parent: Arc<SigningAuthority>,
    /// Signs SVIDs.
    pub signer: Arc<SigningAuthority>,
    /// The roots of the bundle.
    pub anchors: Vec<CertificateDer<'static>>,
    /// Signs JWT-SVIDs.
    pub jwt: Arc<authorities::JwtKey>,
}

/// The CA.
pub struct Ca {
    config: Arc<Config>,
    store: Store,
    audit_log: store::AuditLog,
    signing: RwLock<Arc<Signing>>,
    bundle: watch::Sender<Arc<TrustBundle>>,
    entries: watch::Sender<u64>,
    node_events: tokio::sync::broadcast::Sender<SpiffeId>,
    clock: fn() -> SystemTime,
}

/// One item of a batch signing request, already decoded.
#[derive(Debug, Clone)]
pub struct SignItem {
    pub entry_id: String,
    pub csr: Vec<u8>,
    pub ttl: Option<Duration>,
}

/// The outcome of one batch item.
pub type ItemResult = Result<(SpiffeId, IssuedCert), CaError>;

impl Ca {
    /// Opens the data directory and the store, loads or creates the
    /// authorities, and publishes the bundle.
    ///
    /// # Errors
    /// Anything that prevents the CA from signing safely.
    pub fn open(config: Arc<Config>) -> anyhow::Result<Self> {
        Self::open_with_clock(config, SystemTime::now)
    }

    /// As [`Ca::open`], with an injected clock.
    ///
    /// # Errors
    /// As [`Ca::open`].
    pub fn open_with_clock(config: Arc<Config>, clock: fn() -> SystemTime) -> anyhow::Result<Self> {
        signet_identity::fsutil::ensure_private_dir(&config.data_dir)?;
        signet_identity::fsutil::ensure_private_dir(&config.data_dir.join("keys"))?;
        let db = config.data_dir.join("signet.db");
        let store = Store::open(&db)?;
        let audit_log = store::AuditLog::start(&db)?;
        match store.meta("trust_domain")? {
            Some(td) if td != config.trust_domain.as_str() => anyhow::bail!(
                "the data directory {} belongs to trust domain {td}, not {}; use another data directory",
                config.data_dir.display(),
                config.trust_domain
            ),
            Some(_) => {}
            None => store.set_meta("trust_domain", config.trust_domain.as_str())?,
        }
        let auth = authorities::load_or_create(&config, &store, clock())?;
        let bundle = build_bundle(&config, &store, &auth.anchors, clock())?;
        write_bundle_file(&config, &bundle)?;
        let (bundle_tx, _) = watch::channel(Arc::new(bundle));
        let (entries_tx, _) = watch::channel(store.revision()?);
        Ok(Self {
            config,
            store,
            audit_log,
            signing: RwLock::new(Arc::new(Signing {
                parent: Arc::new(auth.parent),
                signer: Arc::new(auth.signer),
                anchors: auth.anchors,
                jwt: Arc::new(auth.jwt),
            })),
            bundle: bundle_tx,
            entries: entries_tx,
            node_events: tokio::sync::broadcast::channel(nodes::NODE_EVENTS_CAPACITY).0,
            clock,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The current time, from the injected clock.
    pub fn now(&self) -> SystemTime {
        (self.clock)()
    }

    /// The current signing state.
    pub fn signing(&self) -> Arc<Signing> {
        self.signing
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The current bundle.
    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.bundle.borrow().clone()
    }

    /// Follows the bundle.
    pub fn watch_bundle(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.bundle.subscribe()
    }

    /// Follows the entry revision.
    pub fn watch_entries(&self) -> watch::Receiver<u64> {
        self.entries.subscribe()
    }

    /// Rotates the intermediate when half its life has passed. Called
    /// periodically; the new one is self-tested before it replaces the old.
    ///
    /// # Errors
    /// Rotation failures (the old signer stays in place).
    pub fn rotate_if_due(&self) -> anyhow::Result<bool> {
        let now = self.now();
        let current = self.signing();
        let rotate_x509 = authorities::needs_rotation(&current.signer, now);
        let rotate_jwt = current.jwt.needs_rotation(now);
        if !rotate_x509 && !rotate_jwt {
            return Ok(false);
        }
        let signer = if rotate_x509 {
            Arc::new(authorities::create_signer(
                &self.config,
                &self.store,
                &current.parent,
                &current.anchors,
                now,
            )?)
        } else {
            current.signer.clone()
        };
        let jwt = if rotate_jwt {
            Arc::new(authorities::create_jwt(&self.config, &self.store, now)?)
        } else {
            current.jwt.clone()
        };
        let next = Signing {
            parent: current.parent.clone(),
            signer,
            anchors: current.anchors.clone(),
            jwt,
        };
        *self
            .signing
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(next);
        if rotate_jwt {
            self.republish_bundle()?;
        }
        Ok(true)
    }

    /// Rebuilds the bundle from the store and publishes it when it changed.
    ///
    /// # Errors
    /// Store and file errors.
    pub fn republish_bundle(&self) -> anyhow::Result<()> {
        let anchors = self.signing().anchors.clone();
        let bundle = build_bundle(&self.config, &self.store, &anchors, self.now())?;
        if *self.bundle.borrow().as_ref() != bundle {
            write_bundle_file(&self.config, &bundle)?;
            tracing::info!(
                sequence = bundle.sequence(),
                "publishing a new trust bundle"
            );
            self.bundle.send_replace(Arc::new(bundle));
        }
        Ok(())
    }

    /// Adds a new root to the bundle without signing with it yet (the first
    /// step of a root rotation), or rotates the JWT key now. Returns the new
    /// bundle sequence.
    ///
    /// # Errors
    /// FailedPrecondition when an upstream CA owns the roots; internal errors.
    pub fn prepare_authority(&self, kind: &str) -> Result<u64, CaError> {
        let now = self.now();
        let current = self.signing();
        let next = match kind {
            "root" => {
                if self.config.upstream_ca.is_some() {
                    return Err(CaError::FailedPrecondition(
                        "the roots belong to the upstream CA; rotate them there".into(),
                    ));
                }
                authorities::create_root(&self.config, &self.store, now, "prepared")?;
                Signing {
                    parent: current.parent.clone(),
                    signer: current.signer.clone(),
                    anchors: authorities::root_anchors(&self.store, now)?,
                    jwt: current.jwt.clone(),
                }
            }
            "jwt" => Signing {
                parent: current.parent.clone(),
                signer: current.signer.clone(),
                anchors: current.anchors.clone(),
                jwt: Arc::new(authorities::create_jwt(&self.config, &self.store, now)?),
            },
            other => {
                return Err(CaError::InvalidArgument(format!(
                    "kind must be root or jwt, not {other:?}"
                )));
            }
        };
        *self
            .signing
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(next);
        self.republish_bundle()?;
        self.audit(AuditRecord {
            at: unix(now),
            caller: "admin".into(),
            action: format!("prepare_{kind}"),
            result: "ok".into(),
            ..AuditRecord::default()
        });
        Ok(self.bundle().sequence())
    }

    /// Signs a JWT-SVID for an entry parented to `node`.
    ///
    /// # Errors
    /// PermissionDenied for an entry not authorized for `node`;
    /// InvalidArgument for a missing audience.
    pub fn mint_jwt(
        &self,
        node: &SpiffeId,
        entry_id: &str,
        audience: &[String],
        ttl: Option<Duration>,
    ) -> Result<(SpiffeId, String, SystemTime), CaError> {
        let result = (|| {
            self.authorize_node(node)?;
            let entry = self
                .store
                .get_entry(entry_id)?
                .filter(|e| e.parent_id == node.as_str())
                .ok_or_else(|| {
                    CaError::PermissionDenied(format!(
                        "entry {entry_id:?} does not exist or is not authorized for {node}"
                    ))
                })?;
            let id =
                SpiffeId::parse(&entry.spiffe_id).map_err(|e| CaError::Internal(e.to_string()))?;
            let ttl = ttl
                .filter(|t| !t.is_zero())
                .unwrap_or(DEFAULT_JWT_TTL)
                .min(MAX_JWT_TTL);
            let signing = self.signing();
            let now = self.now();
            let expires = (now + ttl).min(signing.jwt.not_after);
            let ttl = expires.duration_since(now).unwrap_or_default();
            let token = signet_identity::jwt::sign_es256(
                &signing.jwt.key,
                &signing.jwt.key_id,
                &id,
                audience,
                ttl,
                now,
            )
            .map_err(|e| match e {
                signet_identity::jwt::JwtError::MissingAudience => CaError::InvalidArgument(
                    "a JWT-SVID needs at least one non-empty audience".into(),
                ),
                e @ (signet_identity::jwt::JwtError::TooManyAudiences(_)
                | signet_identity::jwt::JwtError::AudienceTooLong(_)
                | signet_identity::jwt::JwtError::TooLong) => {
                    CaError::InvalidArgument(e.to_string())
                }
                other => CaError::Internal(other.to_string()),
            })?;
            self.audit(AuditRecord {
                at: unix(now),
                caller: node.to_string(),
                action: "mint_jwt_svid".into(),
                spiffe_id: id.to_string(),
                not_after: unix(expires),
                result: "issued".into(),
                detail: format!("entry {entry_id} aud {audience:?}"),
                ..AuditRecord::default()
            });
            Ok((id, token, expires))
        })();
        if let Err(e) = &result {
            self.audit_rejection(node.as_str(), "mint_jwt_svid", "", e);
        }
        result
    }

    /// The SPIFFE ID of a node.
    ///
    /// # Errors
    /// [`CaError::InvalidArgument`] when `name` is not a valid path segment.
    pub fn node_id(&self, name: &str) -> Result<SpiffeId, CaError> {
        SpiffeId::from_segments(&self.config.trust_domain, &["signet", "node", name])
            .map_err(|e| CaError::InvalidArgument(format!("invalid node name {name:?}: {e}")))
    }

    /// The node name in a node SPIFFE ID, when it is one of ours.
    pub fn node_name<'a>(&self, id: &'a SpiffeId) -> Option<&'a str> {
        if !id.is_member_of(&self.config.trust_domain) {
            return None;
        }
        id.path()
            .strip_prefix("/signet/node/")
            .filter(|n| !n.contains('/'))
    }

    /// Signs `csr` for `spiffe_id` with the active intermediate.
    ///
    /// # Errors
    /// [`CaError::InvalidArgument`] for a bad DNS name or TTL; internal errors.
    pub fn sign(
        &self,
        csr: &VerifiedCsr,
        spiffe_id: &SpiffeId,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<IssuedCert, CaError> {
        let signing = self.signing();
        let params = X509SvidParams {
            spiffe_id: spiffe_id.clone(),
            dns_names: dns_names.to_vec(),
            ttl,
            backdate: self.config.backdate,
        };
        issue_x509_svid(csr, &params, &signing.signer, self.now()).map_err(|e| match e {
            signet_identity::x509::IssueError::InvalidDnsName(_)
            | signet_identity::x509::IssueError::ZeroTtl
            | signet_identity::x509::IssueError::WrongTrustDomain { .. }
            | signet_identity::x509::IssueError::EmptyPath(_) => {
                CaError::InvalidArgument(e.to_string())
            }
            other => CaError::Internal(other.to_string()),
        })
    }

    fn audit(&self, rec: AuditRecord) {
        if let Err(e) = self.store.audit(&rec) {
            tracing::error!(error = %e, action = %rec.action, "could not write the audit log");
        }
    }

    /// Logs and audits a refused request.
    pub fn audit_rejection(&self, caller: &str, action: &str, spiffe_id: &str, err: &CaError) {
        tracing::info!(caller, action, spiffe_id, error = %err, "request refused");
        self.audit(AuditRecord {
            at: unix(self.now()),
            caller: caller.into(),
            action: action.into(),
            spiffe_id: spiffe_id.into(),
            result: "rejected".into(),
            detail: err.to_string(),
            ..AuditRecord::default()
        });
    }

    fn issued_record(
        caller: &str,
        action: &str,
        id: &SpiffeId,
        cert: &IssuedCert,
        now: i64,
    ) -> AuditRecord {
        AuditRecord {
            at: now,
            caller: caller.into(),
            action: action.into(),
            spiffe_id: id.to_string(),
            serial: cert.serial_hex(),
            not_after: unix(cert.not_after),
            result: "issued".into(),
            detail: String::new(),
        }
    }

    /// Exchanges a join token and a CSR for a node SVID. The token is
    /// consumed only if the SVID is issued and recorded.
    ///
    /// # Errors
    /// InvalidArgument for a bad CSR; PermissionDenied for an unknown, used
    /// or expired token.
    pub fn attest_node(
        &self,
        token: &str,
        csr: &[u8],
        caller: &str,
    ) -> Result<(SpiffeId, IssuedCert), CaError> {
        let result = self.attest_node_inner(token, csr, caller);
        if let Err(e) = &result {
            self.audit_rejection(caller, "attest_node", "", e);
        }
        result
    }

    fn attest_node_inner(
        &self,
        token: &str,
        csr: &[u8],
        caller: &str,
    ) -> Result<(SpiffeId, IssuedCert), CaError> {
        if token.is_empty() {
            return Err(CaError::Unauthenticated("a join token is required".into()));
        }
        let csr =
            VerifiedCsr::from_der(csr).map_err(|e| CaError::InvalidArgument(e.to_string()))?;
        let hash = token_hash(token);
        let now = self.now();
        let attested = self.store.transaction(|tx| {
            let name = match store::token_state(tx, &hash, unix(now))? {
                TokenState::Valid(name) => name,
                TokenState::Unknown => {
                    return Err(CaError::PermissionDenied("join token is not valid".into()));
                }
                TokenState::Used => {
                    return Err(CaError::PermissionDenied(
                        "join token has already been used".into(),
                    ));
                }
                TokenState::Expired => {
                    return Err(CaError::PermissionDenied("join token has expired".into()));
                }
            };
            self.check_not_banned(tx, &name)?;
            let id = self.node_id(&name)?;
            let cert = self.sign(&csr, &id, &[], self.config.node_svid_ttl)?;
            store::consume_token(tx, &hash, unix(now))?;
            store::upsert_node(
                tx,
                id.as_str(),
                &name,
                unix(now),
                &cert.serial_hex(),
                unix(cert.not_after),
            )?;
            // A new attestation retires every earlier SVID of the node.
            store::nodes_ban::set_previous_serial(tx, id.as_str(), "")?;
            store::insert_audit(
                tx,
                &Self::issued_record(caller, "attest_node", &id, &cert, unix(now)),
            )?;
            tracing::info!(node = %id, serial = %cert.serial_hex(), "node attested");
            Ok((id, cert))
        })?;
        self.announce_node_change(&attested.0);
        Ok(attested)
    }

    /// Checks that `node` is an attested node of this trust domain.
    ///
    /// # Errors
    /// PermissionDenied otherwise.
    pub fn authorize_node(&self, node: &SpiffeId) -> Result<(), CaError> {
        if self.node_name(node).is_none() {
            return Err(CaError::PermissionDenied(format!(
                "{node} is not a node identity"
            )));
        }
        if !self
            .store
            .with_conn(|c| store::node_exists(c, node.as_str()))?
        {
            return Err(CaError::PermissionDenied(format!(
                "node {node} is not attested"
            )));
        }
        Ok(())
    }

    /// Issues a fresh node SVID to an authenticated node presenting its
    /// current node SVID (serial `presented`); see [`nodes`].
    ///
    /// # Errors
    /// InvalidArgument for a bad CSR; PermissionDenied for an unknown node
    /// or a superseded SVID.
    pub fn renew_node(
        &self,
        node: &SpiffeId,
        presented: Option<&str>,
        csr: &[u8],
    ) -> Result<IssuedCert, CaError> {
        let result = (|| {
            self.authorize_node(node)?;
            let csr =
                VerifiedCsr::from_der(csr).map_err(|e| CaError::InvalidArgument(e.to_string()))?;
            let now = self.now();
            let name = self.node_name(node).unwrap_or_default().to_owned();
            let cert = self.store.transaction(|tx| {
                let previous = self.check_renewal(tx, node, presented)?;
                let cert = self.sign(&csr, node, &[], self.config.node_svid_ttl)?;
                store::upsert_node(
                    tx,
                    node.as_str(),
                    &name,
                    unix(now),
                    &cert.serial_hex(),
                    unix(cert.not_after),
                )?;
                store::nodes_ban::set_previous_serial(tx, node.as_str(), &previous)?;
                store::insert_audit(
                    tx,
                    &Self::issued_record(node.as_str(), "renew_node", node, &cert, unix(now)),
                )?;
                Ok::<_, CaError>(cert)
            })?;
            self.announce_node_change(node);
            Ok(cert)
        })();
        if let Err(e) = &result {
            self.audit_rejection(node.as_str(), "renew_node", node.as_str(), e);
        }
        result
    }

    /// Signs a batch of workload CSRs for `node`. Each item succeeds or fails
    /// on its own; every outcome is audited in one transaction.
    ///
    /// # Errors
    /// The whole batch fails only when the node is not authorized, the batch
    /// is too large, or the audit log cannot be written (then nothing is returned).
    pub fn sign_batch(
        &self,
        node: &SpiffeId,
        items: &[SignItem],
    ) -> Result<Vec<ItemResult>, CaError> {
        if items.len() > self.config.max_batch {
            let e = CaError::InvalidArgument(format!(
                "batch has {} items; the limit is {}",
                items.len(),
                self.config.max_batch
            ));
            self.audit_rejection(node.as_str(), "sign_batch", "", &e);
            return Err(e);
        }
        if let Err(e) = self.authorize_node(node) {
            self.audit_rejection(node.as_str(), "sign_batch", "", &e);
            return Err(e);
        }
        let now = self.now();
        let results: Vec<ItemResult> = items
            .iter()
            .map(|item| self.sign_item(node, item))
            .collect();
        let records = items
            .iter()
            .zip(&results)
            .map(|(item, result)| match result {
                Ok((id, cert)) => {
                    let mut r =
                        Self::issued_record(node.as_str(), "sign_x509_svid", id, cert, unix(now));
                    r.detail = format!("entry {}", item.entry_id);
                    r
                }
                Err(e) => AuditRecord {
                    at: unix(now),
                    caller: node.to_string(),
                    action: "sign_x509_svid".into(),
                    result: "rejected".into(),
                    detail: format!("entry {}: {e}", item.entry_id),
                    ..AuditRecord::default()
                },
            })
            .collect();
        // Nothing is handed out unless its audit record is durable.
        self.audit_log.append(records)?;
        Ok(results)
    }

    fn sign_item(&self, node: &SpiffeId, item: &SignItem) -> ItemResult {
        let entry = self
            .store
            .get_entry(&item.entry_id)?
            .filter(|e| e.parent_id == node.as_str())
            .ok_or_else(|| {
                CaError::PermissionDenied(format!(
                    "entry {:?} does not exist or is not authorized for {node}",
                    item.entry_id
                ))
            })?;
        let csr = VerifiedCsr::from_der(&item.csr)
            .map_err(|e| CaError::InvalidArgument(e.to_string()))?;
        let id = SpiffeId::parse(&entry.spiffe_id)
            .map_err(|e| CaError::Internal(format!("stored entry {}: {e}", entry.id)))?;
        let ttl = self.effective_ttl(&entry, item.ttl);
        let cert = self.sign(&csr, &id, &entry.dns_names, ttl)?;
        Ok((id, cert))
    }

    /// min(requested, the entry's maximum or the server's); the signer's
    /// notAfter caps it again when signing.
    pub fn effective_ttl(&self, entry: &EntryRow, requested: Option<Duration>) -> Duration {
        let (default, max) = if entry.ttl_seconds > 0 {
            let t = Duration::from_secs(entry.ttl_seconds as u64);
            (t, t)
        } else {
            (
                self.config.default_x509_svid_ttl,
                self.config.max_x509_svid_ttl,
            )
        };
        requested
            .filter(|d| !d.is_zero())
            .map_or(default, |r| r.min(max))
    }

    /// The entries `node` may obtain SVIDs for, and the revision they reflect.
    ///
    /// # Errors
    /// PermissionDenied for an unknown node.
    pub fn authorized_entries(&self, node: &SpiffeId) -> Result<(Vec<EntryRow>, u64), CaError> {
        self.authorize_node(node)?;
        let revision = *self.entries.borrow();
        Ok((self.store.list_entries(Some(node.as_str()))?, revision))
    }

    /// Announces an entry change to the watchers.
    pub fn entries_changed(&self) {
        match self.store.revision() {
            Ok(rev) => {
                self.entries.send_replace(rev);
            }
            Err(e) => tracing::error!(error = %e, "could not read the entry revision"),
        }
    }

    /// Mints an SVID for any ID of the trust domain (admin only).
    ///
    /// # Errors
    /// InvalidArgument for a bad ID, CSR, DNS name or TTL.
    pub fn mint(
        &self,
        id: &str,
        csr: &[u8],
        ttl: Option<Duration>,
        dns_names: &[String],
        caller: &str,
    ) -> Result<(SpiffeId, IssuedCert), CaError> {
        let result = (|| {
            let id = SpiffeId::parse(id)
                .map_err(|e| CaError::InvalidArgument(format!("invalid SPIFFE ID {id:?}: {e}")))?;
            if !id.is_member_of(&self.config.trust_domain) {
                return Err(CaError::InvalidArgument(format!(
                    "{id} is not in trust domain {}",
                    self.config.trust_domain
                )));
            }
            if id.path().starts_with("/signet/") {
                return Err(CaError::InvalidArgument(
                    "the path /signet/ is reserved for Signet's own identities".into(),
                ));
            }
            let csr =
                VerifiedCsr::from_der(csr).map_err(|e| CaError::InvalidArgument(e.to_string()))?;
            let ttl = ttl
                .filter(|t| !t.is_zero())
                .unwrap_or(self.config.default_x509_svid_ttl)
                .min(self.config.max_x509_svid_ttl);
            let cert = self.sign(&csr, &id, dns_names, ttl)?;
            let now = unix(self.now());
            self.store.transaction(|tx| {
                store::insert_audit(tx, &Self::issued_record(caller, "mint", &id, &cert, now))?;
                Ok::<_, CaError>(())
            })?;
            Ok((id, cert))
        })();
        if let Err(e) = &result {
            self.audit_rejection(caller, "mint", id, e);
        }
        result
    }
}

/// The stored form of a join token: its SHA-256, hex.
pub fn token_hash(token: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

/// Default lifetime of JWT-SVIDs.
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);
/// Longest lifetime of JWT-SVIDs.
pub const MAX_JWT_TTL: Duration = Duration::from_secs(3600);

/// The bundle: the anchors and every unexpired JWT key, with a sequence
/// number that is bumped whenever that set changes.
fn build_bundle(
    config: &Config,
    store: &Store,
    anchors: &[CertificateDer<'static>],
    now: SystemTime,
) -> anyhow::Result<TrustBundle> {
    let jwt = authorities::jwt_authorities(store, now)?;
    let mut ids: Vec<String> = anchors.iter().map(|a| authorities::cert_id(a)).collect();
    ids.extend(jwt.iter().map(|j| format!("jwt:{}", j.key_id())));
    let mut bundle =
        TrustBundle::new(config.trust_domain.clone()).with_x509_authorities(anchors.to_vec())?;
    for j in jwt {
        bundle.add_jwt_authority(j)?;
    }
    bundle.set_sequence(bundle_sequence(store, ids)?);
    Ok(bundle)
}

fn bundle_sequence(store: &Store, mut ids: Vec<String>) -> anyhow::Result<u64> {
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
fn write_bundle_file(config: &Config, bundle: &TrustBundle) -> anyhow::Result<()> {
    signet_identity::fsutil::write_atomic(
        &config.data_dir.join("bundle.pem"),
        bundle.to_pem().as_bytes(),
        0o644,
    )?;
    Ok(())
}
