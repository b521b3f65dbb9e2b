//! Times as the wire, the store and JWTs carry them: whole seconds since the
//! Unix epoch.

use std::time::SystemTime;

/// Whole seconds since the Unix epoch, negative before it, saturating at the
/// ends of `i64`.
#[must_use]
pub fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn unix_seconds_before_and_after_the_epoch() {
        let epoch = SystemTime::UNIX_EPOCH;
        assert_eq!(unix_seconds(epoch), 0);
        assert_eq!(unix_seconds(epoch + Duration::from_secs(5)), 5);
        assert_eq!(unix_seconds(epoch + Duration::from_millis(1_999)), 1);
        assert_eq!(unix_seconds(epoch - Duration::from_secs(5)), -5);
    }
}
