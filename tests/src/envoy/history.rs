//! Which leaf serials each Envoy showed over time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::EnvoyProcess;

/// The distinct leaf serials each of several Envoys has shown, sampled over
/// time, with when each was first seen.
#[derive(Debug, Clone)]
pub struct SerialHistory {
    started: Instant,
    seen: BTreeMap<String, Vec<(String, Duration)>>,
}

impl Default for SerialHistory {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            seen: BTreeMap::new(),
        }
    }
}

impl SerialHistory {
    /// Reads `/certs` of each Envoy and records the serials, returning
    /// whether any was new.
    ///
    /// # Errors
    /// As [`EnvoyProcess::cert_serials`].
    pub async fn sample(&mut self, envoys: &[&EnvoyProcess]) -> anyhow::Result<bool> {
        let mut new = false;
        for envoy in envoys {
            let serials = envoy.cert_serials().await?;
            let at = self.started.elapsed();
            let seen = self.seen.entry(envoy.name().to_owned()).or_default();
            for serial in serials {
                if !seen.iter().any(|(s, _)| *s == serial) {
                    seen.push((serial, at));
                    new = true;
                }
            }
        }
        Ok(new)
    }

    /// The serials seen for the Envoy `name`.
    #[must_use]
    pub fn of(&self, name: &str) -> BTreeSet<String> {
        self.seen
            .get(name)
            .into_iter()
            .flatten()
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// How long ago the Envoy `name` last showed a serial not seen before
    /// (since the first sample when it never did).
    #[must_use]
    pub fn since_last_new(&self, name: &str) -> Duration {
        let last = self
            .seen
            .get(name)
            .and_then(|serials| serials.iter().map(|(_, at)| *at).max())
            .unwrap_or_default();
        self.started.elapsed().saturating_sub(last)
    }

    /// One line per Envoy: each serial and when it was first seen.
    #[must_use]
    pub fn timeline(&self) -> String {
        self.seen
            .iter()
            .map(|(name, serials)| {
                let items: Vec<String> = serials
                    .iter()
                    .map(|(s, at)| format!("{s} at {at:.1?}"))
                    .collect();
                format!("{name}: {}", items.join(", "))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
