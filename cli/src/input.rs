//! Reading certificates and bundles from a file or stdin in whichever
//! encoding they come: PEM (one or many blocks), a single DER certificate, or
//! a SPIFFE bundle (JWK Set JSON).

use std::io::Read;
use std::path::Path;

use anyhow::{Context as _, bail};
use rustls_pki_types::CertificateDer;

/// The most we read from one input. Certificate chains and bundles are a few
/// kilobytes; this only stops `signet inspect /dev/zero` from eating memory.
const MAX_INPUT_LEN: u64 = 4 * 1024 * 1024;

const PEM_BEGIN: &[u8] = b"-----BEGIN ";

/// The encoding of an input, decided by looking at its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// One or more `-----BEGIN ...-----` blocks.
    Pem,
    /// A single DER certificate (an ASN.1 SEQUENCE).
    Der,
    /// A SPIFFE bundle: a JSON object.
    Jwks,
}

/// Decides how `bytes` are encoded, or `None` when they look like none of the
/// three. JSON is recognised by its opening brace, PEM by a BEGIN line
/// anywhere (text before the first block is allowed), DER by the SEQUENCE tag.
pub fn sniff(bytes: &[u8]) -> Option<Encoding> {
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let trimmed = text.trim_ascii_start();
    if trimmed.starts_with(b"{") {
        Some(Encoding::Jwks)
    } else if contains(text, PEM_BEGIN) {
        Some(Encoding::Pem)
    } else if bytes.first() == Some(&0x30) {
        Some(Encoding::Der)
    } else {
        None
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Reads the whole of `path`, or stdin when `path` is `-`.
///
/// # Errors
/// When the input cannot be read, is empty, or is larger than 4 MiB.
pub fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    let (name, reader): (String, Box<dyn Read>) = if path == Path::new("-") {
        ("stdin".to_owned(), Box::new(std::io::stdin().lock()))
    } else {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        (path.display().to_string(), Box::new(file))
    };
    let mut bytes = Vec::new();
    reader
        .take(MAX_INPUT_LEN + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {name}"))?;
    if bytes.len() as u64 > MAX_INPUT_LEN {
        bail!(
            "{name} is larger than {} MiB",
            MAX_INPUT_LEN / (1024 * 1024)
        );
    }
    if bytes.trim_ascii().is_empty() {
        bail!("{name} is empty");
    }
    Ok(bytes)
}

/// Certificates from PEM `CERTIFICATE` blocks or a single DER certificate, in
/// the order they appear, with the labels of any other PEM blocks (a private
/// key next to a chain, say), which are skipped.
///
/// # Errors
/// For JSON input, broken PEM, unknown encodings, or when no certificate is
/// found.
pub fn certificates(bytes: &[u8]) -> anyhow::Result<(Vec<CertificateDer<'static>>, Vec<String>)> {
    match sniff(bytes) {
        Some(Encoding::Der) => Ok((vec![CertificateDer::from(bytes.to_vec())], Vec::new())),
        Some(Encoding::Pem) => pem_certificates(bytes),
        Some(Encoding::Jwks) => bail!("expected certificates, found a JSON bundle"),
        None => bail!("input is not PEM, DER or a SPIFFE bundle (JSON)"),
    }
}

fn pem_certificates(bytes: &[u8]) -> anyhow::Result<(Vec<CertificateDer<'static>>, Vec<String>)> {
    let blocks = pem::parse_many(bytes).context("input is not valid PEM")?;
    // The PEM parser stops silently at a block with no END line; a truncated
    // chain must not pass for a shorter one.
    let begins = bytes
        .windows(PEM_BEGIN.len())
        .filter(|w| *w == PEM_BEGIN)
        .count();
    if begins != blocks.len() {
        bail!("input is not valid PEM: a block has no END line");
    }
    let mut certs = Vec::new();
    let mut skipped = Vec::new();
    for block in blocks {
        if block.tag() == "CERTIFICATE" {
            certs.push(CertificateDer::from(block.into_contents()));
        } else {
            skipped.push(block.tag().chars().take(64).collect());
        }
    }
    if certs.is_empty() {
        bail!("input holds no CERTIFICATE PEM block");
    }
    Ok((certs, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_of(label: &str, der: &[u8]) -> String {
        pem::encode(&pem::Pem::new(label, der.to_vec()))
    }

    #[test]
    fn sniff_table() {
        let pem = pem_of("CERTIFICATE", &[0x30, 0x03, 0x02, 0x01, 0x01]);
        let rows: Vec<(Vec<u8>, Option<Encoding>)> = vec![
            (b"{\"keys\":[]}".to_vec(), Some(Encoding::Jwks)),
            (b"  \n\t{ }".to_vec(), Some(Encoding::Jwks)),
            (b"\xEF\xBB\xBF{}".to_vec(), Some(Encoding::Jwks)),
            (pem.clone().into_bytes(), Some(Encoding::Pem)),
            (
                format!("subject=CN x\n{pem}").into_bytes(),
                Some(Encoding::Pem),
            ),
            (format!("\r\n{pem}").into_bytes(), Some(Encoding::Pem)),
            (vec![0x30, 0x82, 0x01, 0x00], Some(Encoding::Der)),
            (b"hello".to_vec(), None),
            (b"[1,2]".to_vec(), None),
            (vec![0x31, 0x00], None),
            (Vec::new(), None),
        ];
        for (input, want) in rows {
            assert_eq!(sniff(&input), want, "{:?}", String::from_utf8_lossy(&input));
        }
    }

    #[test]
    fn certificates_keeps_order_and_reports_skipped_blocks() {
        let input = format!(
            "{}{}{}",
            pem_of("CERTIFICATE", b"first"),
            pem_of("PRIVATE KEY", b"secret"),
            pem_of("CERTIFICATE", b"second"),
        );
        let (certs, skipped) = certificates(input.as_bytes()).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].as_ref(), b"first");
        assert_eq!(certs[1].as_ref(), b"second");
        assert_eq!(skipped, ["PRIVATE KEY"]);
    }

    #[test]
    fn certificates_takes_der_whole() {
        let der = [0x30, 0x03, 0x02, 0x01, 0x01];
        let (certs, skipped) = certificates(&der).unwrap();
        assert_eq!(certs, [CertificateDer::from(der.to_vec())]);
        assert!(skipped.is_empty());
    }

    #[test]
    fn certificates_rejects_what_is_not_a_chain() {
        let truncated = pem_of("CERTIFICATE", b"abc").replace("-----END CERTIFICATE-----", "");
        let rows: Vec<(Vec<u8>, &str)> = vec![
            (b"{\"keys\":[]}".to_vec(), "JSON bundle"),
            (b"hello".to_vec(), "not PEM, DER"),
            (pem_of("PRIVATE KEY", b"k").into_bytes(), "no CERTIFICATE"),
            (truncated.into_bytes(), "not valid PEM"),
        ];
        for (input, want) in rows {
            let err = certificates(&input).unwrap_err();
            assert!(format!("{err:#}").contains(want), "{err:#}");
        }
    }

    #[test]
    fn read_rejects_empty_files() {
        let dir = std::env::temp_dir().join(format!("signet-cli-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("empty.pem");
        std::fs::write(&path, "\n \n").unwrap();
        let err = read(&path).unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        let missing = read(&dir.join("missing.pem")).unwrap_err();
        assert!(
            format!("{missing:#}").contains("cannot read"),
            "{missing:#}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
