//! Where the store lives: `sqlite:<path>` (the embedded default) or a
//! `postgres://` / `postgresql://` URL. A URL's password is a secret: the
//! parsed form prints it as `***` everywhere (`Display`, `Debug`, errors).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// How the connection to PostgreSQL is protected (`sslmode=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP or a unix socket.
    Disable,
    /// TLS, without checking who the server is (libpq's `require`).
    Require,
    /// TLS to a server whose certificate chains to `sslrootcert` (or the
    /// web PKI roots when none is named) and names the host.
    VerifyFull,
}

/// A parsed PostgreSQL URL.
#[derive(Clone)]
pub struct PgUrl {
    /// What tokio-postgres parses: the URL without our TLS parameters.
    pub(super) config: String,
    pub(super) tls: TlsMode,
    pub(super) root_cert: Option<PathBuf>,
    redacted: String,
}

impl PgUrl {
    /// The TLS mode asked for.
    pub fn tls(&self) -> TlsMode {
        self.tls
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({})", self.redacted)
    }
}

/// The store the CA opens.
#[derive(Debug, Clone)]
pub enum StoreLocation {
    /// The SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(PgUrl),
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            Self::Postgres(u) => u.fmt(f),
        }
    }
}

/// Why a store location does not parse. Messages carry the redacted URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    /// Neither `sqlite:` nor `postgres://`.
    #[error("store {0:?} is neither sqlite:<path> nor a postgres:// or postgresql:// URL")]
    Scheme(String),
    /// `sqlite:` with nothing after it.
    #[error("store sqlite: needs a path")]
    EmptyPath,
    /// An `sslmode` we do not implement.
    #[error("store {url}: sslmode {mode:?} is not supported (use disable, require or verify-full)")]
    SslMode { url: String, mode: String },
    /// `sslrootcert` without `sslmode=verify-full`.
    #[error("store {0}: sslrootcert needs sslmode=verify-full")]
    RootCertWithoutVerify(String),
    /// tokio-postgres refused the rest of the URL.
    #[error("store {url}: {reason}")]
    Invalid { url: String, reason: String },
}

/// A store setting as given (flag, environment, file), not yet parsed:
/// parsing happens with the rest of the configuration, so that a bad value
/// is reported there with its password redacted (a command-line parser
/// would echo it verbatim).
#[derive(Clone, serde::Deserialize)]
#[serde(transparent)]
pub struct StoreSetting(String);

impl StoreSetting {
    /// Parses the setting.
    ///
    /// # Errors
    /// As [`StoreLocation::from_str`].
    pub fn parse(&self) -> Result<StoreLocation, LocationError> {
        self.0.parse()
    }
}

impl FromStr for StoreSetting {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for StoreSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreSetting({})", redact(&self.0))
    }
}

impl<'de> serde::Deserialize<'de> for StoreLocation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for StoreLocation {
    type Err = LocationError;

    fn from_str(s: &str) -> Result<Self, LocationError> {
        if let Some(path) = s.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(LocationError::EmptyPath);
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return parse_pg(s).map(Self::Postgres);
        }
        Err(LocationError::Scheme(redact(s)))
    }
}

fn parse_pg(s: &str) -> Result<PgUrl, LocationError> {
    let redacted = redact(s);
    let (base, query) = s.split_once('?').unwrap_or((s, ""));
    let mut tls = None;
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => {
                tls = Some(match v {
                    "disable" => TlsMode::Disable,
                    "require" => TlsMode::Require,
                    "verify-full" => TlsMode::VerifyFull,
                    other => {
                        return Err(LocationError::SslMode {
                            url: redacted,
                            mode: other.to_owned(),
                        });
                    }
                });
            }
            "sslrootcert" => root_cert = Some(PathBuf::from(v)),
            _ => kept.push(pair),
        }
    }
    let tls = tls.unwrap_or(TlsMode::Disable);
    if root_cert.is_some() && tls != TlsMode::VerifyFull {
        return Err(LocationError::RootCertWithoutVerify(redacted));
    }
    let config = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    tokio_postgres::Config::from_str(&config).map_err(|e| LocationError::Invalid {
        url: redacted.clone(),
        reason: redact(&e.to_string()),
    })?;
    Ok(PgUrl {
        config,
        tls,
        root_cert,
        redacted,
    })
}

/// `s` with the password of a URL's user info and any `password=`
/// parameter replaced by `***`.
pub fn redact(s: &str) -> String {
    let mut out = s.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = &out[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            let start = scheme_end + 3 + colon + 1;
            let end = scheme_end + 3 + at;
            out.replace_range(start..end, "***");
        }
    }
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("password=") {
        let value_start = i + "password=".len();
        result.push_str(&rest[..value_start]);
        result.push_str("***");
        let tail = &rest[value_start..];
        let value_end = tail.find(['&', ' ']).unwrap_or(tail.len());
        rest = &tail[value_end..];
    }
    result.push_str(rest);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_never_show_the_password() {
        let cases = [
            (
                "sqlite:/var/lib/signet/signet.db",
                "sqlite:/var/lib/signet/signet.db",
            ),
            ("sqlite:///data/s.db", "sqlite:/data/s.db"),
            (
                "postgres://signet:hunter2@db.example:5432/signet",
                "postgres://signet:***@db.example:5432/signet",
            ),
            (
                "postgresql://signet:p%40ss@db/signet?sslmode=verify-full&sslrootcert=/ca.pem",
                "postgresql://signet:***@db/signet?sslmode=verify-full&sslrootcert=/ca.pem",
            ),
            (
                "postgres://db/signet?user=signet&password=hunter2&sslmode=require",
                "postgres://db/signet?user=signet&password=***&sslmode=require",
            ),
        ];
        for (input, shown) in cases {
            let loc: StoreLocation = input.parse().unwrap();
            assert_eq!(loc.to_string(), shown, "{input}");
            assert!(!format!("{loc:?}").contains("hunter2"), "{input}");
        }
        let StoreLocation::Postgres(u) = "postgres://a:b@h/d?sslmode=verify-full&sslrootcert=/x"
            .parse()
            .unwrap()
        else {
            panic!("not postgres");
        };
        assert_eq!(u.tls(), TlsMode::VerifyFull);
        assert_eq!(u.root_cert.as_deref(), Some(std::path::Path::new("/x")));
        assert_eq!(u.config, "postgres://a:b@h/d");
    }

    #[test]
    fn bad_locations_are_refused_without_the_password() {
        for (input, want) in [
            ("mysql://u:hunter2@h/d", "neither sqlite"),
            ("sqlite:", "needs a path"),
            (
                "postgres://u:hunter2@h/d?sslmode=prefer",
                "sslmode \"prefer\"",
            ),
            (
                "postgres://u:hunter2@h/d?sslrootcert=/x",
                "needs sslmode=verify-full",
            ),
            (
                "postgres://u:hunter2@h:notaport/d",
                "store postgres://u:***@h:notaport/d",
            ),
        ] {
            let err = input.parse::<StoreLocation>().unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err}");
            assert!(!err.contains("hunter2"), "{input}: {err}");
        }
    }
}
