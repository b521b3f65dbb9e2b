//! SPIFFE federation (SPIFFE Federation standard): this trust domain's
//! bundle served to others (`endpoint`), and relationships with other trust
//! domains whose bundles are fetched (`fetch`, `verify`), checked (`check`),
//! persisted (`store`) and kept on a `watch` for the node API (`registry`,
//! one poller task per relationship).
//!
//! Relationships are one-way and bundles of different trust domains are
//! never merged: each federated bundle names its own trust domain and only
//! ever authenticates identities of that trust domain.

pub mod api;
pub mod check;
pub mod config;
pub mod endpoint;
pub mod fetch;
pub mod metrics;
pub mod registry;
pub mod store;
pub mod verify;

use std::path::PathBuf;

use signet_identity::{BundleError, SpiffeId, TrustBundle, TrustDomain};

pub use registry::{Federations, View};

use crate::ca::CaError;

/// Most relationships a CA keeps (each costs a task and a fetch per
/// refresh hint).
pub const MAX_RELATIONSHIPS: usize = 256;

/// Longest bundle endpoint URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Why a relationship or the bundle endpoint cannot be set up, or an admin
/// request about relationships is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FederationError {
    #[error("invalid trust domain {value:?}: {source}")]
    TrustDomain {
        value: String,
        #[source]
        source: signet_identity::SpiffeIdError,
    },
    #[error("{0} is this CA's own trust domain; federation is with other trust domains")]
    OwnTrustDomain(TrustDomain),
    #[error("invalid bundle endpoint URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("unknown profile {0:?}: use https_spiffe or https_web")]
    Profile(String),
    #[error("invalid endpoint SPIFFE ID {value:?}: {reason}")]
    EndpointId { value: String, reason: String },
    #[error("{0}")]
    ProfileOption(String),
    #[error("the initial bundle of {trust_domain} is not usable: {source}")]
    InitialBundle {
        trust_domain: TrustDomain,
        #[source]
        source: BundleError,
    },
    #[error(
        "the initial bundle of {0} holds no X.509 authority, so it cannot authenticate the endpoint"
    )]
    InitialBundleEmpty(TrustDomain),
    #[error("web roots: {0}")]
    WebRoots(String),
    #[error("reading {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bundle endpoint: {0}")]
    Endpoint(String),
    #[error("a relationship with {0} exists already")]
    AlreadyExists(TrustDomain),
    #[error("no relationship with {0}")]
    NotFound(String),
    #[error("the relationship with {0} comes from the configuration file; remove it there")]
    FromConfig(TrustDomain),
    #[error("at most {MAX_RELATIONSHIPS} relationships")]
    TooMany,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("federation stopped")]
    Stopped,
    /// The CA refused (e.g. the audit log cannot be written).
    #[error(transparent)]
    Ca(CaError),
}

impl From<FederationError> for CaError {
    fn from(e: FederationError) -> Self {
        use FederationError as F;
        let msg = e.to_string();
        match e {
            F::NotFound(_) => CaError::NotFound(msg),
            F::AlreadyExists(_) => CaError::AlreadyExists(msg),
            F::FromConfig(_) | F::TooMany => CaError::FailedPrecondition(msg),
            F::Store(_) | F::ReadFile { .. } | F::Endpoint(_) => CaError::Internal(msg),
            F::Stopped => CaError::Unavailable(msg),
            F::Ca(e) => e,
            _ => CaError::InvalidArgument(msg),
        }
    }
}

/// How a bundle endpoint authenticates itself (Federation standard, 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileKind {
    /// A Web PKI server certificate, checked with the hostname.
    HttpsWeb,
    /// An X509-SVID with a configured SPIFFE ID, checked against the
    /// remote trust domain's own bundle.
    HttpsSpiffe,
}

impl ProfileKind {
    /// The name used in configuration files and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HttpsWeb => "https_web",
            Self::HttpsSpiffe => "https_spiffe",
        }
    }

    /// Reads [`ProfileKind::as_str`]'s form.
    ///
    /// # Errors
    /// [`FederationError::Profile`].
    pub fn parse(s: &str) -> Result<Self, FederationError> {
        match s {
            "https_web" => Ok(Self::HttpsWeb),
            "https_spiffe" => Ok(Self::HttpsSpiffe),
            other => Err(FederationError::Profile(other.to_owned())),
        }
    }
}

/// The profile of a relationship with what it needs.
#[derive(Clone, PartialEq, Eq)]
pub enum Profile {
    HttpsWeb {
        /// PEM roots to use instead of the built-in Web PKI roots.
        roots_pem: Option<Vec<u8>>,
    },
    HttpsSpiffe {
        /// The SPIFFE ID the endpoint must present.
        endpoint_id: SpiffeId,
        /// The out-of-band bundle that authenticates the first fetch.
        initial: TrustBundle,
    },
}

impl Profile {
    pub fn kind(&self) -> ProfileKind {
        match self {
            Self::HttpsWeb { .. } => ProfileKind::HttpsWeb,
            Self::HttpsSpiffe { .. } => ProfileKind::HttpsSpiffe,
        }
    }
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HttpsWeb { roots_pem } => f
                .debug_struct("HttpsWeb")
                .field("custom_roots", &roots_pem.is_some())
                .finish(),
            Self::HttpsSpiffe {
                endpoint_id,
                initial,
            } => f
                .debug_struct("HttpsSpiffe")
                .field("endpoint_id", &endpoint_id.as_str())
                .field("initial_sequence", &initial.sequence())
                .finish(),
        }
    }
}

/// A checked `https://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl {
    text: String,
    host: String,
    port: u16,
    path: String,
}

impl EndpointUrl {
    /// Checks `url`: https, a host, no user info, at most [`MAX_URL_LEN`].
    ///
    /// # Errors
    /// [`FederationError::Url`].
    pub fn parse(url: &str) -> Result<Self, FederationError> {
        let bad = |reason: &str| FederationError::Url {
            url: url.chars().take(200).collect(),
            reason: reason.to_owned(),
        };
        if url.len() > MAX_URL_LEN {
            return Err(bad("too long"));
        }
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("the scheme must be https"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user information is not allowed"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let path = if path.is_empty() {
            "/".to_owned()
        } else {
            path
        };
        Ok(Self {
            text: url.to_owned(),
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(443),
            path,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
    pub fn host(&self) -> &str {
        &self.host
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    /// Path and query, at least `/`.
    pub fn path(&self) -> &str {
        &self.path
    }
    /// The host as written in a socket address or `Host` header (IPv6 in
    /// brackets).
    pub fn host_header_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
    /// The `Host` header value.
    pub fn host_header(&self) -> String {
        let host = self.host_header_host();
        if self.port == 443 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// A federation relationship: whose bundle to fetch, where, and how the
/// endpoint is authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relationship {
    pub trust_domain: TrustDomain,
    pub url: EndpointUrl,
    pub profile: Profile,
    /// From the configuration file (cannot be deleted through the API).
    pub from_config: bool,
}

/// A relationship as asked for, before it is checked.
#[derive(Debug, Clone, Default)]
pub struct NewRelationship {
    pub trust_domain: String,
    pub url: String,
    /// `https_spiffe` or `https_web`.
    pub profile: String,
    pub endpoint_spiffe_id: String,
    /// https_spiffe: SPIFFE JWKS or PEM.
    pub initial_bundle: Vec<u8>,
    /// https_web: optional PEM roots.
    pub web_roots_pem: Vec<u8>,
}

impl NewRelationship {
    /// Checks every rule and builds the relationship.
    ///
    /// # Errors
    /// The first rule broken, as a [`FederationError`].
    pub fn check(
        &self,
        own: &TrustDomain,
        from_config: bool,
    ) -> Result<Relationship, FederationError> {
        let trust_domain = TrustDomain::new(&self.trust_domain).map_err(|source| {
            FederationError::TrustDomain {
                value: self.trust_domain.clone(),
                source,
            }
        })?;
        if &trust_domain == own {
            return Err(FederationError::OwnTrustDomain(trust_domain));
        }
        let url = EndpointUrl::parse(&self.url)?;
        let profile = match ProfileKind::parse(&self.profile)? {
            ProfileKind::HttpsWeb => {
                if !self.endpoint_spiffe_id.is_empty() || !self.initial_bundle.is_empty() {
                    return Err(FederationError::ProfileOption(
                        "https_web takes no endpoint SPIFFE ID and no initial bundle (those are for https_spiffe)".into(),
                    ));
                }
                let roots_pem = if self.web_roots_pem.is_empty() {
                    None
                } else {
                    verify::web_roots(Some(&self.web_roots_pem))?;
                    Some(self.web_roots_pem.clone())
                };
                Profile::HttpsWeb { roots_pem }
            }
            ProfileKind::HttpsSpiffe => {
                if !self.web_roots_pem.is_empty() {
                    return Err(FederationError::ProfileOption(
                        "https_spiffe takes no web roots: the remote trust domain's bundle authenticates its endpoint".into(),
                    ));
                }
                let endpoint_id = SpiffeId::parse(&self.endpoint_spiffe_id).map_err(|e| {
                    FederationError::EndpointId {
                        value: self.endpoint_spiffe_id.clone(),
                        reason: e.to_string(),
                    }
                })?;
                // Only the remote trust domain's own bundle is known here, so
                // only an endpoint of that trust domain can be authenticated.
                if !endpoint_id.is_member_of(&trust_domain) {
                    return Err(FederationError::EndpointId {
                        value: self.endpoint_spiffe_id.clone(),
                        reason: format!("must be in trust domain {trust_domain}"),
                    });
                }
                if self.initial_bundle.is_empty() {
                    return Err(FederationError::ProfileOption(
                        "https_spiffe needs the remote trust domain's bundle obtained out of band (initial bundle / bundle_file)".into(),
                    ));
                }
                let initial = TrustBundle::parse(trust_domain.clone(), &self.initial_bundle)
                    .map_err(|source| FederationError::InitialBundle {
                        trust_domain: trust_domain.clone(),
                        source,
                    })?;
                signet_identity::bundle::federated::authorities_belong(&initial)
                    .map_err(|e| FederationError::ProfileOption(format!("initial bundle: {e}")))?;
                if initial.x509_authorities().is_empty() {
                    return Err(FederationError::InitialBundleEmpty(trust_domain));
                }
                Profile::HttpsSpiffe {
                    endpoint_id,
                    initial,
                }
            }
        };
        Ok(Relationship {
            trust_domain,
            url,
            profile,
            from_config,
        })
    }
}

#[cfg(test)]
mod tests;
