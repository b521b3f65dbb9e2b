//! `signet ca ...`: administration of signet-ca through its Admin service on
//! the local unix socket: registration entries, join tokens, the bundle, the
//! authorities, and minting SVIDs for keys made here.

mod agent;
mod authority;
mod bundle;
mod entry;
mod federation;
mod mint;
mod nodes;
mod replica;
mod status;
mod token;

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context as _;
use signet_identity::{SpiffeId, TrustDomain};

use crate::admin_client::{self, DEFAULT_SOCKET};
use crate::output::Format;
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
    /// Health on one screen: authorities, bundle, agents, last audit write.
    Status,
    /// Federation with other trust domains through their bundle endpoints.
    #[command(subcommand)]
    Federation(federation::FederationCommand),
}

#[derive(Debug, clap::Subcommand)]
enum AgentCommand {
    /// List attested agents: bundle sequence served, SVIDs held, last report.
    List,
    #[command(flatten)]
    Lifecycle(nodes::NodeLifecycle),
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
    /// A trust domain whose bundle the entry's workloads receive
    /// (repeatable; it needs a federation relationship).
    #[arg(long = "federates-with", value_name = "TD")]
    federates_with: Vec<TrustDomain>,
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
        #[arg(long, value_enum, default_value_t = bundle::BundleFormat::Pem)]
        format: bundle::BundleFormat,
    },
}

#[derive(Debug, clap::Subcommand)]
enum AuthorityCommand {
    /// List the CA's authorities: state, the bundle sequence that first
    /// carried each, and how many connected agents acknowledged it.
    List,
    /// Make and publish a new authority now; it signs once activated.
    Prepare {
        #[arg(value_enum)]
        kind: authority::KindArg,
    },
    /// Make a prepared, published authority sign now.
    Activate {
        /// The authority id (see `list`).
        id: String,
        /// Even though not every connected agent has acknowledged the
        /// bundle that carries it.
        #[arg(long)]
        force: bool,
    },
    /// Make agents replace everything the authority signed.
    Taint {
        /// The authority id (see `list`).
        id: String,
    },
    /// Take a tainted authority out of every bundle.
    Revoke {
        /// The authority id (see `list`).
        id: String,
        /// Even though something valid may still chain to it.
        #[arg(long)]
        force: bool,
    },
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
            Command::Entry(cmd) => entry::run(&mut client, cmd, format).await,
            Command::Token(TokenCommand::Create { node, ttl }) => {
                token::create(&mut client, node, ttl, format).await
            }
            Command::Bundle(BundleCommand::Show {
                format: bundle_format,
            }) => bundle::show(&mut client, bundle_format).await,
            Command::Authority(cmd) => authority::run(&mut client, cmd, format).await,
            Command::Mint(mint_args) => mint::run(&mut client, mint_args, format).await,
            Command::Agent(AgentCommand::List) => agent::list(&mut client, format).await,
            Command::Agent(AgentCommand::Lifecycle(cmd)) => {
                nodes::run(&mut client, cmd, format).await
            }
            Command::Status => status::run(&mut client, format).await,
            Command::Federation(cmd) => federation::run(&mut client, cmd, format).await,
        }
    })
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
            "--federates-with",
            "remote.org",
            "--federates-with",
            "other.org",
        ])
        .unwrap();
        let Command::Entry(EntryCommand::Create(create)) = args.command else {
            panic!("{:?}", args.command);
        };
        let request = entry::create_request(create).unwrap();
        assert_eq!(request.parent_id, "spiffe://example.org/signet/node/node-1");
        assert_eq!(request.x509_svid_ttl_seconds, 3_600);
        assert_eq!(request.selectors.len(), 1);
        assert_eq!(request.selectors[0].r#type, "unix");
        assert_eq!(request.selectors[0].value, "uid:1000");
        assert_eq!(request.dns_names, ["web.local"]);
        assert_eq!(request.federates_with, ["remote.org", "other.org"]);
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
    fn authority_commands_parse() {
        for (args, ok) in [
            (&["authority", "prepare", "root"][..], true),
            (&["authority", "prepare", "intermediate"][..], true),
            (&["authority", "prepare", "jwt"][..], true),
            (&["authority", "prepare", "upstream"][..], false),
            (&["authority", "activate", "abc", "--force"][..], true),
            (&["authority", "activate"][..], false),
            (&["authority", "taint", "abc"][..], true),
            (&["authority", "revoke", "abc", "--force"][..], true),
        ] {
            assert_eq!(parse(args).is_ok(), ok, "{args:?}");
        }
        let Command::Authority(AuthorityCommand::Revoke { id, force }) =
            parse(&["authority", "revoke", "abc"]).unwrap().command
        else {
            panic!("not a revoke");
        };
        assert_eq!((id.as_str(), force), ("abc", false));
    }

    #[test]
    fn admin_socket_has_a_default_and_goes_anywhere() {
        let args = parse(&["authority", "list"]).unwrap();
        assert_eq!(args.admin_socket, PathBuf::from(DEFAULT_SOCKET));
        let args = parse(&["authority", "list", "--admin-socket", "/run/x.sock"]).unwrap();
        assert_eq!(args.admin_socket, PathBuf::from("/run/x.sock"));
    }
}
