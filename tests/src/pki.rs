//! Certificates on disk, the independent verifiers (openssl, rustls/webpki),
//! and rustls configurations for two SVIDs talking mTLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

/// The rustls provider Signet uses everywhere: ring.
#[must_use]
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `chain` as concatenated PEM `CERTIFICATE` blocks: the identity crate's
/// encoding, the one the binaries write.
pub use signet_identity::x509::chain_to_pem as pem_chain;

/// Writes `chain` to `path` as PEM.
///
/// # Errors
/// When the file cannot be written.
pub fn write_pem_chain(path: &Path, chain: &[CertificateDer<'_>]) -> anyhow::Result<()> {
    std::fs::write(path, pem_chain(chain)).with_context(|| format!("writing {}", path.display()))
}

/// Every certificate in a PEM file, in order.
///
/// # Errors
/// When the file cannot be read or holds a malformed PEM block.
pub fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))
}

/// The private key in a PEM file.
///
/// # Errors
/// When the file cannot be read or holds no key.
pub fn read_private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("reading a key from {}", path.display()))
}

/// What `signet ca mint --out DIR` writes: `svid.pem` (the chain),
/// `svid_key.pem` and `bundle.pem`.
#[derive(Debug)]
pub struct SvidFiles {
    /// The directory.
    pub dir: PathBuf,
    /// `svid.pem`: the leaf, then the intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// `bundle.pem`: the roots.
    pub roots: Vec<CertificateDer<'static>>,
}

impl SvidFiles {
    /// Reads the three files from `dir`.
    ///
    /// # Errors
    /// Missing or malformed files, or an empty chain or bundle.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let files = Self {
            dir: dir.to_owned(),
            chain: read_certs(&dir.join("svid.pem"))?,
            roots: read_certs(&dir.join("bundle.pem"))?,
        };
        if files.chain.is_empty() || files.roots.is_empty() {
            bail!("{} holds an empty chain or bundle", dir.display());
        }
        // Fail early on an unreadable key rather than in the TLS setup.
        files.key()?;
        Ok(files)
    }

    /// `DIR/svid.pem`.
    #[must_use]
    pub fn chain_path(&self) -> PathBuf {
        self.dir.join("svid.pem")
    }

    /// `DIR/svid_key.pem`.
    #[must_use]
    pub fn key_path(&self) -> PathBuf {
        self.dir.join("svid_key.pem")
    }

    /// `DIR/bundle.pem`.
    #[must_use]
    pub fn bundle_path(&self) -> PathBuf {
        self.dir.join("bundle.pem")
    }

    /// The private key.
    ///
    /// # Errors
    /// When `svid_key.pem` cannot be read.
    pub fn key(&self) -> anyhow::Result<PrivateKeyDer<'static>> {
        read_private_key(&self.key_path())
    }

    /// The leaf.
    #[must_use]
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }
}

/// An `openssl verify` purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `-purpose sslclient`: a TLS client certificate.
    SslClient,
    /// `-purpose sslserver`: a TLS server certificate.
    SslServer,
}

impl Purpose {
    fn as_arg(self) -> &'static str {
        match self {
            Self::SslClient => "sslclient",
            Self::SslServer => "sslserver",
        }
    }
}

/// Runs `openssl verify -x509_strict -purpose P -CAfile ROOTS -untrusted
/// INTERMEDIATES LEAF` on `chain` (leaf first): whether it accepted, and
/// what it printed.
///
/// # Errors
/// Only when openssl cannot be run at all.
pub fn openssl_verify(
    purpose: Purpose,
    roots_pem: &Path,
    chain: &[CertificateDer<'_>],
) -> anyhow::Result<(bool, String)> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        bail!("openssl_verify: empty chain");
    };
    let dir = tempfile::tempdir()?;
    let leaf_path = dir.path().join("leaf.pem");
    write_pem_chain(&leaf_path, std::slice::from_ref(leaf))?;
    let mut cmd = std::process::Command::new("openssl");
    cmd.args(["verify", "-x509_strict", "-purpose", purpose.as_arg()])
        .arg("-CAfile")
        .arg(roots_pem);
    if !intermediates.is_empty() {
        let path = dir.path().join("intermediates.pem");
        write_pem_chain(&path, intermediates)?;
        cmd.arg("-untrusted").arg(path);
    }
    let output = cmd
        .arg(&leaf_path)
        .output()
        .context("running openssl (is it installed?)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), text))
}

/// A rustls root store holding `roots`.
///
/// # Errors
/// When a root cannot be parsed as a trust anchor.
pub fn root_store(roots: &[CertificateDer<'_>]) -> anyhow::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone().into_owned())
            .context("adding a trust anchor")?;
    }
    Ok(store)
}

/// Checks `chain` (leaf first) as a TLS client certificate against `roots`
/// at `now`, with rustls' stock `WebPkiClientVerifier`.
///
/// # Errors
/// The verifier's refusal.
pub fn webpki_verify_client(
    roots: &[CertificateDer<'_>],
    chain: &[CertificateDer<'_>],
    now: SystemTime,
) -> anyhow::Result<()> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        bail!("webpki_verify_client: empty chain");
    };
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(root_store(roots)?),
        crypto_provider(),
    )
    .build()?;
    let now = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH)?);
    verifier
        .verify_client_cert(leaf, intermediates, now)
        .context("webpki refused the client certificate")?;
    Ok(())
}

/// A TLS server that presents `chain`/`key` and requires a client
/// certificate chaining to `roots`.
///
/// # Errors
/// rustls configuration errors (e.g. a key that does not match).
pub fn mtls_server_config(
    roots: &[CertificateDer<'_>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(root_store(roots)?),
        crypto_provider(),
    )
    .build()?;
    let config = ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("server certificate and key")?;
    Ok(Arc::new(config))
}

/// A TLS client that trusts `roots` and presents `chain`/`key`.
///
/// # Errors
/// rustls configuration errors.
pub fn mtls_client_config(
    roots: &[CertificateDer<'_>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<ClientConfig>> {
    let config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(root_store(roots)?)
        .with_client_auth_cert(chain, key)
        .context("client certificate and key")?;
    Ok(Arc::new(config))
}
