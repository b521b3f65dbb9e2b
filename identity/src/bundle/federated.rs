//! The rules a bundle fetched from another trust domain's bundle endpoint
//! must pass before it replaces the last good one (SPIFFE Federation
//! standard): it parses as a SPIFFE bundle, its authorities name no trust
//! domain but the relationship's, it holds an X.509 authority, and its
//! sequence does not go backwards. Transport-free, so that it can be
//! fuzzed and tested on its own.

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{BundleError, TrustBundle};
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// Why a fetched bundle does not replace the last good one.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error("the bundle is not a valid SPIFFE bundle: {0}")]
    Malformed(BundleError),
    #[error("the bundle is for trust domain {found}, not {expected}")]
    WrongTrustDomain { expected: String, found: String },
    #[error("the bundle's sequence {got} is lower than the last good one's ({last})")]
    SequenceBackwards { last: u64, got: u64 },
    #[error("the bundle holds no X.509 authority")]
    NoX509Authority,
}

/// What a fetched bundle means for the relationship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A new last good bundle.
    Replace(TrustBundle),
    /// The same sequence as the last good bundle: nothing changes.
    Unchanged,
}

/// Every X.509 authority that names a trust domain (a SPIFFE URI SAN, as
/// SPIFFE CA certificates carry) must name `bundle`'s.
///
/// # Errors
/// [`UpdateError::WrongTrustDomain`].
pub fn authorities_belong(bundle: &TrustBundle) -> Result<(), UpdateError> {
    let expected = bundle.trust_domain();
    for der in bundle.x509_authorities() {
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            continue;
        };
        let Ok(Some(san)) = cert.subject_alternative_name() else {
            continue;
        };
        for name in &san.value.general_names {
            let GeneralName::URI(uri) = name else {
                continue;
            };
            if !uri.starts_with("spiffe://") {
                continue;
            }
            let found = SpiffeId::parse(uri)
                .map(|id| id.trust_domain().to_string())
                .unwrap_or_else(|_| (*uri).to_owned());
            if found != expected.as_str() {
                return Err(UpdateError::WrongTrustDomain {
                    expected: expected.to_string(),
                    found,
                });
            }
        }
    }
    Ok(())
}

/// Parses `body` (a SPIFFE JWK Set) as the bundle of `trust_domain` and
/// decides what it means after `last`, the last good bundle if any.
///
/// # Errors
/// The first rule broken, as an [`UpdateError`].
pub fn check_update(
    trust_domain: &TrustDomain,
    last: Option<&TrustBundle>,
    body: &[u8],
) -> Result<Update, UpdateError> {
    let bundle =
        TrustBundle::from_jwks(trust_domain.clone(), body).map_err(UpdateError::Malformed)?;
    authorities_belong(&bundle)?;
    if bundle.x509_authorities().is_empty() {
        // An https_spiffe relationship could never authenticate its
        // endpoint again, and workloads would trust nothing of it.
        return Err(UpdateError::NoX509Authority);
    }
    if let Some(last) = last {
        if bundle.sequence() < last.sequence() {
            return Err(UpdateError::SequenceBackwards {
                last: last.sequence(),
                got: bundle.sequence(),
            });
        }
        if bundle.sequence() == last.sequence() {
            return Ok(Update::Unchanged);
        }
    }
    Ok(Update::Replace(bundle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestCa;

    fn td(s: &str) -> TrustDomain {
        TrustDomain::new(s).unwrap()
    }

    fn jwks(domain: &str, seq: u64) -> (TrustBundle, String) {
        let ca = TestCa::new(td(domain)).unwrap();
        // Served under the relationship's name whatever it really is.
        let mut b = TrustBundle::new(td("remote.org"))
            .with_x509_authorities([ca.root().clone()])
            .unwrap();
        b.set_sequence(seq);
        let text = b.to_jwks();
        (b, text)
    }

    #[test]
    fn a_first_bundle_is_taken() {
        let (b, text) = jwks("remote.org", 3);
        let b = b.clone();
        let got = check_update(&td("remote.org"), None, text.as_bytes()).unwrap();
        assert_eq!(got, Update::Replace(b));
    }

    #[test]
    fn the_rules_in_turn() {
        let (last, _) = jwks("remote.org", 5);
        let remote = td("remote.org");
        let (_, older) = jwks("remote.org", 4);
        assert_eq!(
            check_update(&remote, Some(&last), older.as_bytes()),
            Err(UpdateError::SequenceBackwards { last: 5, got: 4 })
        );
        let (_, same) = jwks("remote.org", 5);
        assert_eq!(
            check_update(&remote, Some(&last), same.as_bytes()),
            Ok(Update::Unchanged)
        );
        let (_, other) = jwks("other.org", 9);
        assert_eq!(
            check_update(&remote, Some(&last), other.as_bytes()),
            Err(UpdateError::WrongTrustDomain {
                expected: "remote.org".into(),
                found: "other.org".into()
            })
        );
        for bad in [
            &b"{"[..],
            b"[]",
            b"{\"keys\": 3}",
            b"{\"keys\": [], \"spiffe_sequence\": -1}",
        ] {
            assert!(
                matches!(
                    check_update(&remote, Some(&last), bad),
                    Err(UpdateError::Malformed(_))
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let huge = vec![b' '; super::super::MAX_BUNDLE_LEN + 1];
        assert!(matches!(
            check_update(&remote, Some(&last), &huge),
            Err(UpdateError::Malformed(BundleError::TooLarge { .. }))
        ));
        assert_eq!(
            check_update(&remote, None, b"{\"keys\": [], \"spiffe_sequence\": 9}"),
            Err(UpdateError::NoX509Authority)
        );
    }
}
