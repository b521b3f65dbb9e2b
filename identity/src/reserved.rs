//! Signet's own identities inside a trust domain.
//!
//! Every SPIFFE ID whose path starts with [`RESERVED_PATH_PREFIX`] belongs to
//! Signet itself: nodes (`/signet/node/<name>`) and the CA's serving
//! certificate (`/signet/ca`). No registration entry and no minted SVID may
//! claim one, so that a workload SVID can never pass for a node or for the CA.

use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

/// The path prefix reserved for Signet's own identities.
pub const RESERVED_PATH_PREFIX: &str = "/signet/";

/// The path of the CA's serving identity, which agents require of the CA
/// after bootstrap.
pub const CA_SERVER_PATH: &str = "/signet/ca";

/// The path prefix of node identities (`/signet/node/<name>`).
pub const NODE_PATH_PREFIX: &str = "/signet/node/";

/// The SPIFFE ID the CA's serving certificate carries in `trust_domain`.
#[must_use]
pub fn ca_server_id(trust_domain: &TrustDomain) -> SpiffeId {
    // A constant, valid path in a valid trust domain cannot fail to parse;
    // build it from segments so that no error path is needed.
    SpiffeId::from_segments(trust_domain, &["signet", "ca"])
        .unwrap_or_else(|_| trust_domain.to_spiffe_id())
}

/// The SPIFFE ID of the node `name` in `trust_domain`.
///
/// # Errors
/// When `name` is not a valid single path segment.
pub fn node_id(trust_domain: &TrustDomain, name: &str) -> Result<SpiffeId, SpiffeIdError> {
    SpiffeId::from_segments(trust_domain, &["signet", "node", name])
}

/// The node name of `id` when it is a node identity of `trust_domain`.
#[must_use]
pub fn node_name<'a>(id: &'a SpiffeId, trust_domain: &TrustDomain) -> Option<&'a str> {
    if !id.is_member_of(trust_domain) {
        return None;
    }
    id.path()
        .strip_prefix(NODE_PATH_PREFIX)
        .filter(|n| !n.is_empty() && !n.contains('/'))
}

/// Whether `id` lies in the reserved part of its trust domain's namespace.
#[must_use]
pub fn is_reserved(id: &SpiffeId) -> bool {
    id.path() == RESERVED_PATH_PREFIX.trim_end_matches('/')
        || id.path().starts_with(RESERVED_PATH_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    #[test]
    fn the_ca_id_is_reserved_and_not_a_node() {
        let ca = ca_server_id(&td());
        assert_eq!(ca.as_str(), "spiffe://example.org/signet/ca");
        assert!(is_reserved(&ca));
        assert_eq!(node_name(&ca, &td()), None);
    }

    #[test]
    fn node_ids_round_trip() {
        let id = node_id(&td(), "n1").unwrap();
        assert_eq!(id.as_str(), "spiffe://example.org/signet/node/n1");
        assert_eq!(node_name(&id, &td()), Some("n1"));
        let other = TrustDomain::new("other.org").unwrap();
        assert_eq!(node_name(&id, &other), None);
        assert!(node_id(&td(), "a/b").is_err());
    }

    #[test]
    fn reserved_paths() {
        for (path, reserved) in [
            ("/signet", true),
            ("/signet/x", true),
            ("/signetx", false),
            ("/web/signet", false),
        ] {
            let id = SpiffeId::from_path(&td(), path).unwrap();
            assert_eq!(is_reserved(&id), reserved, "{path}");
        }
    }
}
