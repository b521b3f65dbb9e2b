//! SPIFFE IDs and trust domain names, checked against section 2 of the SPIFFE-ID
//! standard.
//!
//! A [`SpiffeId`] or [`TrustDomain`] can only be built through a parser that
//! enforces every rule, so code that receives one never checks it again. The
//! rules are stricter than RFC 3986 allows in general, as the standard asks:
//! ASCII only, no percent-encoding, no port, user info, query or fragment.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest SPIFFE ID, in bytes, that implementations must accept (standard
/// section 2.3); we neither accept nor produce anything longer.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// The longest trust domain name, in bytes: the RFC 3986 limit on a URI host.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// The scheme and separator every SPIFFE ID starts with. Only this lowercase
/// spelling is accepted, so that equal IDs are equal strings.
pub const SPIFFE_SCHEME: &str = "spiffe://";

/// Why a string is not a SPIFFE ID or trust domain name.
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum SpiffeIdError {
    #[error("spiffe id is empty")]
    Empty,
    #[error("spiffe id must start with the lowercase scheme \"spiffe://\"")]
    WrongScheme,
    #[error("trust domain is missing")]
    MissingTrustDomain,
    #[error(
        "trust domain must not contain {ch:?}: only lowercase letters, digits, '.', '-' and '_' are allowed"
    )]
    BadTrustDomainChar { ch: char },
    #[error("trust domain is {len} bytes long; the limit is {MAX_TRUST_DOMAIN_LEN}")]
    TrustDomainTooLong { len: usize },
    #[error("trust domain must not have a port (':')")]
    Port,
    #[error("trust domain must not have user info ('@')")]
    UserInfo,
    #[error("spiffe id must not have a query ('?')")]
    Query,
    #[error("spiffe id must not have a fragment ('#')")]
    Fragment,
    #[error("spiffe id must not contain percent-encoding ('%')")]
    PercentEncoding,
    #[error("path must be empty or start with '/'")]
    RelativePath,
    #[error("path must not contain an empty segment ('//')")]
    EmptySegment,
    #[error("path must not contain a '.' or '..' segment")]
    DotSegment,
    #[error(
        "path must not contain {ch:?}: only letters, digits, '.', '-' and '_' are allowed in a segment"
    )]
    BadPathChar { ch: char },
    #[error("path must not end with '/'")]
    TrailingSlash,
    #[error("spiffe id is {len} bytes long; the limit is {MAX_SPIFFE_ID_LEN}")]
    TooLong { len: usize },
    #[error("expected a trust domain, found a spiffe id with a path")]
    TrustDomainHasPath,
}

/// The name of a trust domain, such as `example.org`: the authority part of
/// every SPIFFE ID issued in it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain {
    name: String,
}

impl TrustDomain {
    /// Checks a trust domain name. Both the bare name (`example.org`) and the
    /// trust domain's own SPIFFE ID (`spiffe://example.org`) are accepted.
    ///
    /// # Errors
    /// [`SpiffeIdError::MissingTrustDomain`] for an empty name, a character or
    /// length error for a name that breaks the standard's rules, and
    /// [`SpiffeIdError::TrustDomainHasPath`] for a SPIFFE ID that has a path.
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        if name.starts_with(SPIFFE_SCHEME) {
            let id = SpiffeId::parse(name)?;
            if !id.path().is_empty() {
                return Err(SpiffeIdError::TrustDomainHasPath);
            }
            return Ok(id.trust_domain);
        }
        check_trust_domain(name)?;
        Ok(Self {
            name: name.to_owned(),
        })
    }

    /// The bare name, such as `example.org`.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The trust domain's own SPIFFE ID as a string, such as `spiffe://example.org`.
    pub fn id_string(&self) -> String {
        format!("{SPIFFE_SCHEME}{}", self.name)
    }

    /// The trust domain's own SPIFFE ID: the one with an empty path, which the
    /// standard reserves for the trust domain's signing authority.
    pub fn to_spiffe_id(&self) -> SpiffeId {
        SpiffeId {
            id: self.id_string(),
            trust_domain: self.clone(),
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TrustDomain").field(&self.name).finish()
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::new(&name).map_err(serde::de::Error::custom)
    }
}

/// A SPIFFE ID such as `spiffe://example.org/ns/prod/sa/web`.
///
/// The string is kept exactly as parsed; since the rules leave no room for
/// alternative spellings, two IDs are equal exactly when their strings are.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    // Compared first, so that ordering is the ordering of the strings.
    id: String,
    trust_domain: TrustDomain,
}

impl SpiffeId {
    /// Parses a SPIFFE ID.
    ///
    /// # Errors
    /// The [`SpiffeIdError`] for the first rule of the standard that `s` breaks.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        check_len(s.len())?;
        let rest = s
            .strip_prefix(SPIFFE_SCHEME)
            .ok_or(SpiffeIdError::WrongScheme)?;
        let (name, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        check_trust_domain(name)?;
        check_path(path)?;
        Ok(Self {
            id: s.to_owned(),
            trust_domain: TrustDomain {
                name: name.to_owned(),
            },
        })
    }

    /// Builds the ID with `path` in `trust_domain`. The path is either empty or
    /// starts with `/`, and follows the same rules as in [`SpiffeId::parse`].
    ///
    /// # Errors
    /// [`SpiffeIdError::RelativePath`] if the path neither is empty nor starts
    /// with `/`; otherwise the error for the first rule the path breaks, or
    /// [`SpiffeIdError::TooLong`].
    pub fn from_path(trust_domain: &TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        check_path(path)?;
        Self::assemble(trust_domain, path)
    }

    /// Builds the ID whose path is `segments` joined by `/`. No segments gives
    /// the trust domain's own ID.
    ///
    /// # Errors
    /// The error for the first segment that is empty, a dot segment or has a
    /// character outside `[a-zA-Z0-9._-]` (including `/`), or
    /// [`SpiffeIdError::TooLong`].
    pub fn from_segments(
        trust_domain: &TrustDomain,
        segments: &[&str],
    ) -> Result<Self, SpiffeIdError> {
        let mut path = String::new();
        for segment in segments {
            check_segment(segment)?;
            path.push('/');
            path.push_str(segment);
        }
        Self::assemble(trust_domain, &path)
    }

    // `path` has been checked already; only the total length is left.
    fn assemble(trust_domain: &TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        check_len(SPIFFE_SCHEME.len() + trust_domain.name.len() + path.len())?;
        Ok(Self {
            id: format!("{SPIFFE_SCHEME}{}{path}", trust_domain.name),
            trust_domain: trust_domain.clone(),
        })
    }

    /// The trust domain the ID belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path: empty, or `/` followed by one or more segments joined by `/`.
    pub fn path(&self) -> &str {
        let start = SPIFFE_SCHEME.len() + self.trust_domain.name.len();
        self.id.get(start..).unwrap_or_default()
    }

    /// The whole ID, such as `spiffe://example.org/web`.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// Whether the ID was issued in `trust_domain`.
    pub fn is_member_of(&self, trust_domain: &TrustDomain) -> bool {
        self.trust_domain == *trust_domain
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SpiffeId").field(&self.id).finish()
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.id)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let id = String::deserialize(deserializer)?;
        Self::parse(&id).map_err(serde::de::Error::custom)
    }
}

fn check_len(len: usize) -> Result<(), SpiffeIdError> {
    if len > MAX_SPIFFE_ID_LEN {
        return Err(SpiffeIdError::TooLong { len });
    }
    Ok(())
}

fn check_trust_domain(name: &str) -> Result<(), SpiffeIdError> {
    if name.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    for ch in name.chars() {
        if !is_trust_domain_char(ch) {
            return Err(match ch {
                ':' => SpiffeIdError::Port,
                '@' => SpiffeIdError::UserInfo,
                other => reserved_char_error(other)
                    .unwrap_or(SpiffeIdError::BadTrustDomainChar { ch: other }),
            });
        }
    }
    if name.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong { len: name.len() });
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    let segments = path.strip_prefix('/').ok_or(SpiffeIdError::RelativePath)?;
    let mut segments = segments.split('/').peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() && segments.peek().is_none() {
            return Err(SpiffeIdError::TrailingSlash);
        }
        check_segment(segment)?;
    }
    Ok(())
}

fn check_segment(segment: &str) -> Result<(), SpiffeIdError> {
    if segment.is_empty() {
        return Err(SpiffeIdError::EmptySegment);
    }
    for ch in segment.chars() {
        if !is_path_char(ch) {
            return Err(reserved_char_error(ch).unwrap_or(SpiffeIdError::BadPathChar { ch }));
        }
    }
    if segment == "." || segment == ".." {
        return Err(SpiffeIdError::DotSegment);
    }
    Ok(())
}

// Characters that are legal in a URI but have a meaning the standard forbids in
// a SPIFFE ID; naming the rule helps more than "bad character".
fn reserved_char_error(ch: char) -> Option<SpiffeIdError> {
    match ch {
        '?' => Some(SpiffeIdError::Query),
        '#' => Some(SpiffeIdError::Fragment),
        '%' => Some(SpiffeIdError::PercentEncoding),
        _ => None,
    }
}

fn is_trust_domain_char(ch: char) -> bool {
    matches!(ch, 'a'..='z' | '0'..='9' | '.' | '-' | '_')
}

fn is_path_char(ch: char) -> bool {
    matches!(ch, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    use SpiffeIdError as E;

    fn id_of_len(len: usize) -> String {
        let prefix = "spiffe://td/";
        format!("{prefix}{}", "a".repeat(len - prefix.len()))
    }

    /// The trust domain and path a valid input parses to, or its error.
    type Expected<'a> = Result<(&'a str, &'a str), SpiffeIdError>;

    #[test]
    fn parse_table() {
        let long_td = "a".repeat(MAX_TRUST_DOMAIN_LEN);
        let too_long_td = "a".repeat(MAX_TRUST_DOMAIN_LEN + 1);
        let max_id = id_of_len(MAX_SPIFFE_ID_LEN);
        let over_id = id_of_len(MAX_SPIFFE_ID_LEN + 1);
        let rows: Vec<(String, Expected)> = vec![
            // Valid.
            ("spiffe://example.org".into(), Ok(("example.org", ""))),
            (
                "spiffe://example.org/web".into(),
                Ok(("example.org", "/web")),
            ),
            (
                "spiffe://k8s-west.example.com/ns/staging/sa/default".into(),
                Ok(("k8s-west.example.com", "/ns/staging/sa/default")),
            ),
            ("spiffe://td/Upper/CASE".into(), Ok(("td", "/Upper/CASE"))),
            ("spiffe://td/a.b-c_d".into(), Ok(("td", "/a.b-c_d"))),
            ("spiffe://td/...".into(), Ok(("td", "/..."))),
            ("spiffe://td/.a/a.".into(), Ok(("td", "/.a/a."))),
            ("spiffe://a_b-c.0/x".into(), Ok(("a_b-c.0", "/x"))),
            ("spiffe://1.2.3.4/x".into(), Ok(("1.2.3.4", "/x"))),
            (
                "spiffe://example.com/9eebccd2-12bf-40a6-b262-65fe0487d453".into(),
                Ok(("example.com", "/9eebccd2-12bf-40a6-b262-65fe0487d453")),
            ),
            (format!("spiffe://{long_td}"), Ok((long_td.as_str(), ""))),
            (max_id.clone(), Ok(("td", &max_id["spiffe://td".len()..]))),
            // Scheme.
            ("".into(), Err(E::Empty)),
            ("td".into(), Err(E::WrongScheme)),
            ("example.org/web".into(), Err(E::WrongScheme)),
            ("SPIFFE://td/x".into(), Err(E::WrongScheme)),
            ("Spiffe://td/x".into(), Err(E::WrongScheme)),
            ("https://td/x".into(), Err(E::WrongScheme)),
            ("spiffe:td/x".into(), Err(E::WrongScheme)),
            ("spiffe:/td/x".into(), Err(E::WrongScheme)),
            (" spiffe://td/x".into(), Err(E::WrongScheme)),
            // Trust domain.
            ("spiffe://".into(), Err(E::MissingTrustDomain)),
            ("spiffe:///path".into(), Err(E::MissingTrustDomain)),
            (
                "spiffe://Example.org/x".into(),
                Err(E::BadTrustDomainChar { ch: 'E' }),
            ),
            ("spiffe://TD".into(), Err(E::BadTrustDomainChar { ch: 'T' })),
            (
                "spiffe://t d/x".into(),
                Err(E::BadTrustDomainChar { ch: ' ' }),
            ),
            (
                "spiffe://tö/x".into(),
                Err(E::BadTrustDomainChar { ch: 'ö' }),
            ),
            (
                "spiffe://[::1]/x".into(),
                Err(E::BadTrustDomainChar { ch: '[' }),
            ),
            ("spiffe://td:8080/x".into(), Err(E::Port)),
            ("spiffe://td:/x".into(), Err(E::Port)),
            ("spiffe://user@td/x".into(), Err(E::UserInfo)),
            ("spiffe://user:pw@td/x".into(), Err(E::Port)),
            ("spiffe://td?q=1".into(), Err(E::Query)),
            ("spiffe://td#f".into(), Err(E::Fragment)),
            ("spiffe://t%41d/x".into(), Err(E::PercentEncoding)),
            (
                format!("spiffe://{too_long_td}"),
                Err(E::TrustDomainTooLong { len: 256 }),
            ),
            // Path.
            ("spiffe://td/".into(), Err(E::TrailingSlash)),
            ("spiffe://td/a/".into(), Err(E::TrailingSlash)),
            ("spiffe://td//".into(), Err(E::EmptySegment)),
            ("spiffe://td//a".into(), Err(E::EmptySegment)),
            ("spiffe://td/a//b".into(), Err(E::EmptySegment)),
            ("spiffe://td/.".into(), Err(E::DotSegment)),
            ("spiffe://td/..".into(), Err(E::DotSegment)),
            ("spiffe://td/./a".into(), Err(E::DotSegment)),
            ("spiffe://td/a/../b".into(), Err(E::DotSegment)),
            ("spiffe://td/a/./".into(), Err(E::DotSegment)),
            ("spiffe://td/a?q=1".into(), Err(E::Query)),
            ("spiffe://td/?q".into(), Err(E::Query)),
            ("spiffe://td/a#f".into(), Err(E::Fragment)),
            ("spiffe://td/%41".into(), Err(E::PercentEncoding)),
            ("spiffe://td/a b".into(), Err(E::BadPathChar { ch: ' ' })),
            ("spiffe://td/a:b".into(), Err(E::BadPathChar { ch: ':' })),
            ("spiffe://td/a@b".into(), Err(E::BadPathChar { ch: '@' })),
            ("spiffe://td/a+b".into(), Err(E::BadPathChar { ch: '+' })),
            ("spiffe://td/a~b".into(), Err(E::BadPathChar { ch: '~' })),
            (
                "spiffe://td/caf\u{e9}".into(),
                Err(E::BadPathChar { ch: 'é' }),
            ),
            (
                "spiffe://td/\u{1F600}".into(),
                Err(E::BadPathChar { ch: '\u{1F600}' }),
            ),
            ("spiffe://td/a\\b".into(), Err(E::BadPathChar { ch: '\\' })),
            ("spiffe://td/a\0".into(), Err(E::BadPathChar { ch: '\0' })),
            ("spiffe://td/a\n".into(), Err(E::BadPathChar { ch: '\n' })),
            // Length.
            (over_id.clone(), Err(E::TooLong { len: 2049 })),
        ];
        for (input, want) in rows {
            let got = SpiffeId::parse(&input);
            match (&got, &want) {
                (Ok(id), Ok((td, path))) => {
                    assert_eq!(id.trust_domain().as_str(), *td, "{input:?}");
                    assert_eq!(id.path(), *path, "{input:?}");
                    assert_eq!(id.as_str(), input, "{input:?}");
                }
                (Err(got), Err(want)) => assert_eq!(got, want, "{input:?}"),
                _ => panic!("{input:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn limits_are_exact() {
        assert_eq!(id_of_len(MAX_SPIFFE_ID_LEN).len(), 2048);
        assert!(SpiffeId::parse(&id_of_len(2048)).is_ok());
        assert_eq!(
            SpiffeId::parse(&id_of_len(2049)),
            Err(E::TooLong { len: 2049 })
        );
        assert!(TrustDomain::new(&"a".repeat(255)).is_ok());
        assert_eq!(
            TrustDomain::new(&"a".repeat(256)),
            Err(E::TrustDomainTooLong { len: 256 })
        );
    }

    #[test]
    fn trust_domain_table() {
        let rows: Vec<(&str, Result<&str, SpiffeIdError>)> = vec![
            ("example.org", Ok("example.org")),
            ("spiffe://example.org", Ok("example.org")),
            ("a", Ok("a")),
            ("a_b-c.d", Ok("a_b-c.d")),
            ("", Err(E::MissingTrustDomain)),
            ("spiffe://", Err(E::MissingTrustDomain)),
            ("spiffe://example.org/", Err(E::TrailingSlash)),
            ("spiffe://example.org/web", Err(E::TrustDomainHasPath)),
            (
                "SPIFFE://example.org",
                Err(E::BadTrustDomainChar { ch: 'S' }),
            ),
            ("Example.org", Err(E::BadTrustDomainChar { ch: 'E' })),
            ("example.org/web", Err(E::BadTrustDomainChar { ch: '/' })),
            ("exa mple", Err(E::BadTrustDomainChar { ch: ' ' })),
            ("exämple", Err(E::BadTrustDomainChar { ch: 'ä' })),
            ("example.org:443", Err(E::Port)),
            ("me@example.org", Err(E::UserInfo)),
            ("example.org?x", Err(E::Query)),
            ("example.org#x", Err(E::Fragment)),
            ("ex%61mple", Err(E::PercentEncoding)),
        ];
        for (input, want) in rows {
            let got = TrustDomain::new(input);
            match (&got, &want) {
                (Ok(td), Ok(name)) => assert_eq!(td.as_str(), *name, "{input:?}"),
                (Err(got), Err(want)) => assert_eq!(got, want, "{input:?}"),
                _ => panic!("{input:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn trust_domain_accessors() {
        let td = TrustDomain::new("example.org").unwrap();
        assert_eq!(td.to_string(), "example.org");
        assert_eq!(td.id_string(), "spiffe://example.org");
        let id = td.to_spiffe_id();
        assert_eq!(id.as_str(), "spiffe://example.org");
        assert_eq!(id.path(), "");
        assert_eq!(id, SpiffeId::parse("spiffe://example.org").unwrap());
        assert_eq!("example.org".parse::<TrustDomain>().unwrap(), td);
        assert_eq!(format!("{td:?}"), "TrustDomain(\"example.org\")");
    }

    #[test]
    fn from_path_table() {
        let td = TrustDomain::new("td").unwrap();
        let rows: Vec<(&str, Result<&str, SpiffeIdError>)> = vec![
            ("", Ok("spiffe://td")),
            ("/a", Ok("spiffe://td/a")),
            ("/a/B/c", Ok("spiffe://td/a/B/c")),
            ("a", Err(E::RelativePath)),
            ("/", Err(E::TrailingSlash)),
            ("/a/", Err(E::TrailingSlash)),
            ("//a", Err(E::EmptySegment)),
            ("/../a", Err(E::DotSegment)),
            ("/a?b", Err(E::Query)),
        ];
        for (path, want) in rows {
            let got = SpiffeId::from_path(&td, path);
            assert_eq!(
                got.as_ref().map(SpiffeId::as_str),
                want.as_deref(),
                "{path:?}"
            );
        }
        let long_path = format!("/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        assert!(matches!(
            SpiffeId::from_path(&td, &long_path),
            Err(E::TooLong { .. })
        ));
    }

    #[test]
    fn from_segments_table() {
        let td = TrustDomain::new("example.org").unwrap();
        let rows: Vec<(&[&str], Result<&str, SpiffeIdError>)> = vec![
            (&[], Ok("spiffe://example.org")),
            (
                &["ns", "prod", "sa", "web"],
                Ok("spiffe://example.org/ns/prod/sa/web"),
            ),
            (&["a/b"], Err(E::BadPathChar { ch: '/' })),
            (&["a", ""], Err(E::EmptySegment)),
            (&[".."], Err(E::DotSegment)),
            (&["a", "%2F"], Err(E::PercentEncoding)),
        ];
        for (segments, want) in rows {
            let got = SpiffeId::from_segments(&td, segments);
            assert_eq!(
                got.as_ref().map(SpiffeId::as_str),
                want.as_deref(),
                "{segments:?}"
            );
        }
        let id = SpiffeId::from_segments(&td, &["web"]).unwrap();
        assert_eq!(id.trust_domain(), &td);
        assert_eq!(id.path(), "/web");
    }

    #[test]
    fn membership() {
        let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
        assert!(id.is_member_of(&TrustDomain::new("example.org").unwrap()));
        assert!(!id.is_member_of(&TrustDomain::new("example.com").unwrap()));
        assert!(!id.is_member_of(&TrustDomain::new("org").unwrap()));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "spiffe://example.org",
            "spiffe://example.org/web",
            "spiffe://a.b-c_d/E/f.g/h-i_j",
        ] {
            let id: SpiffeId = s.parse().unwrap();
            assert_eq!(id.to_string(), s);
            assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id);
            assert_eq!(format!("{id:?}"), format!("SpiffeId({s:?})"));
        }
    }

    #[test]
    fn ordering_follows_the_string() {
        let mut ids: Vec<SpiffeId> = ["spiffe://b/a", "spiffe://a/b", "spiffe://a"]
            .into_iter()
            .map(|s| SpiffeId::parse(s).unwrap())
            .collect();
        ids.sort();
        let sorted: Vec<&str> = ids.iter().map(SpiffeId::as_str).collect();
        assert_eq!(sorted, ["spiffe://a", "spiffe://a/b", "spiffe://b/a"]);
    }

    #[test]
    fn serde_as_strings() {
        let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://example.org/web\"");
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);

        let td = TrustDomain::new("example.org").unwrap();
        let json = serde_json::to_string(&td).unwrap();
        assert_eq!(json, "\"example.org\"");
        assert_eq!(serde_json::from_str::<TrustDomain>(&json).unwrap(), td);
        assert_eq!(
            serde_json::from_str::<TrustDomain>("\"spiffe://example.org\"").unwrap(),
            td
        );
    }

    #[test]
    fn serde_rejects_invalid() {
        let err = serde_json::from_str::<SpiffeId>("\"spiffe://example.org/a//b\"").unwrap_err();
        assert!(err.to_string().contains("empty segment"), "{err}");
        assert!(serde_json::from_str::<SpiffeId>("\"https://example.org\"").is_err());
        assert!(serde_json::from_str::<SpiffeId>("42").is_err());
        assert!(serde_json::from_str::<TrustDomain>("\"Example.org\"").is_err());
        assert!(serde_json::from_str::<TrustDomain>("\"\"").is_err());
    }

    #[test]
    fn messages_are_lowercase() {
        let errors = [
            E::Empty,
            E::WrongScheme,
            E::MissingTrustDomain,
            E::BadTrustDomainChar { ch: 'X' },
            E::TrustDomainTooLong { len: 300 },
            E::Port,
            E::UserInfo,
            E::Query,
            E::Fragment,
            E::PercentEncoding,
            E::RelativePath,
            E::EmptySegment,
            E::DotSegment,
            E::BadPathChar { ch: ' ' },
            E::TrailingSlash,
            E::TooLong { len: 3000 },
            E::TrustDomainHasPath,
        ];
        for error in errors {
            let message = error.to_string();
            assert!(message.starts_with(char::is_lowercase), "{message}");
            assert!(!message.ends_with('.'), "{message}");
        }
        assert_eq!(
            E::TooLong { len: 3000 }.to_string(),
            "spiffe id is 3000 bytes long; the limit is 2048"
        );
    }
}
