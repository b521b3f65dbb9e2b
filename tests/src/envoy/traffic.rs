//! Steady requests through a client Envoy, every outcome kept.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::http::http_get_in;
use crate::netns::Net;

/// A request every `interval` through a client Envoy, each on a new
/// connection, in a background task; every outcome is kept.
pub struct Traffic {
    running: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    task: Option<tokio::task::JoinHandle<()>>,
    started: Instant,
}

/// One request of a [`Traffic`].
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Since the traffic started.
    pub at: Duration,
    /// `Ok` for 200 with the expected body; otherwise what came back.
    pub result: Result<(), String>,
}

impl Traffic {
    /// Starts sending `GET /` to `127.0.0.1:port` every `interval`,
    /// expecting 200 and `expected_body`.
    #[must_use]
    pub fn start(port: u16, interval: Duration, expected_body: &str) -> Self {
        Self::start_in(Net::Host, port, interval, expected_body)
    }

    /// As [`Traffic::start`], to a port on the loopback of `net`.
    #[must_use]
    pub fn start_in(net: Net, port: u16, interval: Duration, expected_body: &str) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let expected = expected_body.to_owned();
        let task = tokio::spawn({
            let running = running.clone();
            let outcomes = outcomes.clone();
            async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while running.load(Ordering::Relaxed) {
                    ticker.tick().await;
                    let at = started.elapsed();
                    let result = match http_get_in(&net, port, "/").await {
                        Ok(r) if r.status == 200 && r.body == expected => Ok(()),
                        Ok(r) => Err(format!("status {}: {:?}", r.status, r.body)),
                        Err(e) => Err(format!("{e:#}")),
                    };
                    outcomes
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Outcome { at, result });
                }
            }
        });
        Self {
            running,
            outcomes,
            task: Some(task),
            started,
        }
    }

    /// Time since the start.
    #[must_use]
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Every outcome so far.
    #[must_use]
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `(succeeded, failed)` so far.
    #[must_use]
    pub fn counts(&self) -> (usize, usize) {
        let outcomes = self.outcomes.lock().unwrap_or_else(PoisonError::into_inner);
        let ok = outcomes.iter().filter(|o| o.result.is_ok()).count();
        (ok, outcomes.len() - ok)
    }

    /// The failures so far, one line each (`at 12.3s: why`).
    #[must_use]
    pub fn failures(&self) -> Vec<String> {
        self.outcomes()
            .into_iter()
            .filter_map(|o| o.result.err().map(|e| format!("at {:.1?}: {e}", o.at)))
            .collect()
    }

    /// Stops sending and returns every outcome.
    pub async fn stop(mut self) -> Vec<Outcome> {
        self.running.store(false, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
