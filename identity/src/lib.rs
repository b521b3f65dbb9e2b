//! The identity core of Signet: SPIFFE IDs and trust domains, the X.509-SVID
//! issuance profile and its validation, and trust bundles.
//!
//! This crate depends on no async runtime and no RPC stack, so that the CA,
//! the node agent, the CLI and the fuzz targets share exactly the same rules.

pub mod bundle;
pub mod fsutil;
pub mod jwt;
pub mod keys;
pub mod reserved;
pub mod spiffe_id;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod unix_time;
pub mod x509;

pub use bundle::{BundleError, JwtAuthority, TrustBundle};
pub use keys::{KeyError, KeyType, PrivateKey};
pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
