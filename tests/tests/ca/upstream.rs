//! With `--upstream-ca`, signet-ca signs under a company PKI it did not make:
//! the bundle is the company root and nothing else, and SVIDs chain to it
//! through whatever company intermediates the upstream certificate file holds.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use signet_identity::TrustBundle;
use signet_identity::x509::verify::verify_x509_svid;
use signet_tests::{CaOptions, CaProcess, Purpose, openssl_verify, read_certs};

/// Runs openssl with `args`, panicking with its stderr on failure.
fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary path")
}

/// A self-signed P-256 company root: (cert.pem, key.pem).
fn company_root(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("root.pem");
    let key = dir.join("root.key.pem");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=Company Root",
        "-days",
        "30",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        path_str(&key),
        "-out",
        path_str(&cert),
    ]);
    (cert, key)
}

/// A company issuing CA under the root: (issuing CA + root, PEM; its key).
fn issuing_ca(dir: &Path, root: &Path, root_key: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join("issuing.key.pem");
    let csr = dir.join("issuing.csr");
    let cert = dir.join("issuing.pem");
    let ext = dir.join("issuing.ext");
    std::fs::write(
        &ext,
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=Company Issuing CA",
        "-keyout",
        path_str(&key),
        "-out",
        path_str(&csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        path_str(&csr),
        "-CA",
        path_str(root),
        "-CAkey",
        path_str(root_key),
        "-set_serial",
        "0x1234567890abcdef",
        "-days",
        "20",
        "-extfile",
        path_str(&ext),
        "-out",
        path_str(&cert),
    ]);
    let chain = dir.join("issuing-chain.pem");
    let text = format!(
        "{}{}",
        std::fs::read_to_string(&cert).unwrap(),
        std::fs::read_to_string(root).unwrap()
    );
    std::fs::write(&chain, text).unwrap();
    (chain, key)
}

/// Starts a CA over `cert,key`, mints an SVID and checks it against `root`
/// alone; returns the SVID's chain.
async fn mint_under(cert: &Path, key: &Path, root: &Path) -> Vec<CertificateDer<'static>> {
    let company_root = read_certs(root).unwrap();
    assert_eq!(company_root.len(), 1);
    let ca = CaProcess::start(CaOptions::default().flag(
        "upstream-ca",
        format!("{},{}", cert.display(), key.display()),
    ))
    .await
    .unwrap();
    assert_eq!(
        ca.bundle().unwrap().x509_authorities(),
        company_root.as_slice(),
        "bundle.pem must hold exactly the company root"
    );

    let id = ca.id("/web");
    let svid = ca.mint_cli(&id, "web", &[]).await.unwrap();
    assert_eq!(svid.roots, company_root, "mint's bundle.pem");
    for purpose in [Purpose::SslClient, Purpose::SslServer] {
        let (ok, text) = openssl_verify(purpose, root, &svid.chain).unwrap();
        assert!(
            ok,
            "openssl {purpose:?} refused the SVID against the company root:\n{text}"
        );
    }
    let bundle = TrustBundle::new(ca.trust_domain().clone())
        .with_x509_authorities(company_root)
        .unwrap();
    let verified = verify_x509_svid(&svid.chain, &bundle, SystemTime::now())
        .expect("the SVID verifies against the company root alone");
    assert_eq!(verified.spiffe_id.to_string(), id);
    svid.chain
}

#[tokio::test]
async fn svids_chain_to_the_upstream_company_root() {
    let company = tempfile::tempdir().unwrap();
    let (root, root_key) = company_root(company.path());
    let chain = mint_under(&root, &root_key, &root).await;
    assert_eq!(chain.len(), 2, "leaf and Signet's intermediate");
}

#[tokio::test]
async fn svids_chain_through_an_upstream_issuing_ca() {
    let company = tempfile::tempdir().unwrap();
    let (root, root_key) = company_root(company.path());
    let (issuing_chain, issuing_key) = issuing_ca(company.path(), &root, &root_key);
    let chain = mint_under(&issuing_chain, &issuing_key, &root).await;
    let issuing = read_certs(&issuing_chain).unwrap();
    assert_eq!(
        chain.len(),
        3,
        "leaf, Signet's intermediate, the company issuing CA"
    );
    assert_eq!(
        chain[2], issuing[0],
        "the company issuing CA travels in the chain"
    );
}
