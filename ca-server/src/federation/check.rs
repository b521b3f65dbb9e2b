//! The rules a fetched bundle must pass before it replaces the last good
//! one: it parses as a SPIFFE bundle of the relationship's trust domain, its
//! authorities name no other trust domain, and its sequence does not go
//! backwards. A bundle that fails any rule changes nothing.

use signet_identity::{BundleError, SpiffeId, TrustBundle, TrustDomain};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Why a fetch did not produce a new bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("connecting to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("TLS with the bundle endpoint failed: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the endpoint answered with a redirect ({0}); redirects are not followed")]
    Redirect(u16),
    #[error("the endpoint answered with HTTP status {0}")]
    Status(u16),
    #[error("the bundle is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the fetch took longer than {0:?}")]
    Timeout(std::time::Duration),
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
pub enum Outcome {
    /// A new last good bundle.
    Updated(TrustBundle),
    /// The same sequence as the last good bundle: nothing changes.
    Unchanged,
}

/// Every X.509 authority that names a trust domain (a SPIFFE URI SAN, as
/// SPIFFE CA certificates carry) must name `bundle`'s.
///
/// # Errors
/// [`FetchError::WrongTrustDomain`].
pub fn authorities_belong(bundle: &TrustBundle) -> Result<(), FetchError> {
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
                return Err(FetchError::WrongTrustDomain {
                    expected: expected.to_string(),
                    found,
                });
            }
        }
    }
    Ok(())
}

/// Parses `body` as the bundle of `trust_domain` and decides what it means
/// after `last` (the last good bundle, if any).
///
/// # Errors
/// The first rule broken.
pub fn check_update(
    trust_domain: &TrustDomain,
    last: Option<&TrustBundle>,
    body: &[u8],
) -> Result<Outcome, FetchError> {
    let bundle =
        TrustBundle::from_jwks(trust_domain.clone(), body).map_err(FetchError::Malformed)?;
    authorities_belong(&bundle)?;
    if bundle.x509_authorities().is_empty() {
        // An https_spiffe relationship could never authenticate its
        // endpoint again, and workloads would trust nothing of it.
        return Err(FetchError::NoX509Authority);
    }
    if let Some(last) = last {
        if bundle.sequence() < last.sequence() {
            return Err(FetchError::SequenceBackwards {
                last: last.sequence(),
                got: bundle.sequence(),
            });
        }
        if bundle.sequence() == last.sequence() {
            return Ok(Outcome::Unchanged);
        }
    }
    Ok(Outcome::Updated(bundle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use signet_identity::testing::TestCa;

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
        assert_eq!(got, Outcome::Updated(b));
    }

    #[test]
    fn the_rules_in_turn() {
        let (last, _) = jwks("remote.org", 5);
        let remote = td("remote.org");
        let (_, older) = jwks("remote.org", 4);
        assert_eq!(
            check_update(&remote, Some(&last), older.as_bytes()),
            Err(FetchError::SequenceBackwards { last: 5, got: 4 })
        );
        let (_, same) = jwks("remote.org", 5);
        assert_eq!(
            check_update(&remote, Some(&last), same.as_bytes()),
            Ok(Outcome::Unchanged)
        );
        let (_, other) = jwks("other.org", 9);
        assert_eq!(
            check_update(&remote, Some(&last), other.as_bytes()),
            Err(FetchError::WrongTrustDomain {
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
                    Err(FetchError::Malformed(_))
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let huge = vec![b' '; signet_identity::bundle::MAX_BUNDLE_LEN + 1];
        assert!(matches!(
            check_update(&remote, Some(&last), &huge),
            Err(FetchError::Malformed(BundleError::TooLarge { .. }))
        ));
        assert_eq!(
            check_update(&remote, None, b"{\"keys\": [], \"spiffe_sequence\": 9}"),
            Err(FetchError::NoX509Authority)
        );
    }
}
