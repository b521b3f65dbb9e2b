//! Exponential backoff with full jitter, and a jitter source.

use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};

/// A uniformly random number in [0, 1).
pub fn jitter_fraction() -> f64 {
    let mut b = [0u8; 4];
    if SystemRandom::new().fill(&mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_be_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

/// Delays that double from `base` up to `max`, each drawn uniformly from
/// [delay/2, delay] so that agents that failed together do not retry together.
pub struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            current: base,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        d.mul_f64(0.5 + 0.5 * jitter_fraction())
    }

    /// Back to the base delay after a success.
    pub fn reset(&mut self) {
        self.current = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let delays: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        for (d, cap) in delays.iter().zip([1, 2, 4, 8, 8, 8]) {
            assert!(
                *d <= Duration::from_secs(cap) && *d >= Duration::from_secs(cap) / 2,
                "{d:?} vs {cap}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
        let f = jitter_fraction();
        assert!((0.0..1.0).contains(&f));
    }
}
