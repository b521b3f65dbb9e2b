//! Test support: a CA in a temporary directory with a clock the test moves.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::Ca;
use crate::config::{Config, Settings};

/// A clock that stands still until moved.
#[derive(Clone)]
pub struct TestClock(Arc<AtomicU64>);

impl TestClock {
    /// A clock at a fixed, recent time.
    pub fn new() -> Self {
        Self(Arc::new(AtomicU64::new(1_800_000_000)))
    }

    pub fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(self.0.load(Ordering::SeqCst))
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_secs(), Ordering::SeqCst);
    }

    pub fn clock(&self) -> super::Clock {
        let inner = self.clone();
        Arc::new(move || inner.now())
    }
}

/// A CA over `dir` with `settings` (trust domain `test.org` unless set).
pub fn open(dir: &std::path::Path, clock: &TestClock, mut settings: Settings) -> Ca {
    settings.data_dir = Some(dir.to_path_buf());
    settings
        .trust_domain
        .get_or_insert_with(|| "test.org".into());
    let config = Config::load(None, settings).unwrap();
    Ca::open_with_clock(Arc::new(config), clock.clock()).unwrap()
}
