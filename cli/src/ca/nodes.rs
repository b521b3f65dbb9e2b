//! `signet ca agent evict|ban|unban NODE`: ending a node's attestation.

use anyhow::Context as _;
use serde::Serialize;
use signet_proto::ca::v1 as pb;
use signet_proto::ca::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::grpc::status_error;
use crate::output::{self, Format};

/// The node lifecycle commands under `signet ca agent`.
#[derive(Debug, clap::Subcommand)]
pub(super) enum NodeLifecycle {
    /// Remove a node's attestation: its SVIDs are refused at once, its
    /// connections close, and it must attest again with a new join token.
    Evict {
        /// The node name, or its SPIFFE ID (spiffe://TD/signet/node/NAME).
        node: String,
    },
    /// Evict a node and refuse attestation of its name until `unban`.
    Ban {
        /// The node name, or its SPIFFE ID.
        node: String,
    },
    /// Let a banned node name attest again (with a new join token).
    Unban {
        /// The node name, or its SPIFFE ID.
        node: String,
    },
}

#[derive(Debug, Serialize)]
struct Outcome {
    action: &'static str,
    node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    was_attested: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    newly_banned: Option<bool>,
}

fn render(o: &Outcome) -> String {
    let who = o.spiffe_id.as_deref().unwrap_or(&o.node);
    match o.action {
        "evict" => format!("Evicted {who}; it must attest again with a new join token.\n"),
        "ban" => {
            let mut s = format!("Banned {who}");
            if o.was_attested == Some(true) {
                s.push_str(" (evicted)");
            }
            if o.newly_banned == Some(false) {
                s.push_str("; it was banned already");
            }
            s.push_str(".\n");
            s
        }
        _ => format!("Unbanned {who}; it may attest with a new join token.\n"),
    }
}

/// Runs one lifecycle command.
///
/// # Errors
/// A refused or failed admin call.
pub(super) async fn run(
    client: &mut AdminClient<Channel>,
    cmd: NodeLifecycle,
    format: Format,
) -> anyhow::Result<()> {
    let outcome = match cmd {
        NodeLifecycle::Evict { node } => {
            let r = client
                .evict_agent(pb::EvictAgentRequest { node: node.clone() })
                .await
                .map_err(status_error)
                .with_context(|| format!("evicting {node}"))?
                .into_inner();
            Outcome {
                action: "evict",
                node,
                spiffe_id: Some(r.spiffe_id),
                was_attested: Some(true),
                newly_banned: None,
            }
        }
        NodeLifecycle::Ban { node } => {
            let r = client
                .ban_agent(pb::BanAgentRequest { node: node.clone() })
                .await
                .map_err(status_error)
                .with_context(|| format!("banning {node}"))?
                .into_inner();
            Outcome {
                action: "ban",
                node,
                spiffe_id: Some(r.spiffe_id),
                was_attested: Some(r.was_attested),
                newly_banned: Some(r.newly_banned),
            }
        }
        NodeLifecycle::Unban { node } => {
            client
                .unban_agent(pb::UnbanAgentRequest { node: node.clone() })
                .await
                .map_err(status_error)
                .with_context(|| format!("unbanning {node}"))?;
            Outcome {
                action: "unban",
                node,
                spiffe_id: None,
                was_attested: None,
                newly_banned: None,
            }
        }
    };
    match format {
        Format::Json => output::print_json(&outcome),
        Format::Text => output::print(&render(&outcome)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_happened() {
        let ban = Outcome {
            action: "ban",
            node: "n1".into(),
            spiffe_id: Some("spiffe://td/signet/node/n1".into()),
            was_attested: Some(true),
            newly_banned: Some(false),
        };
        assert_eq!(
            render(&ban),
            "Banned spiffe://td/signet/node/n1 (evicted); it was banned already.\n"
        );
        let unban = Outcome {
            action: "unban",
            node: "n1".into(),
            spiffe_id: None,
            was_attested: None,
            newly_banned: None,
        };
        assert!(render(&unban).starts_with("Unbanned n1;"));
    }
}
