//! What each SDS resource name means for one caller, and the Envoy `Secret`
//! it resolves to. The names are the ones Envoy configs written for Istio
//! (`default`, `ROOTCA`) and SPIRE (`default`, `ROOTCA`, `ALL`, SPIFFE IDs,
//! trust domains) already use, so those configs work unchanged.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::Duration;
use std::time::SystemTime;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::{DataSource, TypedExtensionConfig};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
    spiffe_cert_validator_config,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message as _;
use ring::digest;
use rustls_pki_types::CertificateDer;
use signet_identity::x509::{SigningCaParams, new_root};
use signet_identity::{KeyType, PrivateKey, SpiffeId, TrustBundle, TrustDomain};
use tonic::Status;

use crate::state::{Selector, Snapshot, Svid};

/// The type of every resource this server sends.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// The caller's default (first) X.509-SVID, as a `tls_certificate`.
pub const DEFAULT_SVID: &str = "default";
/// The caller's own trust domain bundle, as a plain `trusted_ca`.
pub const ROOT_CA: &str = "ROOTCA";
/// Every bundle the agent holds (own and federated), for Envoy's SPIFFE
/// certificate validator.
pub const ALL_BUNDLES: &str = "ALL";
/// Envoy's name for its SPIFFE certificate validator extension.
pub const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";
/// The type of the SPIFFE certificate validator's configuration.
pub const SPIFFE_VALIDATOR_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig";

const PEM_CERTIFICATE: &str = "CERTIFICATE";
const PEM_CRL: &str = "X509 CRL";

/// Most resource names one request (or, for the incremental protocol, one
/// stream's subscription) may hold. Envoy asks for one name per stream; a
/// generous bound keeps a local caller from making the agent resolve and
/// log without limit.
pub const MAX_RESOURCE_NAMES: usize = 64;
/// Longest resource name, in bytes: a SPIFFE ID's own limit.
pub const MAX_RESOURCE_NAME_LEN: usize = 2048;

/// Refuses more than [`MAX_RESOURCE_NAMES`] names, or a name longer than
/// [`MAX_RESOURCE_NAME_LEN`], before any of them is looked at.
pub(crate) fn check_names<S: AsRef<str>>(names: &[S], already: usize) -> Result<(), Status> {
    if names.len().saturating_add(already) > MAX_RESOURCE_NAMES {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_RESOURCE_NAMES} resource names may be requested"
        )));
    }
    if names
        .iter()
        .any(|n| n.as_ref().len() > MAX_RESOURCE_NAME_LEN)
    {
        return Err(Status::invalid_argument(format!(
            "a resource name may be at most {MAX_RESOURCE_NAME_LEN} bytes long"
        )));
    }
    Ok(())
}

/// What a requested resource name refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Name {
    DefaultSvid,
    RootCa,
    AllBundles,
    /// `example.org` or `spiffe://example.org`, as SPIRE accepts.
    TrustDomain(TrustDomain),
    /// `spiffe://example.org/some/path`.
    Svid(SpiffeId),
    Unknown,
}

impl Name {
    pub(crate) fn classify(name: &str) -> Self {
        match name {
            // The reserved names come first: "default" is also a valid trust
            // domain name, but no config means that by it.
            DEFAULT_SVID => Self::DefaultSvid,
            ROOT_CA => Self::RootCa,
            ALL_BUNDLES => Self::AllBundles,
            _ => match SpiffeId::parse(name) {
                Ok(id) if id.path().is_empty() => Self::TrustDomain(id.trust_domain().clone()),
                Ok(id) => Self::Svid(id),
                Err(_) => TrustDomain::new(name).map_or(Self::Unknown, Self::TrustDomain),
            },
        }
    }
}

/// The outcome of looking a name up for a caller.
pub(crate) enum Lookup {
    Ready(Resolved),
    /// The caller may have it, but it does not exist yet (no SVID issued, no
    /// bundle known). Envoy is left waiting; it is served when it appears.
    Pending(&'static str),
    /// Not something this caller may have, or not a name this server knows.
    Refused(&'static str),
}

/// One resource ready to send.
pub(crate) struct Resolved {
    pub(crate) name: String,
    /// Identifies the content (certificates only; the key follows from the
    /// certificate), so that an unchanged resource is never sent twice.
    pub(crate) version: String,
    /// The encoded `Secret`.
    body: Any,
}

impl Resolved {
    fn new(name: &str, version: String, secret: secret::Type) -> Self {
        let secret = Secret {
            name: name.to_owned(),
            r#type: Some(secret),
        };
        Self {
            name: name.to_owned(),
            version,
            body: Any {
                type_url: SECRET_TYPE_URL.to_owned(),
                value: secret.encode_to_vec(),
            },
        }
    }

    pub(crate) fn into_any(self) -> Any {
        self.body
    }
}

impl fmt::Debug for Resolved {
    // The secret may hold a private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolved")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("body", &"<redacted>")
            .finish()
    }
}

/// A set of requested names, or the wildcard (every SVID under its SPIFFE ID
/// and every bundle under its trust domain ID, as SPIRE serves it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Subscription {
    pub(crate) wildcard: bool,
    pub(crate) names: BTreeSet<String>,
}

impl Subscription {
    /// A state-of-the-world subscription: no names (or `*`) is the wildcard.
    pub(crate) fn from_names(requested: &[String]) -> Self {
        let mut sub = Self::default();
        for name in requested.iter().filter(|n| !n.is_empty()) {
            if name == "*" {
                sub.wildcard = true;
            } else {
                sub.names.insert(name.clone());
            }
        }
        if sub.names.is_empty() {
            sub.wildcard = true;
        }
        sub
    }

    /// The resources of this subscription that exist for `caller`. With
    /// `report`, names that cannot be served (yet) are logged, in one line
    /// for the whole request. A trust domain name in `sent` (what the
    /// client holds) whose bundle the caller may no longer have is answered
    /// with a validator that trusts nothing (see [`Caller::withdrawn`]).
    pub(crate) fn resolve(
        &self,
        caller: &Caller<'_>,
        report: bool,
        sent: &HashMap<String, String>,
    ) -> Vec<Resolved> {
        let mut out = if self.wildcard {
            caller.everything()
        } else {
            Vec::new()
        };
        let mut pending: Vec<(&str, &'static str)> = Vec::new();
        let mut refused: Vec<(&str, &'static str)> = Vec::new();
        for name in &self.names {
            if out.iter().any(|r| r.name == *name) {
                continue;
            }
            match caller.lookup(name) {
                Lookup::Ready(r) => out.push(r),
                Lookup::Pending(why) => pending.push((name, why)),
                Lookup::Refused(why) => refused.push((name, why)),
            }
        }
        let mut held: Vec<&String> = sent
            .keys()
            .filter(|name| self.wildcard || self.names.contains(*name))
            .filter(|name| !out.iter().any(|r| r.name == **name))
            .collect();
        held.sort();
        for name in held {
            if let Some(r) = caller.withdrawn(name) {
                tracing::info!(resource = %name, "the caller may no longer have this trust domain's bundle; replacing it with one that trusts nothing");
                out.push(r);
            }
        }
        if report && !refused.is_empty() {
            tracing::warn!(
                count = pending.len() + refused.len(),
                refused = ?refused,
                pending = ?pending,
                "not serving some of the requested resources (pending ones follow when available)"
            );
        } else if report && !pending.is_empty() {
            tracing::info!(
                count = pending.len(),
                pending = ?pending,
                "not available yet; will send them when they are"
            );
        }
        out
    }
}

/// One caller's view of a snapshot at one instant.
pub(crate) struct Caller<'a> {
    snapshot: &'a Snapshot,
    selectors: &'a [Selector],
    now: SystemTime,
    /// Trust domain resources use Envoy's SPIFFE validator unless the node
    /// asked otherwise (SPIRE's `disable_spiffe_cert_validation`).
    spiffe_validator: bool,
}

impl<'a> Caller<'a> {
    pub(crate) fn new(
        snapshot: &'a Snapshot,
        selectors: &'a [Selector],
        now: SystemTime,
        spiffe_validator: bool,
    ) -> Self {
        Self {
            snapshot,
            selectors,
            now,
            spiffe_validator,
        }
    }

    fn svids(&self) -> Vec<Arc<Svid>> {
        self.snapshot.svids_for(self.selectors, self.now)
    }

    /// When the first of the caller's SVIDs expires: what `default` means may
    /// change then.
    pub(crate) fn next_expiry(&self) -> Option<SystemTime> {
        self.svids().iter().map(|s| s.not_after).min()
    }

    /// The bundle of `td` this caller may have: the own one, or a federated
    /// one its entries federate with.
    fn bundle_of(&self, td: &TrustDomain) -> Option<Arc<TrustBundle>> {
        self.snapshot.bundle_for(self.selectors, td)
    }

    pub(crate) fn lookup(&self, name: &str) -> Lookup {
        match Name::classify(name) {
            Name::DefaultSvid => match self.svids().first() {
                Some(svid) => Lookup::Ready(tls_certificate(name, svid)),
                None => Lookup::Pending("no SVID has been issued to the caller yet"),
            },
            Name::Svid(id) => {
                if let Some(svid) = self.svids().iter().find(|s| s.spiffe_id == id) {
                    Lookup::Ready(tls_certificate(name, svid))
                } else if self
                    .snapshot
                    .entries_for(self.selectors)
                    .iter()
                    .any(|e| e.spiffe_id == id)
                {
                    Lookup::Pending("the SVID for this SPIFFE ID has not been issued yet")
                } else {
                    Lookup::Refused("the caller is not entitled to this SPIFFE ID")
                }
            }
            Name::RootCa => match self.snapshot.bundle.as_deref().filter(|b| has_x509(b)) {
                Some(bundle) => Lookup::Ready(trusted_ca(name, bundle, &self.snapshot.crls)),
                None => Lookup::Pending("the trust bundle is not known yet"),
            },
            Name::AllBundles => {
                let bundles: Vec<_> = self
                    .snapshot
                    .bundles_for(self.selectors)
                    .into_iter()
                    .filter(|b| has_x509(b))
                    .collect();
                if bundles.is_empty() {
                    Lookup::Pending("no trust bundle is known yet")
                } else {
                    Lookup::Ready(spiffe_validator(name, &bundles, self.snapshot))
                }
            }
            Name::TrustDomain(td) => match self.bundle_of(&td).filter(|b| has_x509(b)) {
                Some(bundle) if self.spiffe_validator => {
                    Lookup::Ready(spiffe_validator(name, &[bundle], self.snapshot))
                }
                Some(bundle) => {
                    Lookup::Ready(trusted_ca(name, &bundle, crls_of(self.snapshot, &bundle)))
                }
                None => Lookup::Pending(
                    "no bundle of this trust domain is known that the caller's entries federate with",
                ),
            },
            Name::Unknown => Lookup::Refused("not a resource name this server knows"),
        }
    }

    /// For a trust domain name whose bundle this caller may no longer have
    /// (the federation relationship was deleted, or its entries stopped
    /// federating): a validation context that trusts nothing. Envoy keeps a
    /// secret it was sent until it is replaced (an SDS answer without it
    /// changes nothing: spire#1816), so the name is replaced instead, by a
    /// root nobody can sign for. `None` for other names, or while the bundle
    /// is still there.
    pub(crate) fn withdrawn(&self, name: &str) -> Option<Resolved> {
        let Name::TrustDomain(td) = Name::classify(name) else {
            return None;
        };
        // Only once the agent knows what it serves (a restarted agent that
        // has not synced yet withdraws nothing), and never the own trust
        // domain, whose bundle does not go away.
        let own = self.snapshot.bundle.as_ref()?;
        if own.trust_domain() == &td || self.bundle_of(&td).is_some() {
            return None;
        }
        let nothing = NOBODYS_ROOT.as_ref()?;
        let pem = certificates_pem(std::slice::from_ref(nothing));
        let context = if self.spiffe_validator {
            spiffe_validator_context(vec![spiffe_cert_validator_config::TrustDomain {
                name: td.as_str().to_owned(),
                trust_bundle: inline(pem),
                workload_trust_domain: String::new(),
            }])
        } else {
            CertificateValidationContext {
                trusted_ca: inline(pem),
                ..CertificateValidationContext::default()
            }
        };
        Some(Resolved::new(
            name,
            digest_hex("withdrawn", [td.as_str().as_bytes(), nothing.as_ref()]),
            secret::Type::ValidationContext(context),
        ))
    }

    /// The wildcard: each bundle under its trust domain's SPIFFE ID, each SVID
    /// under its SPIFFE ID.
    pub(crate) fn everything(&self) -> Vec<Resolved> {
        let mut out = Vec::new();
        for bundle in self.snapshot.bundles_for(self.selectors) {
            if let Lookup::Ready(r) = self.lookup(&bundle.trust_domain().id_string()) {
                out.push(r);
            }
        }
        for svid in self.svids() {
            let name = svid.spiffe_id.as_str();
            if !out.iter().any(|r| r.name == name) {
                out.push(tls_certificate(name, &svid));
            }
        }
        out
    }
}

/// The CRLs that go with `bundle`: the snapshot's, for the own trust
/// domain only (a federated bundle comes without CRLs).
fn crls_of<'a>(snapshot: &'a Snapshot, bundle: &TrustBundle) -> &'a [Vec<u8>] {
    match &snapshot.bundle {
        Some(own) if own.trust_domain() == bundle.trust_domain() => &snapshot.crls,
        _ => &[],
    }
}

/// A root certificate whose private key was dropped as soon as it signed
/// the root itself: no certificate can ever chain to it. It stands in for a
/// bundle that was withdrawn. `None` only if making it failed.
static NOBODYS_ROOT: LazyLock<Option<CertificateDer<'static>>> = LazyLock::new(|| {
    let key = PrivateKey::generate(KeyType::EcdsaP256).ok()?;
    let params = SigningCaParams {
        trust_domain: TrustDomain::new("withdrawn.invalid").ok()?,
        ttl: Duration::from_secs(10 * 365 * 24 * 3600),
        backdate: Duration::from_secs(3600),
    };
    new_root(&params, &key, SystemTime::now()).ok()
});

fn has_x509(bundle: &TrustBundle) -> bool {
    !bundle.x509_authorities().is_empty()
}

fn inline(bytes: Vec<u8>) -> Option<DataSource> {
    Some(DataSource {
        watched_directory: None,
        specifier: Some(Specifier::InlineBytes(bytes)),
    })
}

fn certificates_pem(certs: &[CertificateDer<'static>]) -> Vec<u8> {
    let blocks: Vec<pem::Pem> = certs
        .iter()
        .map(|c| pem::Pem::new(PEM_CERTIFICATE, c.to_vec()))
        .collect();
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_many_config(&blocks, config).into_bytes()
}

/// A short digest of `kind` and `parts`, each part length-prefixed so that
/// different splits of the same bytes differ.
pub(crate) fn digest_hex<'p>(kind: &str, parts: impl IntoIterator<Item = &'p [u8]>) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(kind.as_bytes());
    for part in parts {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    hex::encode(ctx.finish().as_ref().get(..8).unwrap_or_default())
}

/// The version of a response: its resources' names and versions.
pub(crate) fn combined_version(resources: &[Resolved]) -> String {
    digest_hex(
        "response",
        resources
            .iter()
            .flat_map(|r| [r.name.as_bytes(), r.version.as_bytes()]),
    )
}

fn tls_certificate(name: &str, svid: &Svid) -> Resolved {
    let key_pem = svid.key.to_pem();
    let certificate = TlsCertificate {
        certificate_chain: inline(certificates_pem(&svid.chain)),
        private_key: inline(key_pem.as_bytes().to_vec()),
        ..TlsCertificate::default()
    };
    Resolved::new(
        name,
        digest_hex("tls_certificate", svid.chain.iter().map(|c| c.as_ref())),
        secret::Type::TlsCertificate(certificate),
    )
}

fn crls_pem(crls: &[Vec<u8>]) -> Vec<u8> {
    let blocks: Vec<pem::Pem> = crls
        .iter()
        .map(|c| pem::Pem::new(PEM_CRL, c.clone()))
        .collect();
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_many_config(&blocks, config).into_bytes()
}

/// Envoy's default validator: the bundle's roots pooled as `trusted_ca`,
/// and the CRLs, if any, in `crl` (Envoy then checks the chain against them).
fn trusted_ca(name: &str, bundle: &TrustBundle, crls: &[Vec<u8>]) -> Resolved {
    let context = CertificateValidationContext {
        trusted_ca: inline(certificates_pem(bundle.x509_authorities())),
        crl: if crls.is_empty() {
            None
        } else {
            inline(crls_pem(crls))
        },
        ..CertificateValidationContext::default()
    };
    Resolved::new(
        name,
        digest_hex(
            "trusted_ca",
            bundle
                .x509_authorities()
                .iter()
                .map(|c| c.as_ref())
                .chain(std::iter::once(&b"crls"[..]))
                .chain(crls.iter().map(Vec::as_slice)),
        ),
        secret::Type::ValidationContext(context),
    )
}

/// A validation context for Envoy's SPIFFE validator: each trust domain is
/// checked against its own bundle only, so no trust domain can vouch for
/// another's IDs (a plain `trusted_ca` holding several bundles would allow it).
fn spiffe_validator(name: &str, bundles: &[Arc<TrustBundle>], snapshot: &Snapshot) -> Resolved {
    let mut bundles: Vec<&TrustBundle> = bundles.iter().map(AsRef::as_ref).collect();
    bundles.sort_by(|a, b| a.trust_domain().cmp(b.trust_domain()));
    bundles.dedup_by(|a, b| a.trust_domain() == b.trust_domain());
    // Envoy's SPIFFE validator has no CRL field: it reads `X509 CRL` blocks
    // from the trust bundle's PEM and then checks the whole chain against
    // them. Only the own trust domain has CRLs.
    let trust_domains = bundles
        .iter()
        .map(|b| {
            let mut pem = certificates_pem(b.x509_authorities());
            pem.extend(crls_pem(crls_of(snapshot, b)));
            spiffe_cert_validator_config::TrustDomain {
                name: b.trust_domain().as_str().to_owned(),
                trust_bundle: inline(pem),
                workload_trust_domain: String::new(),
            }
        })
        .collect();
    let context = spiffe_validator_context(trust_domains);
    let version = digest_hex(
        "spiffe_validator",
        bundles.iter().flat_map(|b| {
            std::iter::once(b.trust_domain().as_str().as_bytes())
                .chain(b.x509_authorities().iter().map(|c| c.as_ref()))
                .chain(std::iter::once(&b"crls"[..]))
                .chain(crls_of(snapshot, b).iter().map(Vec::as_slice))
        }),
    );
    Resolved::new(name, version, secret::Type::ValidationContext(context))
}

/// A validation context that hands validation to Envoy's SPIFFE validator
/// with these trust domains.
fn spiffe_validator_context(
    trust_domains: Vec<spiffe_cert_validator_config::TrustDomain>,
) -> CertificateValidationContext {
    let config = SpiffeCertValidatorConfig {
        trust_domains,
        trust_bundles: None,
    };
    CertificateValidationContext {
        custom_validator_config: Some(TypedExtensionConfig {
            name: SPIFFE_VALIDATOR.to_owned(),
            typed_config: Some(Any {
                type_url: SPIFFE_VALIDATOR_TYPE_URL.to_owned(),
                value: config.encode_to_vec(),
            }),
        }),
        ..CertificateValidationContext::default()
    }
}
