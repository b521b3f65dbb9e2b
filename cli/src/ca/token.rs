//! `signet ca token ...`: join tokens for attesting new nodes.

use serde::Serialize;
use signet_proto::ca::v1 as pb;
use signet_proto::ca::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::grpc::status_error;
use crate::output::{self, Format};
use crate::ttl::Ttl;

#[derive(Debug, Serialize)]
struct TokenView<'a> {
    token: &'a str,
    node_spiffe_id: &'a str,
    expires_at: &'a str,
}

pub(super) async fn create(
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
