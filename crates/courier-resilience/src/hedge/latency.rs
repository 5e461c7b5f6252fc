//! Recent latencies, for a hedge delay at a percentile of what the dependency has been doing.

use std::time::Duration;

const SAMPLES: usize = 256;
const RECOMPUTE_EVERY: u32 = 32;

#[derive(Debug)]
pub(crate) struct Latencies {
    ring: Vec<Duration>,
    next: usize,
    since: u32,
    cached: Option<Duration>,
}

impl Latencies {
    pub(crate) fn new() -> Self {
        Self { ring: Vec::with_capacity(SAMPLES), next: 0, since: 0, cached: None }
    }

    pub(crate) fn record(&mut self, latency: Duration) {
        if self.ring.len() < SAMPLES {
            self.ring.push(latency);
        } else {
            self.ring[self.next] = latency;
        }
        self.next = (self.next + 1) % SAMPLES;
        self.since += 1;
    }

    /// The `percentile` (0..1) of the recent latencies, once there are `min_samples` of them.
    pub(crate) fn percentile(&mut self, percentile: f64, min_samples: usize) -> Option<Duration> {
        if self.ring.len() < min_samples.max(1) {
            return None;
        }
        if self.cached.is_none() || self.since >= RECOMPUTE_EVERY {
            let mut sorted = self.ring.clone();
            let index = ((sorted.len() - 1) as f64 * percentile.clamp(0.0, 1.0)).round() as usize;
            let (_, p, _) = sorted.select_nth_unstable(index);
            self.cached = Some(*p);
            self.since = 0;
        }
        self.cached
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_of_recent_samples() {
        let mut l = Latencies::new();
        assert_eq!(l.percentile(0.9, 10), None);
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.percentile(0.9, 10), Some(Duration::from_millis(90)));
    }
}
