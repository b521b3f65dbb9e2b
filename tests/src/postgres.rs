//! PostgreSQL for the integration tests: each test gets its own database
//! on the server the test command started (`SIGNET_TEST_PG`), or on a
//! private server when run by hand. The fixture itself lives in the
//! `signet-test-postgres` crate, which the CA's unit tests share.

pub use signet_test_postgres::{Database, Server, psql};

use std::process::Output;

/// Runs `signet-ca ARGS` to completion (no harness, no readiness wait), for
/// the commands and refusals that end by themselves.
///
/// # Errors
/// Missing binary, or it cannot be started.
pub fn signet_ca_once(args: &[&str]) -> anyhow::Result<Output> {
    Ok(std::process::Command::new(crate::binary("signet-ca")?)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .output()?)
}
