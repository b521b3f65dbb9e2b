//! `signet ca entry ...`: registration entries.

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use signet_identity::{SpiffeId, TrustDomain, reserved};
use signet_proto::ca::v1 as pb;
use signet_proto::ca::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use super::{EntryCommand, EntryCreateArgs};
use crate::grpc::status_error;
use crate::output::{self, Format};
use crate::ttl::Ttl;

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
    federates_with: Vec<String>,
    /// "api", or "policy:<name>" / "crd:<name>" for entries derived from a pod policy.
    origin: String,
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
            federates_with: e.federates_with,
            // A CA from before origins were reported stores every entry it lists.
            origin: if e.origin.is_empty() {
                "api".to_owned()
            } else {
                e.origin
            },
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
        f(&mut out, "Origin", &self.origin);
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
        if !self.federates_with.is_empty() {
            f(&mut out, "Federated", &self.federates_with.join(", "));
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

pub(super) async fn run(
    client: &mut AdminClient<Channel>,
    cmd: EntryCommand,
    format: Format,
) -> anyhow::Result<()> {
    match cmd {
        EntryCommand::Create(args) => {
            let request = create_request(args)?;
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

pub(super) fn create_request(args: EntryCreateArgs) -> anyhow::Result<pb::CreateEntryRequest> {
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
        federates_with: args
            .federates_with
            .iter()
            .map(ToString::to_string)
            .collect(),
    })
}

/// The SPIFFE ID signet-ca gives the node `name`: spiffe://<td>/signet/node/<name>.
fn node_id(trust_domain: &TrustDomain, name: &str) -> anyhow::Result<SpiffeId> {
    reserved::node_id(trust_domain, name)
        .with_context(|| format!("--parent-node {name:?} is not a valid node name"))
}

fn print_entry(entry: EntryView, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => output::print_json(&entry),
        Format::Text => output::print(&entry.to_text()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_node_names_are_refused_locally() {
        let td = TrustDomain::new("example.org").unwrap();
        assert!(node_id(&td, "a/b/c").is_err());
        assert!(node_id(&td, "").is_err());
        assert_eq!(
            node_id(&td, "n1").unwrap().as_str(),
            "spiffe://example.org/signet/node/n1"
        );
    }
}
