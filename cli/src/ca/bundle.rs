//! `signet ca bundle ...`, and the bundle message checked into the identity
//! crate's type (also used by `signet ca mint`).

use anyhow::Context as _;
use signet_identity::TrustBundle;
use signet_proto::ca::v1 as pb;
use signet_proto::ca::v1::admin_client::AdminClient;
use signet_proto::convert::bundle_from_pb;
use tonic::transport::Channel;

use crate::grpc::status_error;
use crate::output;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum BundleFormat {
    Pem,
    Jwks,
}

pub(super) async fn show(
    client: &mut AdminClient<Channel>,
    format: BundleFormat,
) -> anyhow::Result<()> {
    let bundle = client
        .get_bundle(pb::GetBundleRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let bundle = trust_bundle(&bundle)?;
    match format {
        BundleFormat::Pem => output::print(&bundle.to_pem()),
        BundleFormat::Jwks => output::print(&format!("{}\n", bundle.to_jwks())),
    }
}

/// The identity crate's bundle for the wire message, checked on the way: a
/// server bug must not turn into a bundle file that trusts the wrong thing.
pub(super) fn trust_bundle(message: &pb::Bundle) -> anyhow::Result<TrustBundle> {
    bundle_from_pb(message).context("server sent an unusable bundle")
}
