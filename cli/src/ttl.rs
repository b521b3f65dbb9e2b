//! Lifetimes given on the command line (`--ttl 1h`), checked once so the rest
//! of the CLI handles whole, positive seconds only.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A positive lifetime in whole seconds, written the humantime way: `30s`,
/// `90m`, `1h 30m`, `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(i64);

impl Ttl {
    /// The lifetime in seconds, as the admin API counts.
    pub fn seconds(self) -> i64 {
        self.0
    }
}

impl FromStr for Ttl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let d: Duration = humantime::parse_duration(s.trim())
            .map_err(|e| format!("{e} (examples: 30s, 15m, 1h, 7d)"))?;
        if d.subsec_nanos() != 0 {
            return Err("must be a whole number of seconds".to_owned());
        }
        if d.is_zero() {
            // The API reads 0 as "the server default"; saying 0 on purpose is
            // more likely a mistake than a request for the default.
            return Err("must be at least 1s (leave --ttl out for the server default)".to_owned());
        }
        let secs = i64::try_from(d.as_secs()).map_err(|_| "is too long".to_owned())?;
        Ok(Self(secs))
    }
}

impl fmt::Display for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = u64::try_from(self.0).unwrap_or(0);
        write!(
            f,
            "{}",
            humantime::format_duration(Duration::from_secs(secs))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let rows: &[(&str, Result<i64, &str>)] = &[
            ("30s", Ok(30)),
            ("1h", Ok(3_600)),
            ("90m", Ok(5_400)),
            ("1h 30m", Ok(5_400)),
            ("7d", Ok(604_800)),
            (" 2h ", Ok(7_200)),
            ("0s", Err("at least 1s")),
            ("1500ms", Err("whole number")),
            ("", Err("examples")),
            ("1", Err("examples")),
            ("1 fortnight", Err("examples")),
            ("-5s", Err("examples")),
        ];
        for (input, want) in rows {
            let got = input.parse::<Ttl>();
            match (got, want) {
                (Ok(ttl), Ok(secs)) => assert_eq!(ttl.seconds(), *secs, "{input:?}"),
                (Err(e), Err(part)) => assert!(e.contains(part), "{input:?}: {e}"),
                (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["30s", "1h", "1h 30m", "7days"] {
            let ttl: Ttl = s.parse().unwrap();
            assert_eq!(ttl.to_string().parse::<Ttl>().unwrap(), ttl, "{s}");
        }
    }
}
