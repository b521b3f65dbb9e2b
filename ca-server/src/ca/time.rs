//! The CA's conversions between wire/stored integers and time values, in
//! one place: the store and the protocol carry Unix seconds and TTL seconds
//! as `i64`.

use std::time::{Duration, SystemTime};

/// Unix seconds of `t`; 0 before the epoch.
pub fn unix(t: SystemTime) -> i64 {
    signet_identity::unix_time::unix_seconds(t).max(0)
}

/// The time `secs` Unix seconds denote; negative values are the epoch.
pub fn from_unix(secs: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// Whole seconds of `d` as the `i64` the store and the wire carry (saturating).
pub fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// A requested lifetime in seconds: `None` for 0 or less ("the default").
/// Callers that must refuse negative values check before calling.
pub fn ttl_from_secs(secs: i64) -> Option<Duration> {
    signet_proto::convert::optional_seconds(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(unix(SystemTime::UNIX_EPOCH), 0);
        assert_eq!(unix(from_unix(1_700_000_000)), 1_700_000_000);
        assert_eq!(from_unix(-5), SystemTime::UNIX_EPOCH);
        assert_eq!(ttl_from_secs(0), None);
        assert_eq!(ttl_from_secs(-1), None);
        assert_eq!(ttl_from_secs(90), Some(Duration::from_secs(90)));
        assert_eq!(secs(Duration::from_millis(90_500)), 90);
        assert_eq!(secs(Duration::MAX), i64::MAX);
    }
}
