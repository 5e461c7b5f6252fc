//! One endpoint behind the balancer: its service, load and health.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct Endpoint<S> {
    pub(crate) name: String,
    pub(crate) service: S,
    pub(crate) in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    /// Nanoseconds after the balancer's origin until which it is ejected; 0 when admitted.
    ejected_until: AtomicU64,
    /// The active health check's last verdict (true without health checks).
    pub(crate) probe_healthy: AtomicBool,
}

impl<S> Endpoint<S> {
    pub(crate) fn new(name: String, service: S) -> Self {
        Self {
            name,
            service,
            in_flight: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            probe_healthy: AtomicBool::new(true),
        }
    }

    /// Whether it may take calls now; readmits it once its cool-down passed.
    pub(crate) fn available(&self, origin: Instant, now: Instant) -> bool {
        if !self.probe_healthy.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if nanos(origin, now) < until {
            return false;
        }
        if self.ejected_until.compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            tracing::info!(endpoint = %self.name, "endpoint readmitted after its cool-down");
        }
        true
    }

    /// Time left until readmission, if ejected.
    pub(crate) fn cooldown_left(&self, origin: Instant, now: Instant) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        (until != 0).then(|| Duration::from_nanos(until.saturating_sub(nanos(origin, now))))
    }

    pub(crate) fn succeeded(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Counts a failure; ejects the endpoint for `cooldown` after `eject_after` in a row. Returns whether it did.
    pub(crate) fn failed(&self, eject_after: u32, cooldown: Duration, origin: Instant) -> bool {
        let n = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n < eject_after {
            return false;
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let until = nanos(origin, Instant::now() + cooldown).max(1);
        self.ejected_until.store(until, Ordering::Relaxed);
        tracing::warn!(endpoint = %self.name, failures = n, ?cooldown, "endpoint ejected");
        metrics::counter!("courier_balance_ejections_total", "endpoint" => self.name.clone()).increment(1);
        true
    }
}

fn nanos(origin: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}
