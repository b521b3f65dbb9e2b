//! The trust domain's signing authorities: the root(s) that form the bundle
//! and the one active intermediate that signs. Roots and intermediates are
//! rows in the store with their key in a 0600 file; the model holds many roots
//! per trust domain so that rotation can add one without a format change.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use rustls_pki_types::CertificateDer;
use signet_identity::x509::{SigningAuthority, SigningCaParams, new_intermediate, new_root};
use signet_identity::{KeyType, PrivateKey, TrustDomain};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::Config;
use crate::store::{AuthorityRow, Store};
use signet_identity::fsutil;

/// Where the signing intermediate comes from.
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

pub(crate) fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A short stable id for a certificate: the first 8 bytes of its SHA-256, hex.
pub fn cert_id(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    hex::encode(&digest.as_ref()[..8])
}

fn validity(der: &[u8]) -> anyhow::Result<(i64, i64)> {
    let (_, cert) = X509Certificate::from_der(der).context("parsing certificate")?;
    Ok((
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
}

fn key_path(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("keys").join(format!("{id}.key.pem"))
}

fn save_key(data_dir: &Path, id: &str, key: &PrivateKey) -> anyhow::Result<String> {
    let path = key_path(data_dir, id);
    fsutil::write_atomic(&path, key.to_pem().as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(format!("keys/{id}.key.pem"))
}

fn load_key(data_dir: &Path, rel: &str) -> anyhow::Result<PrivateKey> {
    let path = data_dir.join(rel);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading key {}", path.display()))?;
    PrivateKey::from_pem(&text).with_context(|| format!("loading key {}", path.display()))
}

/// Loads the authorities from the store, creating what is missing: a root on
/// first start (unless an upstream CA is configured) and an intermediate
/// whenever there is none, the parent changed, or half its life has passed.
///
/// # Errors
/// Unreadable or inconsistent key material, store errors, a failed self-test.
pub fn load_or_create(
    config: &Config,
    store: &Store,
    now: SystemTime,
) -> anyhow::Result<Authorities> {
    let td = &config.trust_domain;
    let (parent, anchors) = match &config.upstream_ca {
        Some((cert, key)) => load_upstream(td, cert, key)?,
        None => load_or_create_root(config, store, now)?,
    };
    let signer = match load_signer(config, store, &parent, now)? {
        Some(signer) => signer,
        None => create_signer(config, store, &parent, &anchors, now)?,
    };
    let jwt = load_or_create_jwt(config, store, now)?;
    Ok(Authorities {
        parent,
        anchors,
        signer,
        jwt,
    })
}

fn load_upstream(
    td: &TrustDomain,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(SigningAuthority, Vec<CertificateDer<'static>>)> {
    let pem_text = std::fs::read(cert)
        .with_context(|| format!("reading upstream CA certificate {}", cert.display()))?;
    let certs: Vec<CertificateDer<'static>> = pem::parse_many(&pem_text)
        .with_context(|| format!("parsing {}", cert.display()))?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect();
    let Some((first, rest)) = certs.split_first() else {
        bail!("{} holds no CERTIFICATE", cert.display());
    };
    let key_text = std::fs::read_to_string(key)
        .with_context(|| format!("reading upstream CA key {}", key.display()))?;
    let key = PrivateKey::from_pem(&key_text)
        .with_context(|| format!("loading upstream CA key {}", key.display()))?;
    // The top of the given chain is the trust anchor; the rest are served.
    let (anchor, upstream) = match rest.split_last() {
        Some((top, between)) => (top.clone(), between.to_vec()),
        None => (first.clone(), Vec::new()),
    };
    let parent =
        SigningAuthority::new(td.clone(), first.clone(), upstream, key).context("upstream CA")?;
    Ok((parent, vec![anchor]))
}

fn load_or_create_root(
    config: &Config,
    store: &Store,
    now: SystemTime,
) -> anyhow::Result<(SigningAuthority, Vec<CertificateDer<'static>>)> {
    let td = &config.trust_domain;
    let roots = store.authorities(Some("root"))?;
    let anchors = root_anchors(store, now)?;
    if let Some(active) = roots.iter().find(|r| r.state == "active") {
        let key = load_key(&config.data_dir, &active.key_file)?;
        let parent = SigningAuthority::new(
            td.clone(),
            CertificateDer::from(active.cert_der.clone()),
            Vec::new(),
            key,
        )
        .with_context(|| format!("root {}", active.id))?;
        if parent.not_after() <= now {
            bail!(
                "the active root {} has expired; automatic root rotation is not implemented yet",
                active.id
            );
        }
        return Ok((parent, anchors));
    }
    let (parent, cert) = create_root(config, store, now, "active")?;
    let mut anchors = anchors;
    anchors.push(cert);
    Ok((parent, anchors))
}

/// Creates and persists a new root in `state` (`active`, or `prepared`: in
/// the bundle so that every peer trusts it before anything is signed by it,
/// the first step of a zero-downtime root rotation).
///
/// # Errors
/// Key generation, signing, key files, the store.
pub fn create_root(
    config: &Config,
    store: &Store,
    now: SystemTime,
    state: &str,
) -> anyhow::Result<(SigningAuthority, CertificateDer<'static>)> {
    let td = &config.trust_domain;
    let key = PrivateKey::generate(KeyType::EcdsaP256)?;
    let params = SigningCaParams {
        trust_domain: td.clone(),
        ttl: config.root_ttl,
        backdate: config.backdate,
    };
    let cert = new_root(&params, &key, now)?;
    let root = SigningAuthority::new(td.clone(), cert.clone(), Vec::new(), key)?;
    let id = cert_id(&cert);
    let key_file = save_key(&config.data_dir, &id, root.key())?;
    let (not_before, not_after) = validity(&cert)?;
    store.insert_authority(&AuthorityRow {
        id: id.clone(),
        kind: "root".into(),
        state: state.into(),
        cert_der: cert.to_vec(),
        key_file,
        not_before,
        not_after,
        created_at: unix(now),
    })?;
    tracing::info!(root = %id, state, not_after, "created a root");
    Ok((root, cert))
}

/// The roots to publish: every root that is not retired and not expired.
///
/// # Errors
/// Store errors.
pub fn root_anchors(
    store: &Store,
    now: SystemTime,
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    Ok(store
        .authorities(Some("root"))?
        .iter()
        .filter(|r| r.state != "retired" && r.not_after > unix(now))
        .map(|r| CertificateDer::from(r.cert_der.clone()))
        .collect())
}

fn load_signer(
    config: &Config,
    store: &Store,
    parent: &SigningAuthority,
    now: SystemTime,
) -> anyhow::Result<Option<SigningAuthority>> {
    let Some(row) = store
        .authorities(Some("intermediate"))?
        .into_iter()
        .find(|r| r.state == "active")
    else {
        return Ok(None);
    };
    let parent_id = cert_id(parent.cert());
    if store.meta(&format!("parent_of:{}", row.id))?.as_deref() != Some(parent_id.as_str()) {
        tracing::info!(intermediate = %row.id, "the parent CA changed; a new intermediate is needed");
        return Ok(None);
    }
    let key = load_key(&config.data_dir, &row.key_file)?;
    let signer = SigningAuthority::new(
        config.trust_domain.clone(),
        CertificateDer::from(row.cert_der.clone()),
        parent.served_chain(),
        key,
    )
    .with_context(|| format!("intermediate {}", row.id))?;
    if needs_rotation(&signer, now) {
        tracing::info!(intermediate = %row.id, "the intermediate is past half of its life");
        return Ok(None);
    }
    Ok(Some(signer))
}

/// Whether half of the authority's lifetime has passed.
pub fn needs_rotation(signer: &SigningAuthority, now: SystemTime) -> bool {
    let life = signer
        .not_after()
        .duration_since(signer.not_before())
        .unwrap_or_default();
    now >= signer.not_before() + life / 2
}

/// Creates, self-tests and persists a new active intermediate under `parent`.
///
/// # Errors
/// Key generation, signing, the self-test or the store.
pub fn create_signer(
    config: &Config,
    store: &Store,
    parent: &SigningAuthority,
    anchors: &[CertificateDer<'static>],
    now: SystemTime,
) -> anyhow::Result<SigningAuthority> {
    let key = PrivateKey::generate(KeyType::EcdsaP256)?;
    let params = SigningCaParams {
        trust_domain: config.trust_domain.clone(),
        ttl: config.intermediate_ttl,
        backdate: config.backdate,
    };
    let issued = new_intermediate(&params, &key, parent, now)?;
    let signer = SigningAuthority::new(
        config.trust_domain.clone(),
        issued.der.clone(),
        parent.served_chain(),
        key,
    )?;
    signer
        .self_test(anchors, now)
        .context("the new intermediate failed its self-test")?;
    if signer.not_after() < now + Duration::from_secs(60) {
        bail!("the parent CA expires too soon to create an intermediate");
    }
    let id = cert_id(&issued.der);
    let key_file = save_key(&config.data_dir, &id, signer.key())?;
    store.set_meta(&format!("parent_of:{id}"), &cert_id(parent.cert()))?;
    let (not_before, not_after) = validity(&issued.der)?;
    store.insert_authority(&AuthorityRow {
        id: id.clone(),
        kind: "intermediate".into(),
        state: "active".into(),
        cert_der: issued.der.to_vec(),
        key_file,
        not_before,
        not_after,
        created_at: unix(now),
    })?;
    tracing::info!(intermediate = %id, not_after, "new signing intermediate passed its self-test and is active");
    Ok(signer)
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
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        now >= self.not_before + life / 2
    }
}

/// Loads the active JWT key, or creates one when there is none or it is past
/// half of its life. JWT keys live as long as intermediates.
///
/// # Errors
/// Key files and the store.
pub fn load_or_create_jwt(
    config: &Config,
    store: &Store,
    now: SystemTime,
) -> anyhow::Result<JwtKey> {
    if let Some(row) = store
        .authorities(Some("jwt"))?
        .into_iter()
        .find(|r| r.state == "active")
    {
        let key = load_key(&config.data_dir, &row.key_file)?;
        let loaded = JwtKey {
            key_id: row.id.clone(),
            key,
            not_before: SystemTime::UNIX_EPOCH + Duration::from_secs(row.not_before.max(0) as u64),
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(row.not_after.max(0) as u64),
        };
        if !loaded.needs_rotation(now) {
            return Ok(loaded);
        }
    }
    create_jwt(config, store, now)
}

/// Creates, tests and persists a new active JWT key.
///
/// # Errors
/// Key generation, the self-test, key files and the store.
pub fn create_jwt(config: &Config, store: &Store, now: SystemTime) -> anyhow::Result<JwtKey> {
    let key = PrivateKey::generate(KeyType::EcdsaP256)?;
    let spki = key.public_key_spki();
    let id = cert_id(&spki);
    // Same rule as for X.509 signers: sign and verify a throwaway token first.
    let probe =
        signet_identity::SpiffeId::from_segments(&config.trust_domain, &["signet", "self-test"])?;
    let token = signet_identity::jwt::sign_es256(
        &key,
        &id,
        &probe,
        &["self-test".into()],
        Duration::from_secs(60),
        now,
    )?;
    let mut bundle = signet_identity::TrustBundle::new(config.trust_domain.clone());
    bundle.add_jwt_authority(signet_identity::JwtAuthority::new(id.clone(), &spki)?)?;
    signet_identity::jwt::validate(&token, &bundle, Some("self-test"), now)
        .context("the new JWT key failed its self-test")?;
    let key_file = save_key(&config.data_dir, &id, &key)?;
    let not_after = now + config.intermediate_ttl;
    store.insert_authority(&AuthorityRow {
        id: id.clone(),
        kind: "jwt".into(),
        state: "active".into(),
        cert_der: spki,
        key_file,
        not_before: unix(now),
        not_after: unix(not_after),
        created_at: unix(now),
    })?;
    tracing::info!(kid = %id, "new JWT signing key passed its self-test and is active");
    Ok(JwtKey {
        key_id: id,
        key,
        not_before: SystemTime::UNIX_EPOCH + Duration::from_secs(unix(now) as u64),
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(unix(not_after) as u64),
    })
}

/// The JWT authorities to publish: every JWT key not yet expired.
///
/// # Errors
/// Store errors or an unreadable stored key.
pub fn jwt_authorities(
    store: &Store,
    now: SystemTime,
) -> anyhow::Result<Vec<signet_identity::JwtAuthority>> {
    store
        .authorities(Some("jwt"))?
        .into_iter()
        .filter(|r| r.not_after > unix(now))
        .map(|r| {
            Ok(
                signet_identity::JwtAuthority::new(r.id.clone(), &r.cert_der)?
                    .with_expires_at(r.not_after),
            )
        })
        .collect()
}
