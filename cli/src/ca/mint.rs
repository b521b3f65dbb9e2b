//! `signet ca mint`: an X509-SVID for a key generated here, written to a
//! directory with its key and the bundle.

use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context as _, anyhow, bail};
use serde::Serialize;
use signet_identity::{KeyType, PrivateKey};
use signet_proto::ca::v1 as pb;
use signet_proto::ca::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use super::MintArgs;
use super::bundle::trust_bundle;
use crate::files::{self, MODE_PUBLIC, MODE_SECRET};
use crate::grpc::status_error;
use crate::output::{self, Format};
use crate::ttl::Ttl;
use signet_identity::unix_time::unix_seconds;
use signet_identity::x509::chain_to_pem;

const SVID_FILE: &str = "svid.pem";
const KEY_FILE: &str = "svid_key.pem";
const BUNDLE_FILE: &str = "bundle.pem";

#[derive(Debug, Serialize)]
struct MintView {
    spiffe_id: String,
    serial: String,
    expires_at: String,
    svid_file: String,
    key_file: String,
    bundle_file: String,
}

pub(super) async fn run(
    client: &mut AdminClient<Channel>,
    args: MintArgs,
    format: Format,
) -> anyhow::Result<()> {
    // Fail on an unusable directory before asking the CA for anything.
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let key = PrivateKey::generate(KeyType::EcdsaP256).context("cannot generate a key")?;
    let csr = key.csr_der().context("cannot build the CSR")?;
    let request = pb::MintX509SvidRequest {
        spiffe_id: args.spiffe_id.to_string(),
        csr,
        ttl_seconds: args.ttl.map_or(0, Ttl::seconds),
        dns_names: args.dns_names,
    };
    let response = client
        .mint_x509_svid(request)
        .await
        .map_err(status_error)?
        .into_inner();
    let svid = response
        .svid
        .ok_or_else(|| anyhow!("server sent no SVID"))?;
    let bundle = trust_bundle(
        response
            .bundle
            .as_ref()
            .ok_or_else(|| anyhow!("server sent no bundle"))?,
    )?;
    check_leaf_key(&svid, &key)?;

    let paths = [SVID_FILE, KEY_FILE, BUNDLE_FILE].map(|name| args.out.join(name));
    let [svid_path, key_path, bundle_path] = &paths;
    write(
        svid_path,
        chain_to_pem(&svid.cert_chain).as_bytes(),
        MODE_PUBLIC,
    )?;
    write(key_path, key.to_pem().as_bytes(), MODE_SECRET)?;
    write(bundle_path, bundle.to_pem().as_bytes(), MODE_PUBLIC)?;

    let now = unix_seconds(SystemTime::now());
    let view = MintView {
        spiffe_id: svid.spiffe_id,
        serial: svid.serial,
        expires_at: output::rfc3339(svid.expires_at),
        svid_file: svid_path.display().to_string(),
        key_file: key_path.display().to_string(),
        bundle_file: bundle_path.display().to_string(),
    };
    match format {
        Format::Json => output::print_json(&view),
        Format::Text => {
            let mut out = String::new();
            let f = |out: &mut String, label: &str, value: &str| {
                output::field(out, "", label, &output::printable(value));
            };
            f(&mut out, "SPIFFE ID", &view.spiffe_id);
            f(&mut out, "Serial", &view.serial);
            let left = output::time_left(svid.expires_at, now);
            f(
                &mut out,
                "Expires",
                &format!("{} ({left})", view.expires_at),
            );
            let _ = writeln!(
                out,
                "Wrote {}, {}, {}",
                view.svid_file, view.key_file, view.bundle_file
            );
            output::print(&out)
        }
    }
}

fn write(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    files::write_atomic(path, contents, mode)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The leaf must certify the key we hold; anything else would leave a key
/// file and a certificate that do not belong together.
fn check_leaf_key(svid: &pb::X509Svid, key: &PrivateKey) -> anyhow::Result<()> {
    let leaf = svid
        .cert_chain
        .first()
        .ok_or_else(|| anyhow!("server sent an empty certificate chain"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| anyhow!("server sent an invalid certificate: {e}"))?;
    if cert.public_key().raw != key.public_key_spki().as_slice() {
        bail!("server sent a certificate for a different public key than the CSR's");
    }
    Ok(())
}
