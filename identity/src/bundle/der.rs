//! Just enough DER to write a SubjectPublicKeyInfo (X.690 section 8 and 10).

const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const NULL: u8 = 0x05;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;

fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let len = contents.len();
    let mut out = Vec::with_capacity(len + 10);
    out.push(tag);
    match u8::try_from(len) {
        Ok(short) if short < 0x80 => out.push(short),
        _ => {
            let bytes = len.to_be_bytes();
            let first = bytes.iter().position(|b| *b != 0).unwrap_or(0);
            let significant = &bytes[first..];
            out.push(0x80 | significant.len() as u8);
            out.extend_from_slice(significant);
        }
    }
    out.extend_from_slice(contents);
    out
}

pub(super) fn sequence(contents: &[u8]) -> Vec<u8> {
    tlv(SEQUENCE, contents)
}

pub(super) fn oid(contents: &[u8]) -> Vec<u8> {
    tlv(OID, contents)
}

pub(super) fn null() -> Vec<u8> {
    tlv(NULL, &[])
}

/// A bit string of whole bytes.
pub(super) fn bit_string(bytes: &[u8]) -> Vec<u8> {
    tlv(BIT_STRING, &[&[0][..], bytes].concat())
}

/// A non-negative INTEGER from its magnitude without leading zeros.
pub(super) fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    // A set top bit would read as negative, so a zero byte goes first.
    let pad = magnitude.first().is_none_or(|b| b & 0x80 != 0);
    let contents = if pad {
        [&[0][..], magnitude].concat()
    } else {
        magnitude.to_vec()
    };
    tlv(INTEGER, &contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_use_the_long_form_past_127() {
        assert_eq!(sequence(&[]), [0x30, 0x00]);
        assert_eq!(sequence(&[7; 127])[..2], [0x30, 0x7f]);
        assert_eq!(sequence(&[7; 128])[..3], [0x30, 0x81, 0x80]);
        assert_eq!(sequence(&[7; 256])[..4], [0x30, 0x82, 0x01, 0x00]);
        assert_eq!(unsigned_integer(&[0x7f]), [0x02, 0x01, 0x7f]);
        assert_eq!(unsigned_integer(&[0x80]), [0x02, 0x02, 0x00, 0x80]);
    }
}
