//! Certificates as PEM text: the one encoding every file Signet writes uses
//! (`CERTIFICATE` blocks, LF line endings), so that a bundle, an SVID chain
//! and a node SVID on disk look alike.

/// `chain` (DER certificates) as `CERTIFICATE` blocks in the given order.
#[must_use]
pub fn chain_to_pem<C: AsRef<[u8]>>(chain: &[C]) -> String {
    let blocks: Vec<pem::Pem> = chain
        .iter()
        .map(|der| pem::Pem::new("CERTIFICATE", der.as_ref().to_vec()))
        .collect();
    pem::encode_many_config(
        &blocks,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_keep_their_order_and_use_lf() {
        let text = chain_to_pem(&[b"leaf".to_vec(), b"intermediate".to_vec()]);
        assert!(!text.contains('\r'));
        let blocks = pem::parse_many(&text).unwrap();
        let contents: Vec<&[u8]> = blocks.iter().map(pem::Pem::contents).collect();
        assert_eq!(contents, [&b"leaf"[..], &b"intermediate"[..]]);
        assert!(blocks.iter().all(|b| b.tag() == "CERTIFICATE"));
        assert_eq!(chain_to_pem::<Vec<u8>>(&[]), "");
    }
}
