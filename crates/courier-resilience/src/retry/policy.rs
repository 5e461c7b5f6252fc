use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tower::retry::budget::{Budget, TpsBudget};

/// Caps retries at a fraction of recent calls, so a full outage adds at most that much load (tower's
/// [`TpsBudget`]): every call deposits, every retry withdraws.
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<TpsBudget>,
    percent: f32,
}

impl RetryBudget {
    /// Allows retries up to `percent` (0.2 = 20%) of the calls in the last `ttl` (1 to 60 seconds; clamped), plus
    /// `min_per_sec` retries a second however few calls there were.
    pub fn new(ttl: Duration, min_per_sec: u32, percent: f32) -> Self {
        let ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        let percent = if percent.is_finite() { percent.clamp(0.0, 1000.0) } else { 0.2 };
        Self { inner: Arc::new(TpsBudget::new(ttl, min_per_sec.min(i32::MAX as u32 - 1), percent)), percent }
    }

    pub(crate) fn deposit(&self) {
        self.inner.deposit();
    }

    pub(crate) fn withdraw(&self) -> bool {
        self.inner.withdraw()
    }
}

impl Default for RetryBudget {
    /// 20% of the calls of the last 10 seconds, plus 10 retries a second.
    fn default() -> Self {
        Self::new(Duration::from_secs(10), 10, 0.2)
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget").field("percent", &self.percent).finish_non_exhaustive()
    }
}

/// How to retry: how many attempts, how long to wait between them (exponential backoff with full jitter), how
/// long a server's `Retry-After` may make us wait, and the budget shared by every clone of the layer.
///
/// ```
/// use std::time::Duration;
/// use courier_resilience::retry::{RetryBudget, RetryPolicy};
///
/// let policy = RetryPolicy::new()
///     .max_attempts(4)
///     .backoff(Duration::from_millis(20), Duration::from_secs(1))
///     .budget(RetryBudget::new(Duration::from_secs(10), 5, 0.2));
/// assert_eq!(policy.attempts(), 4);
/// ```
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub(crate) max_attempts: u32,
    pub(crate) base: Duration,
    pub(crate) max_delay: Duration,
    pub(crate) max_retry_after: Duration,
    pub(crate) budget: Option<RetryBudget>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryPolicy {
    /// 3 attempts, backoff from 50 ms up to 2 s, `Retry-After` honoured up to 30 s, the default 20% budget.
    pub fn new() -> Self {
        Self {
            max_attempts: 3,
            base: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(30),
            budget: Some(RetryBudget::default()),
        }
    }

    /// The default policy: the name the design uses (`RetryPolicy::budgeted()`).
    pub fn budgeted() -> Self {
        Self::new()
    }

    /// Attempts in all, the first included (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The backoff before retry `n` is a random duration in `[0, min(max, base * 2^(n-1))]` (full jitter).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base = base;
        self.max_delay = max.max(base);
        self
    }

    /// A `Retry-After` longer than this ends the retries (the error is returned at once).
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// Uses `budget` (share one budget between layers by cloning it).
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Retries without a budget (only for tests and callers with a budget of their own).
    pub fn no_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// Attempts in all.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// A backoff before retry number `retry` (1 for the first retry), with full jitter.
    pub fn backoff_for(&self, retry: u32) -> Duration {
        let cap = self.base.saturating_mul(1u32 << (retry.saturating_sub(1)).min(20)).min(self.max_delay);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(if nanos == 0 { 0 } else { rand::rng().random_range(0..=nanos) })
    }
}
