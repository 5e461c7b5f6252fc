//! Waiting with a deadline instead of sleeping: [`WaitError`], [`wait_until`] and [`wait_until_async`].

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// A wait that ran out of time. Its message says what was expected and what was seen instead.
///
/// ```
/// # use courier_testkit::WaitError;
/// # use std::time::Duration;
/// let e = WaitError::new("2 consumed 'shop.order.placed.v1'", "1 consumed", Duration::from_secs(1));
/// assert_eq!(
///     e.to_string(),
///     "timed out after 1s waiting for 2 consumed 'shop.order.placed.v1'; saw 1 consumed"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {timeout:?} waiting for {expected}; saw {seen}")]
pub struct WaitError {
    /// What the wait was for.
    pub expected: String,
    /// What had been seen when time ran out.
    pub seen: String,
    /// How long it waited.
    pub timeout: Duration,
}

impl WaitError {
    /// A timeout waiting for `expected`, having seen `seen`.
    pub fn new(expected: impl Into<String>, seen: impl Into<String>, timeout: Duration) -> Self {
        Self { expected: expected.into(), seen: seen.into(), timeout }
    }
}

/// The longest pause between two checks of a polled condition.
const MAX_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Waits until `condition` returns `true`, checking it at once and then at short, growing intervals (1 ms up to
/// 50 ms), for at most `timeout`.
///
/// A plain closure cannot announce that it changed, so this polls. Prefer the [`TestHarness`](crate::TestHarness)
/// waits (`wait_consumed`, `wait_dead_lettered`, `wait_outcomes`), which wake on each recorded event instead.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::time::Duration;
///
/// let done = Arc::new(AtomicBool::new(false));
/// let flag = done.clone();
/// tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
/// courier_testkit::wait_until(Duration::from_secs(5), || done.load(Ordering::SeqCst)).await.unwrap();
/// # }
/// ```
pub async fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> Result<(), WaitError> {
    wait_until_async(timeout, || std::future::ready(condition())).await
}

/// Like [`wait_until`], for a condition that must await (an [`Admin`](courier_core::Admin) query, say).
///
/// Each check runs to completion; the deadline is checked between checks, so a check that hangs is not cut short:
/// give it its own timeout if that can happen.
pub async fn wait_until_async<F, Fut>(timeout: Duration, mut condition: F) -> Result<(), WaitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if condition().await {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(WaitError::new("the condition to hold", "it was still false", timeout));
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(MAX_POLL_INTERVAL);
    }
}
