//! X509-SVIDs from the Workload API: shown, written to files, watched.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context as _, anyhow, bail};
use rustls_pki_types::CertificateDer;
use serde::Serialize;
use signet_identity::PrivateKey;
use signet_proto::workload::{X509svid, X509svidRequest, X509svidResponse};
use zeroize::Zeroizing;

use super::client::{self, Client, request};
use crate::certinfo;
use crate::files::{self, MODE_PUBLIC, MODE_SECRET};
use crate::grpc::status_error;
use crate::output::{self, Format};
use signet_identity::unix_time::unix_seconds;
use signet_identity::x509::chain_to_pem;

const RPC: &str = "FetchX509SVID";

/// One X509-SVID as the Workload API delivered it, split into certificates
/// and checked for the few things that would make its files useless. `Debug`
/// does not print the key.
pub struct Svid {
    spiffe_id: String,
    chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 DER.
    key: Zeroizing<Vec<u8>>,
    bundle: Vec<CertificateDer<'static>>,
    hint: String,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .field("bundle_len", &self.bundle.len())
            .field("hint", &self.hint)
            .finish()
    }
}

impl Svid {
    /// Splits and checks a message: a non-empty chain whose leaf carries the
    /// message's SPIFFE ID, a non-empty bundle, and a key that belongs to the
    /// leaf.
    ///
    /// # Errors
    /// Naming the first thing that is wrong.
    pub fn from_message(message: X509svid) -> anyhow::Result<Self> {
        let X509svid {
            spiffe_id,
            x509_svid,
            x509_svid_key,
            bundle,
            hint,
        } = message;
        let key = Zeroizing::new(x509_svid_key);
        let chain = split_der(&x509_svid).context("x509_svid")?;
        let bundle = split_der(&bundle).context("bundle")?;
        let leaf = chain
            .first()
            .ok_or_else(|| anyhow!("x509_svid holds no certificate"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| anyhow!("x509_svid: leaf is not valid X.509: {e}"))?;
        let leaf_id = certinfo::describe(0, leaf, 0)?.spiffe_id;
        if leaf_id.as_deref() != Some(spiffe_id.as_str()) {
            bail!(
                "the leaf certificate names {} but the message says {spiffe_id}",
                leaf_id.as_deref().unwrap_or("no SPIFFE ID")
            );
        }
        let key_pem = Zeroizing::new(pem::encode(&pem::Pem::new("PRIVATE KEY", key.to_vec())));
        let private = PrivateKey::from_pem(&key_pem).context("x509_svid_key")?;
        if private.public_key_spki() != cert.public_key().raw {
            bail!("x509_svid_key does not belong to the leaf certificate");
        }
        if bundle.is_empty() {
            bail!("the SVID came without a bundle");
        }
        Ok(Self {
            spiffe_id,
            chain,
            key,
            bundle,
            hint,
        })
    }

    /// The chain as PEM, leaf first.
    pub fn chain_pem(&self) -> String {
        chain_to_pem(&self.chain)
    }

    /// The key as PKCS#8 PEM.
    pub fn key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(pem::encode_config(
            &pem::Pem::new("PRIVATE KEY", self.key.to_vec()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        ))
    }

    /// The bundle's CA certificates as PEM.
    pub fn bundle_pem(&self) -> String {
        chain_to_pem(&self.bundle)
    }
}

/// Concatenated DER certificates, as the Workload API sends chains and
/// bundles, one by one.
///
/// # Errors
/// When the bytes are not a sequence of whole certificates.
pub fn split_der(mut bytes: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let mut certs = Vec::new();
    while !bytes.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(bytes)
            .map_err(|e| anyhow!("certificate {} is not valid X.509: {e}", certs.len()))?;
        let (cert, _) = bytes.split_at(bytes.len() - rest.len());
        certs.push(CertificateDer::from(cert.to_vec()));
        bytes = rest;
    }
    Ok(certs)
}

/// What `fetch` shows of one SVID.
#[derive(Debug, Serialize)]
struct SvidView {
    spiffe_id: String,
    serial: String,
    not_before: String,
    not_after: String,
    seconds_left: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    hint: String,
    chain_length: usize,
    bundle_authorities: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    files: Vec<String>,
}

#[derive(Debug, Serialize)]
struct FetchView {
    svids: Vec<SvidView>,
    /// Trust domains (as `spiffe://td`) of the federated bundles.
    federated_bundles: Vec<String>,
}

fn view(svid: &Svid, now: i64) -> anyhow::Result<SvidView> {
    let leaf = svid.chain.first().ok_or_else(|| anyhow!("empty chain"))?;
    let info = certinfo::describe(0, leaf, now)?;
    Ok(SvidView {
        spiffe_id: svid.spiffe_id.clone(),
        serial: info.serial,
        not_before: info.not_before,
        not_after: info.not_after,
        seconds_left: info.seconds_left,
        hint: svid.hint.clone(),
        chain_length: svid.chain.len(),
        bundle_authorities: svid.bundle.len(),
        files: Vec::new(),
    })
}

fn render(fetched: &FetchView) -> String {
    let mut out = String::new();
    for (i, svid) in fetched.svids.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let f = |out: &mut String, label: &str, value: &str| {
            output::field(out, "", label, &output::printable(value));
        };
        f(&mut out, "SPIFFE ID", &svid.spiffe_id);
        f(&mut out, "Serial", &svid.serial);
        let left = if svid.seconds_left >= 0 {
            format!(
                "expires in {}",
                output::approx_duration(std::time::Duration::from_secs(
                    svid.seconds_left.unsigned_abs()
                ))
            )
        } else {
            "expired".to_owned()
        };
        f(&mut out, "Expires", &format!("{} ({left})", svid.not_after));
        if !svid.hint.is_empty() {
            f(&mut out, "Hint", &svid.hint);
        }
        if !svid.files.is_empty() {
            f(&mut out, "Wrote", &svid.files.join(", "));
        }
    }
    if !fetched.federated_bundles.is_empty() {
        let _ = writeln!(
            out,
            "\nFederated bundles: {}",
            output::printable(&fetched.federated_bundles.join(", "))
        );
    }
    out
}

/// The first X509SVIDResponse.
async fn first_response(client: &mut Client) -> anyhow::Result<X509svidResponse> {
    let mut stream = client::call(RPC, client.fetch_x509svid(request(X509svidRequest {}))).await?;
    client::first(RPC, &mut stream).await
}

/// The SVIDs of a response, checked.
fn svids_of(response: X509svidResponse) -> anyhow::Result<(Vec<Svid>, Vec<String>)> {
    if response.svids.is_empty() {
        bail!("the Workload API sent no SVID");
    }
    let svids = response
        .svids
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let id = m.spiffe_id.clone();
            Svid::from_message(m).with_context(|| format!("SVID {i} ({id})"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let federated = response.federated_bundles.into_keys().collect();
    Ok((svids, federated))
}

/// `signet agent svid fetch`.
///
/// # Errors
/// A failed call or an unusable SVID.
pub async fn fetch(client: &mut Client, format: Format) -> anyhow::Result<()> {
    let (svids, federated_bundles) = svids_of(first_response(client).await?)?;
    let now = unix_seconds(SystemTime::now());
    let fetched = FetchView {
        svids: svids
            .iter()
            .map(|s| view(s, now))
            .collect::<anyhow::Result<_>>()?,
        federated_bundles,
    };
    match format {
        Format::Json => output::print_json(&fetched),
        Format::Text => output::print(&render(&fetched)),
    }
}

/// The file names for the default SVID (`None`) or SVID number `index`.
fn file_names(index: Option<usize>) -> [String; 3] {
    match index {
        None => [
            "svid.pem".to_owned(),
            "svid_key.pem".to_owned(),
            "bundle.pem".to_owned(),
        ],
        Some(n) => [
            format!("svid_{n}.pem"),
            format!("svid_{n}_key.pem"),
            format!("bundle_{n}.pem"),
        ],
    }
}

/// Writes one SVID's three files into `dir`; the key with mode 0600, every
/// file through a temporary file and a rename.
fn write_svid(dir: &Path, index: Option<usize>, svid: &Svid) -> anyhow::Result<Vec<String>> {
    let [svid_path, key_path, bundle_path]: [PathBuf; 3] =
        file_names(index).map(|name| dir.join(name));
    let write = |path: &Path, contents: &[u8], mode: u32| {
        files::write_atomic(path, contents, mode)
            .with_context(|| format!("cannot write {}", path.display()))
    };
    // The key before the certificate: a reader that sees the new
    // certificate then finds its key already in place.
    write(&bundle_path, svid.bundle_pem().as_bytes(), MODE_PUBLIC)?;
    write(&key_path, svid.key_pem().as_bytes(), MODE_SECRET)?;
    write(&svid_path, svid.chain_pem().as_bytes(), MODE_PUBLIC)?;
    Ok([svid_path, key_path, bundle_path]
        .iter()
        .map(|p| p.display().to_string())
        .collect())
}

/// `signet agent svid fetch --out DIR [--all]`.
///
/// # Errors
/// A failed call, an unusable SVID, or files that cannot be written.
pub async fn fetch_to_dir(
    client: &mut Client,
    dir: &Path,
    all: bool,
    format: Format,
) -> anyhow::Result<()> {
    // Fail on an unusable directory before asking for anything.
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (svids, federated_bundles) = svids_of(first_response(client).await?)?;
    let now = unix_seconds(SystemTime::now());
    let mut views = Vec::new();
    for (i, svid) in svids.iter().enumerate() {
        let mut v = view(svid, now)?;
        if i == 0 {
            v.files = write_svid(dir, None, svid)?;
        }
        if all {
            v.files.extend(write_svid(dir, Some(i), svid)?);
        }
        if i == 0 || all {
            views.push(v);
        }
    }
    let fetched = FetchView {
        svids: views,
        federated_bundles,
    };
    match format {
        Format::Json => output::print_json(&fetched),
        Format::Text => output::print(&render(&fetched)),
    }
}

#[derive(Debug, Serialize)]
struct WatchSvid {
    spiffe_id: String,
    serial: String,
    not_after: String,
}

#[derive(Debug, Serialize)]
struct WatchEvent {
    at: String,
    svids: Vec<WatchSvid>,
}

/// One line per SVID of an update (text), or one JSON line per update.
fn watch_lines(at: i64, response: &X509svidResponse, format: Format) -> String {
    let svids: Vec<WatchSvid> = response
        .svids
        .iter()
        .map(|m| {
            let leaf = split_der(&m.x509_svid)
                .ok()
                .and_then(|chain| chain.into_iter().next());
            let info = leaf.and_then(|der| certinfo::describe(0, &der, at).ok());
            let (serial, not_after) = info.map_or_else(
                || ("(invalid)".to_owned(), "(invalid)".to_owned()),
                |i| (i.serial, i.not_after),
            );
            WatchSvid {
                spiffe_id: m.spiffe_id.clone(),
                serial,
                not_after,
            }
        })
        .collect();
    let event = WatchEvent {
        at: output::rfc3339(at),
        svids,
    };
    match format {
        Format::Json => {
            let mut line = serde_json::to_string(&event).unwrap_or_default();
            line.push('\n');
            line
        }
        Format::Text => {
            if event.svids.is_empty() {
                return format!("{}  (no SVIDs)\n", event.at);
            }
            event
                .svids
                .iter()
                .map(|s| {
                    format!(
                        "{}  {}  serial {}  not after {}\n",
                        event.at,
                        output::printable(&s.spiffe_id),
                        s.serial,
                        s.not_after
                    )
                })
                .collect()
        }
    }
}

/// `signet agent svid watch`: until Ctrl-C, the end of the stream, or a
/// reader that goes away.
///
/// # Errors
/// A failed call or a stream that fails.
pub async fn watch(client: &mut Client, format: Format) -> anyhow::Result<()> {
    let mut stream = client::call(RPC, client.fetch_x509svid(request(X509svidRequest {}))).await?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            message = stream.message() => match message {
                Ok(Some(response)) => {
                    let now = unix_seconds(SystemTime::now());
                    if !output::print_live(&watch_lines(now, &response, format))? {
                        return Ok(());
                    }
                }
                Ok(None) => {
                    eprintln!("the Workload API ended the stream");
                    return Ok(());
                }
                Err(status) => return Err(status_error(status)).context(RPC),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;
    use std::time::Duration;

    use signet_identity::testing::TestCa;
    use signet_identity::{PrivateKey, SpiffeId, TrustDomain};

    /// A root and a leaf for `id` signed by it, with the leaf's key.
    fn svid_message(id: &str) -> (X509svid, PrivateKey) {
        let id = SpiffeId::parse(id).unwrap();
        let ca = TestCa::new(TrustDomain::new(id.trust_domain().as_str()).unwrap()).unwrap();
        let leaf = ca
            .issue(&id, SystemTime::now(), Duration::from_secs(3600))
            .unwrap();
        let message = X509svid {
            spiffe_id: id.to_string(),
            x509_svid: leaf.chain[0].to_vec(),
            x509_svid_key: leaf.key.pkcs8_der().to_vec(),
            bundle: ca.root().to_vec(),
            hint: String::new(),
        };
        (message, leaf.key)
    }

    #[test]
    fn split_der_takes_concatenated_certificates_apart() {
        let (a, _) = svid_message("spiffe://example.org/a");
        let (b, _) = svid_message("spiffe://example.org/b");
        let joined = [a.x509_svid.clone(), b.x509_svid.clone(), a.bundle.clone()].concat();
        let certs = split_der(&joined).unwrap();
        assert_eq!(certs.len(), 3);
        assert_eq!(certs[0].as_ref(), a.x509_svid.as_slice());
        assert_eq!(certs[1].as_ref(), b.x509_svid.as_slice());
        assert_eq!(certs[2].as_ref(), a.bundle.as_slice());
        assert!(split_der(&[]).unwrap().is_empty());
        let truncated = &joined[..joined.len() - 1];
        let err = split_der(truncated).unwrap_err().to_string();
        assert!(err.contains("certificate 2"), "{err}");
    }

    #[test]
    fn a_consistent_message_is_accepted() {
        let (message, _) = svid_message("spiffe://example.org/web");
        let svid = Svid::from_message(message).unwrap();
        assert_eq!(svid.spiffe_id, "spiffe://example.org/web");
        assert!(svid.key_pem().starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(!format!("{svid:?}").contains("PRIVATE"));
        assert!(format!("{svid:?}").contains("<redacted>"));
    }

    #[test]
    fn inconsistent_messages_are_refused() {
        let (good, _) = svid_message("spiffe://example.org/web");
        let (other, _) = svid_message("spiffe://example.org/other");
        let rows: Vec<(X509svid, &str)> = vec![
            (
                X509svid {
                    spiffe_id: "spiffe://example.org/not-the-leaf".into(),
                    ..good.clone()
                },
                "but the message says",
            ),
            (
                X509svid {
                    x509_svid_key: other.x509_svid_key.clone(),
                    ..good.clone()
                },
                "does not belong",
            ),
            (
                X509svid {
                    x509_svid: Vec::new(),
                    ..good.clone()
                },
                "no certificate",
            ),
            (
                X509svid {
                    bundle: Vec::new(),
                    ..good.clone()
                },
                "without a bundle",
            ),
            (
                X509svid {
                    x509_svid_key: b"junk".to_vec(),
                    ..good.clone()
                },
                "x509_svid_key",
            ),
        ];
        for (message, want) in rows {
            let err = format!("{:#}", Svid::from_message(message).unwrap_err());
            assert!(err.contains(want), "want {want:?} in {err}");
        }
    }

    #[test]
    fn file_names_for_the_default_and_numbered_svids() {
        assert_eq!(file_names(None), ["svid.pem", "svid_key.pem", "bundle.pem"]);
        assert_eq!(
            file_names(Some(2)),
            ["svid_2.pem", "svid_2_key.pem", "bundle_2.pem"]
        );
    }

    #[test]
    fn written_files_read_back_and_the_key_is_private() {
        let dir = std::env::temp_dir().join(format!("signet-cli-svid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (message, leaf_key) = svid_message("spiffe://example.org/web");
        let expected_leaf = message.x509_svid.clone();
        let expected_bundle = message.bundle.clone();
        let svid = Svid::from_message(message).unwrap();
        let written = write_svid(&dir, None, &svid).unwrap();
        assert_eq!(written.len(), 3);
        let chain = pem::parse_many(std::fs::read(dir.join("svid.pem")).unwrap()).unwrap();
        assert_eq!(chain[0].contents(), expected_leaf.as_slice());
        let bundle = pem::parse_many(std::fs::read(dir.join("bundle.pem")).unwrap()).unwrap();
        assert_eq!(bundle[0].contents(), expected_bundle.as_slice());
        let key_text = std::fs::read_to_string(dir.join("svid_key.pem")).unwrap();
        let key = PrivateKey::from_pem(&key_text).unwrap();
        assert_eq!(key.pkcs8_der(), leaf_key.pkcs8_der());
        let mode = std::fs::metadata(dir.join("svid_key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn watch_prints_a_line_per_svid_or_a_json_line_per_update() {
        let (a, _) = svid_message("spiffe://example.org/a");
        let (b, _) = svid_message("spiffe://example.org/b");
        let response = X509svidResponse {
            svids: vec![a, b],
            ..Default::default()
        };
        let text = watch_lines(1_700_000_000, &response, Format::Text);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with("2023-11-14T22:13:20Z  spiffe://example.org/a  serial "),
            "{text}"
        );
        assert!(lines[1].contains("spiffe://example.org/b"), "{text}");
        assert!(lines[1].contains("  not after "), "{text}");

        let json = watch_lines(1_700_000_000, &response, Format::Json);
        assert_eq!(json.lines().count(), 1);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["svids"][1]["spiffe_id"], "spiffe://example.org/b");
        assert_eq!(value["at"], "2023-11-14T22:13:20Z");
    }
}
