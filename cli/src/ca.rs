//! `signet ca ...`: administration of signet-ca through its Admin service on
//! the local unix socket: registration entries, join tokens, the bundle, the
//! authorities, and minting SVIDs for keys made here.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, anyhow, bail};
use serde::Serialize;
use signet_identity::{JwtAuthority, KeyType, PrivateKey, SpiffeId, TrustBundle, TrustDomain};
use signet_proto::ca::v1 as pb;
use signet_proto::ca::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::admin_client::{self, DEFAULT_SOCKET};
use crate::files::{self, MODE_PUBLIC, MODE_SECRET};
use crate::grpc::status_error;
use crate::output::{self, Format};
use crate::ttl::Ttl;

/// Arguments of `signet ca`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The Admin API socket of signet-ca (`<data_dir>/admin.sock`).
    #[arg(
        long,
        global = true,
        env = "SIGNET_ADMIN_SOCKET",
        default_value = DEFAULT_SOCKET,
        value_name = "PATH"
    )]
    admin_socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Registration entries: which workloads get which SPIFFE IDs.
    #[command(subcommand)]
    Entry(EntryCommand),
    /// Join tokens for attesting new nodes.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The trust bundle of the CA's trust domain.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// The CA's signing authorities.
    #[command(subcommand)]
    Authority(AuthorityCommand),
    /// Issue an X509-SVID for a key generated here, and write it to a directory.
    Mint(MintArgs),
    /// The node agents the CA has attested, and how current they are.
    #[command(subcommand)]
    Agent(AgentCommand),
}

#[derive(Debug, clap::Subcommand)]
enum AgentCommand {
    /// List attested agents: bundle sequence served, SVIDs held, last report.
    List,
    #[command(flatten)]
    Lifecycle(crate::ca_nodes::NodeLifecycle),
}

#[derive(Debug, clap::Subcommand)]
enum EntryCommand {
    /// Create a registration entry.
    Create(EntryCreateArgs),
    /// List registration entries.
    List {
        /// Only entries parented to this SPIFFE ID.
        #[arg(long, value_name = "ID")]
        parent_id: Option<SpiffeId>,
    },
    /// Show one registration entry.
    Show {
        /// The entry ID.
        id: String,
    },
    /// Delete a registration entry.
    Delete {
        /// The entry ID.
        id: String,
    },
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("parent").required(true).args(["parent_id", "parent_node"])))]
struct EntryCreateArgs {
    /// The SPIFFE ID the workload receives.
    #[arg(long, value_name = "ID")]
    spiffe_id: SpiffeId,
    /// The SPIFFE ID of the node allowed to obtain the entry's SVIDs.
    #[arg(long, value_name = "ID")]
    parent_id: Option<SpiffeId>,
    /// Shorthand for --parent-id spiffe://<td>/signet/node/NAME, with the
    /// trust domain of --spiffe-id.
    #[arg(long, value_name = "NAME")]
    parent_node: Option<String>,
    /// A workload selector, e.g. unix:uid:1000 (repeatable; all must match).
    #[arg(long = "selector", value_name = "TYPE:VALUE")]
    selectors: Vec<SelectorArg>,
    /// Maximum lifetime of the entry's X509-SVIDs (default: the server's).
    #[arg(long, value_name = "DURATION")]
    ttl: Option<Ttl>,
    /// A DNS SAN for the entry's SVIDs (repeatable).
    #[arg(long = "dns-name", value_name = "NAME")]
    dns_names: Vec<String>,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Create a single-use join token for a node.
    Create {
        /// The node's name; its SPIFFE ID will be spiffe://<td>/signet/node/NAME.
        #[arg(long, value_name = "NAME")]
        node: String,
        /// How long the token stays usable (default: the server's).
        #[arg(long, value_name = "DURATION")]
        ttl: Option<Ttl>,
    },
}

#[derive(Debug, clap::Subcommand)]
enum BundleCommand {
    /// Print the current trust bundle.
    Show {
        /// PEM CA certificates, or the SPIFFE bundle (JWK Set).
        #[arg(long, value_enum, default_value_t = BundleFormat::Pem)]
        format: BundleFormat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BundleFormat {
    Pem,
    Jwks,
}

#[derive(Debug, clap::Subcommand)]
enum AuthorityCommand {
    /// List the CA's authorities.
    List,
}

#[derive(Debug, clap::Args)]
struct MintArgs {
    /// The SPIFFE ID to issue, in the CA's trust domain.
    #[arg(long, value_name = "ID")]
    spiffe_id: SpiffeId,
    /// Lifetime of the SVID (default: the server's).
    #[arg(long, value_name = "DURATION")]
    ttl: Option<Ttl>,
    /// A DNS SAN (repeatable).
    #[arg(long = "dns-name", value_name = "NAME")]
    dns_names: Vec<String>,
    /// Where to write svid.pem, svid_key.pem and bundle.pem (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// A `--selector TYPE:VALUE`; the value may itself contain colons.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SelectorArg {
    kind: String,
    value: String,
}

impl FromStr for SelectorArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((kind, value)) if !kind.is_empty() && !value.is_empty() => Ok(Self {
                kind: kind.to_owned(),
                value: value.to_owned(),
            }),
            _ => Err("expected TYPE:VALUE, e.g. unix:uid:1000".to_owned()),
        }
    }
}

/// Runs `signet ca ...`.
///
/// # Errors
/// When the server cannot be reached or refuses the call, or when local
/// files cannot be written.
pub fn run(args: Args, format: Format) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut client = admin_client::connect(&args.admin_socket).await?;
        match args.command {
            Command::Entry(cmd) => entry(&mut client, cmd, format).await,
            Command::Token(TokenCommand::Create { node, ttl }) => {
                token_create(&mut client, node, ttl, format).await
            }
            Command::Bundle(BundleCommand::Show {
                format: bundle_format,
            }) => bundle_show(&mut client, bundle_format).await,
            Command::Authority(AuthorityCommand::List) => authority_list(&mut client, format).await,
            Command::Mint(mint_args) => mint(&mut client, mint_args, format).await,
            Command::Agent(AgentCommand::List) => agent_list(&mut client, format).await,
            Command::Agent(AgentCommand::Lifecycle(cmd)) => {
                crate::ca_nodes::run(&mut client, cmd, format).await
            }
        }
    })
}

// ---- entries ----

#[derive(Debug, Serialize)]
struct EntryView {
    id: String,
    spiffe_id: String,
    parent_id: String,
    selectors: Vec<SelectorView>,
    x509_svid_ttl_seconds: i64,
    dns_names: Vec<String>,
    created_at: String,
    revision: u64,
}

#[derive(Debug, Serialize)]
struct EntryList<'a> {
    entries: &'a [EntryView],
}

#[derive(Debug, Serialize)]
struct Deleted<'a> {
    deleted: &'a str,
}

#[derive(Debug, Serialize)]
struct SelectorView {
    #[serde(rename = "type")]
    kind: String,
    value: String,
}

impl From<pb::Entry> for EntryView {
    fn from(e: pb::Entry) -> Self {
        Self {
            id: e.id,
            spiffe_id: e.spiffe_id,
            parent_id: e.parent_id,
            selectors: e
                .selectors
                .into_iter()
                .map(|s| SelectorView {
                    kind: s.r#type,
                    value: s.value,
                })
                .collect(),
            x509_svid_ttl_seconds: e.x509_svid_ttl_seconds,
            dns_names: e.dns_names,
            created_at: output::rfc3339(e.created_at),
            revision: e.revision,
        }
    }
}

impl EntryView {
    fn to_text(&self) -> String {
        let mut out = String::new();
        let f = |out: &mut String, label: &str, value: &str| {
            output::field(out, "", label, &output::printable(value));
        };
        f(&mut out, "Entry ID", &self.id);
        f(&mut out, "SPIFFE ID", &self.spiffe_id);
        f(&mut out, "Parent ID", &self.parent_id);
        let selectors: Vec<String> = self
            .selectors
            .iter()
            .map(|s| format!("{}:{}", s.kind, s.value))
            .collect();
        f(&mut out, "Selectors", &or_none(&selectors.join(", ")));
        let ttl = match u64::try_from(self.x509_svid_ttl_seconds) {
            Ok(0) | Err(_) => "server default".to_owned(),
            Ok(s) => humantime::format_duration(Duration::from_secs(s)).to_string(),
        };
        f(&mut out, "SVID TTL", &ttl);
        if !self.dns_names.is_empty() {
            f(&mut out, "DNS names", &self.dns_names.join(", "));
        }
        f(&mut out, "Created", &self.created_at);
        f(&mut out, "Revision", &self.revision.to_string());
        out
    }
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "(none)".to_owned()
    } else {
        s.to_owned()
    }
}

async fn entry(
    client: &mut AdminClient<Channel>,
    cmd: EntryCommand,
    format: Format,
) -> anyhow::Result<()> {
    match cmd {
        EntryCommand::Create(args) => {
            let request = create_entry_request(args)?;
            let entry = client.create_entry(request).await.map_err(status_error)?;
            print_entry(entry.into_inner().into(), format)
        }
        EntryCommand::Show { id } => {
            let entry = client
                .get_entry(pb::GetEntryRequest { id })
                .await
                .map_err(status_error)?;
            print_entry(entry.into_inner().into(), format)
        }
        EntryCommand::List { parent_id } => {
            let request = pb::ListEntriesRequest {
                parent_id: parent_id.map(|id| id.to_string()).unwrap_or_default(),
            };
            let list = client.list_entries(request).await.map_err(status_error)?;
            let entries: Vec<EntryView> = list
                .into_inner()
                .entries
                .into_iter()
                .map(EntryView::from)
                .collect();
            match format {
                Format::Json => output::print_json(&EntryList { entries: &entries }),
                Format::Text => {
                    let n = entries.len();
                    let mut out =
                        format!("Found {n} {}\n", if n == 1 { "entry" } else { "entries" });
                    for entry in &entries {
                        out.push('\n');
                        out.push_str(&entry.to_text());
                    }
                    output::print(&out)
                }
            }
        }
        EntryCommand::Delete { id } => {
            client
                .delete_entry(pb::DeleteEntryRequest { id: id.clone() })
                .await
                .map_err(status_error)?;
            match format {
                Format::Json => output::print_json(&Deleted { deleted: &id }),
                Format::Text => {
                    output::print(&format!("Deleted entry {}\n", output::printable(&id)))
                }
            }
        }
    }
}

fn create_entry_request(args: EntryCreateArgs) -> anyhow::Result<pb::CreateEntryRequest> {
    let parent_id = match (args.parent_id, args.parent_node) {
        (Some(id), _) => id,
        (None, Some(node)) => node_id(args.spiffe_id.trust_domain(), &node)?,
        (None, None) => bail!("one of --parent-id or --parent-node is required"),
    };
    Ok(pb::CreateEntryRequest {
        spiffe_id: args.spiffe_id.to_string(),
        parent_id: parent_id.to_string(),
        selectors: args
            .selectors
            .into_iter()
            .map(|s| pb::Selector {
                r#type: s.kind,
                value: s.value,
            })
            .collect(),
        x509_svid_ttl_seconds: args.ttl.map_or(0, Ttl::seconds),
        dns_names: args.dns_names,
    })
}

/// The SPIFFE ID signet-ca gives the node `name`: spiffe://<td>/signet/node/<name>.
fn node_id(trust_domain: &TrustDomain, name: &str) -> anyhow::Result<SpiffeId> {
    SpiffeId::from_segments(trust_domain, &["signet", "node", name])
        .with_context(|| format!("--parent-node {name:?} is not a valid node name"))
}

fn print_entry(entry: EntryView, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => output::print_json(&entry),
        Format::Text => output::print(&entry.to_text()),
    }
}

// ---- join tokens ----

#[derive(Debug, Serialize)]
struct TokenView<'a> {
    token: &'a str,
    node_spiffe_id: &'a str,
    expires_at: &'a str,
}

async fn token_create(
    client: &mut AdminClient<Channel>,
    node: String,
    ttl: Option<Ttl>,
    format: Format,
) -> anyhow::Result<()> {
    let request = pb::CreateJoinTokenRequest {
        node_name: node,
        ttl_seconds: ttl.map_or(0, Ttl::seconds),
    };
    let token = client
        .create_join_token(request)
        .await
        .map_err(status_error)?
        .into_inner();
    let expires_at = output::rfc3339(token.expires_at);
    match format {
        Format::Json => output::print_json(&TokenView {
            token: &token.token,
            node_spiffe_id: &token.node_spiffe_id,
            expires_at: &expires_at,
        }),
        // The token alone on the first line, so `| head -n1` captures it.
        Format::Text => output::print(&format!(
            "{}\nnode: {}\nexpires: {expires_at}\n",
            output::printable(&token.token),
            output::printable(&token.node_spiffe_id),
        )),
    }
}

// ---- bundle ----

async fn bundle_show(
    client: &mut AdminClient<Channel>,
    format: BundleFormat,
) -> anyhow::Result<()> {
    let bundle = client
        .get_bundle(pb::GetBundleRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let bundle = trust_bundle(bundle)?;
    match format {
        BundleFormat::Pem => output::print(&bundle.to_pem()),
        BundleFormat::Jwks => output::print(&format!("{}\n", bundle.to_jwks())),
    }
}

/// The identity crate's bundle for the wire message, checked on the way: a
/// server bug must not turn into a bundle file that trusts the wrong thing.
fn trust_bundle(message: pb::Bundle) -> anyhow::Result<TrustBundle> {
    let trust_domain = TrustDomain::new(&message.trust_domain).with_context(|| {
        format!(
            "server sent an invalid trust domain {:?}",
            message.trust_domain
        )
    })?;
    let mut bundle = TrustBundle::new(trust_domain)
        .with_x509_authorities(
            message
                .x509_authorities
                .into_iter()
                .map(rustls_pki_types::CertificateDer::from),
        )
        .context("server sent an unusable X.509 authority")?;
    for jwt in message.jwt_authorities {
        let mut authority = JwtAuthority::new(jwt.key_id.clone(), &jwt.public_key)
            .with_context(|| format!("server sent an unusable JWT authority {:?}", jwt.key_id))?;
        if jwt.expires_at != 0 {
            authority = authority.with_expires_at(jwt.expires_at);
        }
        bundle
            .add_jwt_authority(authority)
            .context("server sent conflicting JWT authorities")?;
    }
    bundle.set_sequence(message.sequence);
    if let Ok(hint @ 1..) = u64::try_from(message.refresh_hint_seconds) {
        bundle.set_refresh_hint(Some(Duration::from_secs(hint)));
    }
    Ok(bundle)
}

// ---- authorities ----

#[derive(Debug, Serialize)]
struct AuthorityList<'a> {
    authorities: &'a [AuthorityView],
}

#[derive(Debug, Serialize)]
struct AuthorityView {
    id: String,
    kind: String,
    state: String,
    not_before: String,
    not_after: String,
    subject: String,
}

async fn authority_list(client: &mut AdminClient<Channel>, format: Format) -> anyhow::Result<()> {
    let list = client
        .list_authorities(pb::ListAuthoritiesRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let views: Vec<AuthorityView> = list
        .authorities
        .into_iter()
        .map(|a| AuthorityView {
            id: a.id,
            kind: a.kind,
            state: a.state,
            not_before: output::rfc3339(a.not_before),
            not_after: output::rfc3339(a.not_after),
            subject: subject_of(&a.certificate).unwrap_or(a.subject),
        })
        .collect();
    match format {
        Format::Json => output::print_json(&AuthorityList {
            authorities: &views,
        }),
        Format::Text => {
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|a| {
                    [&a.id, &a.kind, &a.state, &a.not_after, &a.subject]
                        .into_iter()
                        .map(|s| output::printable(s))
                        .collect()
                })
                .collect();
            output::print(&output::table(
                &["ID", "KIND", "STATE", "NOT AFTER", "SUBJECT"],
                &rows,
            ))
        }
    }
}

/// The subject in the same RFC 4514 form `signet inspect` prints, when the
/// certificate is there to read it from.
fn subject_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(crate::certinfo::rfc4514(cert.subject()))
}

// ---- agents ----

#[derive(Debug, Serialize)]
struct AgentList {
    /// The CA's current bundle sequence.
    bundle_sequence: u64,
    agents: Vec<AgentView>,
}

#[derive(Debug, Serialize)]
struct AgentView {
    spiffe_id: String,
    name: String,
    attested_at: String,
    /// The sequence of the bundle the agent last reported serving.
    bundle_sequence: u64,
    /// Whether that is the CA's current one.
    bundle_current: bool,
    svid_count: u32,
    /// `None` when the agent never reported.
    last_seen: Option<String>,
    node_svid_serial: String,
    node_svid_expires_at: String,
    #[serde(skip)]
    node_svid_expires_unix: i64,
    #[serde(skip)]
    last_seen_unix: i64,
}

fn agent_views(list: pb::ListAgentsResponse) -> AgentList {
    let current = list.bundle_sequence;
    let agents = list
        .agents
        .into_iter()
        .map(|a| AgentView {
            bundle_current: a.bundle_sequence == current,
            last_seen: (a.last_seen != 0).then(|| output::rfc3339(a.last_seen)),
            attested_at: output::rfc3339(a.attested_at),
            node_svid_expires_at: output::rfc3339(a.svid_expires_at),
            node_svid_expires_unix: a.svid_expires_at,
            last_seen_unix: a.last_seen,
            spiffe_id: a.spiffe_id,
            name: a.name,
            bundle_sequence: a.bundle_sequence,
            svid_count: a.svid_count,
            node_svid_serial: a.svid_serial,
        })
        .collect();
    AgentList {
        bundle_sequence: current,
        agents,
    }
}

fn render_agents(list: &AgentList, now: i64) -> String {
    let rows: Vec<Vec<String>> = list
        .agents
        .iter()
        .map(|a| {
            let bundle = if a.bundle_current {
                format!("{} (current)", a.bundle_sequence)
            } else {
                format!("{} (CA has {})", a.bundle_sequence, list.bundle_sequence)
            };
            let last_seen = match &a.last_seen {
                None => "never".to_owned(),
                Some(at) => {
                    let ago = output::approx_duration(Duration::from_secs(
                        now.saturating_sub(a.last_seen_unix).unsigned_abs(),
                    ));
                    format!("{at} ({ago} ago)")
                }
            };
            let expires = format!(
                "{} ({})",
                a.node_svid_expires_at,
                output::time_left(a.node_svid_expires_unix, now)
            );
            vec![
                output::printable(&a.spiffe_id),
                bundle,
                a.svid_count.to_string(),
                last_seen,
                expires,
            ]
        })
        .collect();
    let n = list.agents.len();
    let mut out = format!(
        "{n} {}, CA bundle sequence {}\n",
        if n == 1 { "agent" } else { "agents" },
        list.bundle_sequence
    );
    if n > 0 {
        out.push_str(&output::table(
            &[
                "SPIFFE ID",
                "BUNDLE SEQUENCE",
                "SVIDS",
                "LAST SEEN",
                "NODE SVID EXPIRES",
            ],
            &rows,
        ));
    }
    out
}

async fn agent_list(client: &mut AdminClient<Channel>, format: Format) -> anyhow::Result<()> {
    let list = client
        .list_agents(pb::ListAgentsRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let list = agent_views(list);
    match format {
        Format::Json => output::print_json(&list),
        Format::Text => output::print(&render_agents(
            &list,
            output::unix_seconds(SystemTime::now()),
        )),
    }
}

// ---- mint ----

const SVID_FILE: &str = "svid.pem";
const KEY_FILE: &str = "svid_key.pem";
const BUNDLE_FILE: &str = "bundle.pem";

#[derive(Debug, Serialize)]
struct MintView {
    spiffe_id: String,
    serial: String,
    expires_at: String,
    svid_file: String,
    key_file: String,
    bundle_file: String,
}

async fn mint(
    client: &mut AdminClient<Channel>,
    args: MintArgs,
    format: Format,
) -> anyhow::Result<()> {
    // Fail on an unusable directory before asking the CA for anything.
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let key = PrivateKey::generate(KeyType::EcdsaP256).context("cannot generate a key")?;
    let csr = key.csr_der().context("cannot build the CSR")?;
    let request = pb::MintX509SvidRequest {
        spiffe_id: args.spiffe_id.to_string(),
        csr,
        ttl_seconds: args.ttl.map_or(0, Ttl::seconds),
        dns_names: args.dns_names,
    };
    let response = client
        .mint_x509_svid(request)
        .await
        .map_err(status_error)?
        .into_inner();
    let svid = response
        .svid
        .ok_or_else(|| anyhow!("server sent no SVID"))?;
    let bundle = trust_bundle(
        response
            .bundle
            .ok_or_else(|| anyhow!("server sent no bundle"))?,
    )?;
    check_leaf_key(&svid, &key)?;

    let paths = [SVID_FILE, KEY_FILE, BUNDLE_FILE].map(|name| args.out.join(name));
    let [svid_path, key_path, bundle_path] = &paths;
    write(
        svid_path,
        files::chain_pem(&svid.cert_chain).as_bytes(),
        MODE_PUBLIC,
    )?;
    write(key_path, key.to_pem().as_bytes(), MODE_SECRET)?;
    write(bundle_path, bundle.to_pem().as_bytes(), MODE_PUBLIC)?;

    let now = output::unix_seconds(SystemTime::now());
    let view = MintView {
        spiffe_id: svid.spiffe_id,
        serial: svid.serial,
        expires_at: output::rfc3339(svid.expires_at),
        svid_file: svid_path.display().to_string(),
        key_file: key_path.display().to_string(),
        bundle_file: bundle_path.display().to_string(),
    };
    match format {
        Format::Json => output::print_json(&view),
        Format::Text => {
            let mut out = String::new();
            let f = |out: &mut String, label: &str, value: &str| {
                output::field(out, "", label, &output::printable(value));
            };
            f(&mut out, "SPIFFE ID", &view.spiffe_id);
            f(&mut out, "Serial", &view.serial);
            let left = output::time_left(svid.expires_at, now);
            f(
                &mut out,
                "Expires",
                &format!("{} ({left})", view.expires_at),
            );
            let _ = writeln!(
                out,
                "Wrote {}, {}, {}",
                view.svid_file, view.key_file, view.bundle_file
            );
            output::print(&out)
        }
    }
}

fn write(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    files::write_atomic(path, contents, mode)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The leaf must certify the key we hold; anything else would leave a key
/// file and a certificate that do not belong together.
fn check_leaf_key(svid: &pb::X509Svid, key: &PrivateKey) -> anyhow::Result<()> {
    let leaf = svid
        .cert_chain
        .first()
        .ok_or_else(|| anyhow!("server sent an empty certificate chain"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| anyhow!("server sent an invalid certificate: {e}"))?;
    if cert.public_key().raw != key.public_key_spki().as_slice() {
        bail!("server sent a certificate for a different public key than the CSR's");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(flatten)]
        ca: Args,
    }

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        TestCli::try_parse_from(std::iter::once("signet-ca").chain(args.iter().copied()))
            .map(|c| c.ca)
    }

    #[test]
    fn selector_table() {
        let rows: &[(&str, Option<(&str, &str)>)] = &[
            ("unix:uid:1000", Some(("unix", "uid:1000"))),
            ("k8s:ns:default", Some(("k8s", "ns:default"))),
            ("docker:label:a=b", Some(("docker", "label:a=b"))),
            ("unix", None),
            (":uid:1", None),
            ("unix:", None),
        ];
        for (input, want) in rows {
            let got = input.parse::<SelectorArg>().ok();
            let want = want.map(|(k, v)| SelectorArg {
                kind: k.to_owned(),
                value: v.to_owned(),
            });
            assert_eq!(got, want, "{input:?}");
        }
    }

    #[test]
    fn parent_node_expands_in_the_entry_trust_domain() {
        let args = parse(&[
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/web",
            "--parent-node",
            "node-1",
            "--selector",
            "unix:uid:1000",
            "--ttl",
            "1h",
            "--dns-name",
            "web.local",
        ])
        .unwrap();
        let Command::Entry(EntryCommand::Create(create)) = args.command else {
            panic!("{:?}", args.command);
        };
        let request = create_entry_request(create).unwrap();
        assert_eq!(request.parent_id, "spiffe://example.org/signet/node/node-1");
        assert_eq!(request.x509_svid_ttl_seconds, 3_600);
        assert_eq!(request.selectors.len(), 1);
        assert_eq!(request.selectors[0].r#type, "unix");
        assert_eq!(request.selectors[0].value, "uid:1000");
        assert_eq!(request.dns_names, ["web.local"]);
    }

    #[test]
    fn entry_create_needs_exactly_one_parent() {
        let base = ["entry", "create", "--spiffe-id", "spiffe://example.org/web"];
        assert!(parse(&base).is_err());
        let both: Vec<&str> = base
            .iter()
            .copied()
            .chain([
                "--parent-id",
                "spiffe://example.org/n",
                "--parent-node",
                "n",
            ])
            .collect();
        assert!(parse(&both).is_err());
    }

    #[test]
    fn bad_node_names_are_refused_locally() {
        let td = TrustDomain::new("example.org").unwrap();
        assert!(node_id(&td, "a/b").is_err());
        assert!(node_id(&td, "").is_err());
        assert_eq!(
            node_id(&td, "n1").unwrap().as_str(),
            "spiffe://example.org/signet/node/n1"
        );
    }

    #[test]
    fn admin_socket_has_a_default_and_goes_anywhere() {
        let args = parse(&["authority", "list"]).unwrap();
        assert_eq!(args.admin_socket, PathBuf::from(DEFAULT_SOCKET));
        let args = parse(&["authority", "list", "--admin-socket", "/run/x.sock"]).unwrap();
        assert_eq!(args.admin_socket, PathBuf::from("/run/x.sock"));
    }

    #[test]
    fn bundle_message_becomes_a_trust_bundle() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).unwrap();
        let jwt_key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let message = pb::Bundle {
            trust_domain: "example.org".into(),
            x509_authorities: vec![root.der().to_vec()],
            jwt_authorities: vec![pb::JwtAuthority {
                key_id: "k1".into(),
                public_key: jwt_key.public_key_spki(),
                expires_at: 0,
            }],
            sequence: 7,
            refresh_hint_seconds: 300,
        };
        let bundle = trust_bundle(message).unwrap();
        assert_eq!(bundle.trust_domain().as_str(), "example.org");
        assert_eq!(bundle.x509_authorities().len(), 1);
        assert_eq!(bundle.jwt_authorities()[0].key_id(), "k1");
        assert_eq!(bundle.sequence(), 7);
        assert_eq!(bundle.refresh_hint(), Some(Duration::from_secs(300)));

        let bad = pb::Bundle {
            trust_domain: "Not Valid".into(),
            ..Default::default()
        };
        assert!(trust_bundle(bad).is_err());
    }

    fn agent(name: &str, sequence: u64, last_seen: i64) -> pb::Agent {
        pb::Agent {
            spiffe_id: format!("spiffe://example.org/signet/node/{name}"),
            name: name.to_owned(),
            attested_at: 1_700_000_000,
            svid_serial: "0a".to_owned(),
            svid_expires_at: 1_700_003_600,
            bundle_sequence: sequence,
            last_seen,
            svid_count: 3,
        }
    }

    #[test]
    fn agent_list_compares_each_agent_with_the_ca() {
        let list = agent_views(pb::ListAgentsResponse {
            agents: vec![agent("a", 7, 1_700_000_050), agent("b", 5, 0)],
            bundle_sequence: 7,
        });
        assert!(list.agents[0].bundle_current);
        assert!(!list.agents[1].bundle_current);
        assert_eq!(list.agents[1].last_seen, None);

        let text = render_agents(&list, 1_700_000_060);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "2 agents, CA bundle sequence 7");
        assert!(lines[1].starts_with("SPIFFE ID"), "{text}");
        assert!(
            lines[2].contains("7 (current)") && lines[2].contains("(10s ago)"),
            "{text}"
        );
        assert!(lines[2].contains("expires in 59m"), "{text}");
        assert!(
            lines[3].contains("5 (CA has 7)") && lines[3].contains("never"),
            "{text}"
        );

        let json = serde_json::to_value(&list).unwrap();
        assert_eq!(json["bundle_sequence"], 7);
        assert_eq!(json["agents"][0]["bundle_current"], true);
        assert_eq!(json["agents"][0]["last_seen"], "2023-11-14T22:14:10Z");
        assert_eq!(json["agents"][1]["last_seen"], serde_json::Value::Null);
        assert_eq!(json["agents"][1]["svid_count"], 3);
    }

    #[test]
    fn an_empty_agent_list_has_no_table() {
        let list = agent_views(pb::ListAgentsResponse {
            agents: vec![],
            bundle_sequence: 1,
        });
        assert_eq!(render_agents(&list, 0), "0 agents, CA bundle sequence 1\n");
    }
}
