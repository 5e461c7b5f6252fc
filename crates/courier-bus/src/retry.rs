//! The retry policy: immediate retries, then delayed redelivery with exponential backoff and jitter, then the
//! dead-letter queue.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::HandlerError;

/// A caller's rule for which failures may be retried (see [`Retry::retry_if`]).
type RetryPredicate = Arc<dyn Fn(&HandlerError) -> bool + Send + Sync>;

/// When a failed message is tried again, and when it is given up on.
///
/// A delivery runs the handler once plus `immediate` more times in a row. If it still fails, the message is
/// redelivered later (through the transport, so it survives a restart and frees the consumer meanwhile), up to
/// `redeliveries` times, waiting `base * 2^(n-1)` (capped at `max_delay`) before redelivery `n`, with jitter: the
/// wait is drawn uniformly from `[delay * (1 - jitter), delay]`, so a burst of failures does not come back at once,
/// and never comes back at zero delay (the hot loop some brokers fall into). After that, the dead-letter queue.
/// Permanent and undecodable failures skip all retries.
///
/// ```
/// use courier_bus::Retry;
/// use std::time::Duration;
/// let policy = Retry::immediate(2).then_backoff(5, Duration::from_secs(1));
/// assert_eq!(policy.max_deliveries(), 6);
/// ```
#[derive(Clone)]
pub struct Retry {
    immediate: u32,
    redeliveries: u32,
    base: Duration,
    max_delay: Duration,
    jitter: f64,
    retry_if: Option<RetryPredicate>,
}

impl fmt::Debug for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("immediate", &self.immediate)
            .field("redeliveries", &self.redeliveries)
            .field("base", &self.base)
            .field("max_delay", &self.max_delay)
            .field("jitter", &self.jitter)
            .field("retry_if", &self.retry_if.is_some())
            .finish()
    }
}

impl Default for Retry {
    /// Two immediate retries, then 3 redeliveries after about 1 s, 2 s, 4 s, then the dead-letter queue.
    fn default() -> Self {
        Self::immediate(2).then_backoff(3, Duration::from_secs(1))
    }
}

/// What to do with a delivery whose handler failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RetryDecision {
    /// Redeliver after this delay.
    Redeliver(Duration),
    /// Give up: dead-letter it.
    DeadLetter,
}

impl Retry {
    /// No retries at all: the first failure dead-letters the message.
    pub fn none() -> Self {
        Self {
            immediate: 0,
            redeliveries: 0,
            base: Duration::ZERO,
            max_delay: Duration::ZERO,
            jitter: 0.5,
            retry_if: None,
        }
    }

    /// `n` immediate retries within one delivery.
    pub fn immediate(n: u32) -> Self {
        Self { immediate: n, ..Self::none() }
    }

    /// Then `redeliveries` delayed redeliveries, the first after about `base`, doubling each time (capped at 100x
    /// `base` unless [`max_delay`](Self::max_delay) says otherwise).
    pub fn then_backoff(mut self, redeliveries: u32, base: Duration) -> Self {
        self.redeliveries = redeliveries;
        self.base = base;
        self.max_delay = base.saturating_mul(100);
        self
    }

    /// Caps one redelivery delay.
    pub fn max_delay(mut self, max: Duration) -> Self {
        self.max_delay = max;
        self
    }

    /// The jitter fraction in `[0, 1]` (default 0.5): a delay `d` becomes a random wait in `[d * (1 - j), d]`.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction.clamp(0.0, 1.0);
        self
    }

    /// Retries only failures this predicate accepts (transient ones are retried by default; permanent never).
    pub fn retry_if(mut self, predicate: impl Fn(&HandlerError) -> bool + Send + Sync + 'static) -> Self {
        self.retry_if = Some(Arc::new(predicate));
        self
    }

    /// Immediate retries per delivery.
    pub fn immediate_retries(&self) -> u32 {
        self.immediate
    }

    /// How many deliveries a message gets at most before the dead-letter queue.
    pub fn max_deliveries(&self) -> u32 {
        self.redeliveries + 1
    }

    /// Whether this failure may be retried at all.
    pub fn should_retry(&self, error: &HandlerError) -> bool {
        error.is_transient() && self.retry_if.as_ref().is_none_or(|p| p(error))
    }

    /// The delay before redelivery number `redelivery` (1-based), before jitter.
    pub fn backoff(&self, redelivery: u32) -> Duration {
        let factor = 2u32.saturating_pow(redelivery.saturating_sub(1).min(30));
        self.base.saturating_mul(factor).min(self.max_delay.max(self.base))
    }

    /// Decides after delivery number `delivery_count` (1-based) failed with `error`.
    pub fn decide(&self, delivery_count: u32, error: &HandlerError) -> RetryDecision {
        if !self.should_retry(error) || delivery_count >= self.max_deliveries() {
            return RetryDecision::DeadLetter;
        }
        let delay = self.backoff(delivery_count);
        let low = 1.0 - self.jitter;
        let factor = low + rand::random::<f64>() * (1.0 - low);
        RetryDecision::Redeliver(delay.mul_f64(factor).max(Duration::from_millis(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_then_dead_letters() {
        let p = Retry::immediate(1).then_backoff(3, Duration::from_millis(100));
        let err = HandlerError::transient("boom");
        for (n, full) in [(1, 100), (2, 200), (3, 400)] {
            match p.decide(n, &err) {
                RetryDecision::Redeliver(d) => {
                    assert!(d <= Duration::from_millis(full) && d >= Duration::from_millis(full / 2), "{d:?}")
                }
                RetryDecision::DeadLetter => panic!("gave up too early at {n}"),
            }
        }
        assert_eq!(p.decide(4, &err), RetryDecision::DeadLetter);
    }

    #[test]
    fn permanent_failures_skip_retries() {
        let p = Retry::default();
        assert_eq!(p.decide(1, &HandlerError::permanent("invalid")), RetryDecision::DeadLetter);
        let p = Retry::default().retry_if(|e| !e.to_string().contains("fatal"));
        assert_eq!(p.decide(1, &HandlerError::transient("fatal: disk")), RetryDecision::DeadLetter);
    }

    #[test]
    fn delay_is_capped() {
        let p = Retry::none().then_backoff(20, Duration::from_secs(1)).max_delay(Duration::from_secs(10));
        assert_eq!(p.backoff(15), Duration::from_secs(10));
    }
}
