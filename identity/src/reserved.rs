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

/// The path prefix of node identities: `/signet/node/<name>` for nodes attested with a
/// join token, `/signet/node/<cluster>/<node-uid>` for Kubernetes nodes (k8s_psat).
/// A node's name is the path after this prefix, so a Kubernetes node's name is
/// `<cluster>/<node-uid>`; revocation, ban and eviction by name use that form.
pub const NODE_PATH_PREFIX: &str = "/signet/node/";

/// The SPIFFE ID the CA's serving certificate carries in `trust_domain`.
#[must_use]
pub fn ca_server_id(trust_domain: &TrustDomain) -> SpiffeId {
    // A constant, valid path in a valid trust domain cannot fail to parse;
    // build it from segments so that no error path is needed.
    SpiffeId::from_segments(trust_domain, &["signet", "ca"])
        .unwrap_or_else(|_| trust_domain.to_spiffe_id())
}

/// The SPIFFE ID of the node `name` in `trust_domain`: a single segment, or
/// `<cluster>/<node-uid>` for a Kubernetes node.
///
/// # Errors
/// When `name` is neither a valid path segment nor two of them joined by `/`.
pub fn node_id(trust_domain: &TrustDomain, name: &str) -> Result<SpiffeId, SpiffeIdError> {
    match name.split_once('/') {
        Some((cluster, uid)) => k8s_node_id(trust_domain, cluster, uid),
        None => SpiffeId::from_segments(trust_domain, &["signet", "node", name]),
    }
}

/// The SPIFFE ID of Kubernetes node `node_uid` of `cluster`:
/// `spiffe://<td>/signet/node/<cluster>/<node-uid>`.
///
/// # Errors
/// When `cluster` or `node_uid` is not a valid path segment.
pub fn k8s_node_id(
    trust_domain: &TrustDomain,
    cluster: &str,
    node_uid: &str,
) -> Result<SpiffeId, SpiffeIdError> {
    SpiffeId::from_segments(trust_domain, &["signet", "node", cluster, node_uid])
}

/// The node name of `id` when it is a node identity of `trust_domain`.
#[must_use]
pub fn node_name<'a>(id: &'a SpiffeId, trust_domain: &TrustDomain) -> Option<&'a str> {
    if !id.is_member_of(trust_domain) {
        return None;
    }
    id.path()
        .strip_prefix(NODE_PATH_PREFIX)
        .filter(|n| !n.is_empty() && n.matches('/').count() <= 1)
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
        assert!(node_id(&td(), "a/b/c").is_err());
        assert!(node_id(&td(), "/b").is_err());
        assert!(node_id(&td(), "a/").is_err());
        // A Kubernetes node: cluster and node UID; its name is both.
        let k = k8s_node_id(&td(), "prod", "0a1b-2c").unwrap();
        assert_eq!(k.as_str(), "spiffe://example.org/signet/node/prod/0a1b-2c");
        assert_eq!(node_name(&k, &td()), Some("prod/0a1b-2c"));
        assert_eq!(node_id(&td(), "prod/0a1b-2c").unwrap(), k);
        let deeper = SpiffeId::from_path(&td(), "/signet/node/a/b/c").unwrap();
        assert_eq!(node_name(&deeper, &td()), None);
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
