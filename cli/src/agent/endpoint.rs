//! Where the Workload API listens, in the spellings the SPIFFE Workload
//! Endpoint standard (section 4) and people use: `unix:///path`,
//! `unix:/path`, or a bare path.

use std::path::PathBuf;

/// Where signet-agent puts its Workload API socket by default (its
/// `DEFAULT_PUBLIC_DIR`), reachable by every local user.
pub const DEFAULT_SOCKET: &str = "/tmp/signet-agent/public/api.sock";

/// The socket path of a Workload API address.
///
/// # Errors
/// For TCP addresses (signet-agent serves a unix socket only), a `unix:`
/// URI with an authority or a relative path (the standard requires an
/// absolute one), and an empty value.
pub fn parse(address: &str) -> Result<PathBuf, String> {
    let address = address.trim();
    if address.is_empty() {
        return Err("empty socket address".to_owned());
    }
    let Some(rest) = address.strip_prefix("unix:") else {
        if address.starts_with("tcp:") {
            return Err(
                "TCP Workload API addresses are not supported; give the unix socket".to_owned(),
            );
        }
        return Ok(PathBuf::from(address));
    };
    let path = match rest.strip_prefix("//") {
        // `unix://host/path`: a unix socket has no host.
        Some(after) if !after.is_empty() && !after.starts_with('/') => {
            return Err(format!(
                "{address:?} names a host; a unix socket URI is unix:///absolute/path"
            ));
        }
        Some(after) => after,
        None => rest,
    };
    if !path.starts_with('/') {
        return Err(format!(
            "{address:?}: a unix: URI needs an absolute path (unix:///run/agent.sock)"
        ));
    }
    if path.contains(['?', '#']) {
        return Err(format!(
            "{address:?}: a unix socket URI has no query or fragment"
        ));
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_table() {
        let rows: &[(&str, Result<&str, &str>)] = &[
            ("/run/agent.sock", Ok("/run/agent.sock")),
            ("./data/api.sock", Ok("./data/api.sock")),
            ("api.sock", Ok("api.sock")),
            ("unix:/run/agent.sock", Ok("/run/agent.sock")),
            ("unix:///run/agent.sock", Ok("/run/agent.sock")),
            ("  unix:///run/a.sock\n", Ok("/run/a.sock")),
            ("unix://host/run/agent.sock", Err("names a host")),
            ("unix://", Err("absolute path")),
            ("unix:relative.sock", Err("absolute path")),
            ("unix:///a.sock?x=1", Err("no query")),
            ("tcp://127.0.0.1:8081", Err("not supported")),
            ("tcp:127.0.0.1:8081", Err("not supported")),
            ("", Err("empty")),
        ];
        for (input, want) in rows {
            match (parse(input), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, PathBuf::from(want), "{input:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{input:?}: {got}"),
                (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
