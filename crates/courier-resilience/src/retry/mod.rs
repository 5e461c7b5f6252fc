//! Retries: exponential backoff with full jitter, a retry budget (at most ~20% extra load during an outage),
//! the server's `Retry-After` honoured, and only for requests a [`RetryPredicate`] says are safe (idempotent, or
//! carrying an idempotency key). A retry never starts if its backoff would pass the call's deadline.
//!
//! ```
//! use courier_resilience::retry::{RetryLayer, RetryPolicy, RetryPredicate};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(RetryLayer::new(RetryPolicy::budgeted(), RetryPredicate::always()))
//!     .service(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x * 2) }));
//! assert_eq!(svc.oneshot(21).await.unwrap(), 42);
//! # }
//! ```
//!
//! Why not tower's `Retry`: its `Policy` sees `&mut Req` and the raw result, so each user would rewrite backoff,
//! jitter, `Retry-After` and deadline handling; we keep tower's `TpsBudget` for the budget itself.

mod layer;
mod policy;
mod predicate;

use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Service, ServiceExt};

pub use layer::RetryLayer;
pub use policy::{RetryBudget, RetryPolicy};
pub use predicate::{Idempotency, RetryPredicate};

use crate::deadline;
use crate::error::{BoxFuture, ErrorOf, IntoResilienceError, ResilienceError};
use crate::route::Tried;

/// Retries failed calls of `S` (see the [module docs](self)).
#[derive(Debug)]
pub struct Retry<S, Req> {
    inner: S,
    policy: RetryPolicy,
    predicate: RetryPredicate<Req>,
}

impl<S, Req> Retry<S, Req> {
    /// Retries calls of `inner` that `predicate` allows, as `policy` says.
    pub fn new(inner: S, policy: RetryPolicy, predicate: RetryPredicate<Req>) -> Self {
        Self { inner, policy, predicate }
    }
}

impl<S: Clone, Req> Clone for Retry<S, Req> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), policy: self.policy.clone(), predicate: self.predicate.clone() }
    }
}

impl<S, Req> Service<Req> for Retry<S, Req>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Error: IntoResilienceError,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    Req: Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = ErrorOf<S, Req>;
    type Future = BoxFuture<Result<S::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(IntoResilienceError::into_resilience)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let clone = self.inner.clone();
        let mut svc = std::mem::replace(&mut self.inner, clone);
        let policy = self.policy.clone();
        if let Some(budget) = &policy.budget {
            budget.deposit();
        }
        if policy.max_attempts <= 1 || !self.predicate.allows(&req) {
            let fut = svc.call(req);
            return Box::pin(async move { fut.await.map_err(IntoResilienceError::into_resilience) });
        }
        Box::pin(async move {
            let tried = Tried::default();
            let mut attempt = 1;
            loop {
                let this = req.clone();
                let result = tried
                    .scope(async {
                        let ready = svc.ready().await?;
                        ready.call(this).await
                    })
                    .await
                    .map_err(IntoResilienceError::into_resilience);
                let error = match result {
                    Ok(response) => return Ok(response),
                    Err(error) => error,
                };
                let Some(delay) = next_delay(&policy, attempt, &error) else { return Err(error) };
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        })
    }
}

/// Whether to try again after attempt number `attempt` failed with `error`, and after how long. `None` gives up:
/// the attempts are spent, the error is not worth retrying, its `Retry-After` is too long, the wait would pass the
/// deadline, or the retry budget is spent (a retry that goes ahead is withdrawn from it).
pub(crate) fn next_delay<E>(policy: &RetryPolicy, attempt: u32, error: &ResilienceError<E>) -> Option<Duration>
where
    E: crate::CallError,
{
    if attempt >= policy.max_attempts || !error.is_retryable() {
        return None;
    }
    let mut delay = policy.backoff_for(attempt);
    if let Some(after) = error.retry_after() {
        if after > policy.max_retry_after {
            return None;
        }
        delay = delay.max(after);
    }
    if deadline::remaining().is_some_and(|left| delay >= left) {
        return None;
    }
    if policy.budget.as_ref().is_some_and(|b| !b.withdraw()) {
        metrics::counter!("courier_retry_budget_exhausted_total").increment(1);
        return None;
    }
    metrics::counter!("courier_retries_total").increment(1);
    tracing::debug!(attempt, ?delay, error = %error, "retrying");
    Some(delay)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use tokio::time::Instant;
    use tower::service_fn;

    use super::*;
    use crate::CallError;
    use crate::error::ErrorKind;
    use crate::timeout::Deadline;

    #[derive(Debug, thiserror::Error)]
    #[error("failed")]
    struct Fail {
        retryable: bool,
        after: Option<Duration>,
    }
    impl CallError for Fail {
        fn is_retryable(&self) -> bool {
            self.retryable
        }
        fn retry_after(&self) -> Option<Duration> {
            self.after
        }
    }

    #[derive(Debug, Clone)]
    struct Call {
        method: &'static str,
        key: Option<&'static str>,
    }
    impl Idempotency for Call {
        fn is_idempotent(&self) -> bool {
            self.method == "GET"
        }
        fn idempotency_key(&self) -> Option<&str> {
            self.key
        }
    }

    /// A service failing its first `failures` calls with `error()`, then answering.
    fn flaky<F: Fn() -> Fail + Clone + Send + 'static>(
        calls: Arc<AtomicU32>,
        failures: u32,
        error: F,
    ) -> impl Service<Call, Response = u32, Error = Fail, Future: Send> + Clone + Send + use<F> {
        service_fn(move |_: Call| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let error = error.clone();
            async move { if n < failures { Err(error()) } else { Ok(n) } }
        })
    }

    fn fast() -> RetryPolicy {
        RetryPolicy::new().backoff(Duration::from_millis(1), Duration::from_millis(10))
    }

    const GET: Call = Call { method: "GET", key: None };

    #[tokio::test(start_paused = true)]
    async fn budget_caps_extra_load_under_a_full_outage() {
        let calls = Arc::new(AtomicU32::new(0));
        let budget = RetryBudget::new(Duration::from_secs(10), 1, 0.2);
        let policy = fast().max_attempts(5).budget(budget);
        let svc = Retry::new(
            flaky(calls.clone(), u32::MAX, || Fail { retryable: true, after: None }),
            policy,
            RetryPredicate::idempotent(),
        );
        let n = 2000;
        for _ in 0..n {
            assert!(svc.clone().oneshot(GET).await.is_err());
        }
        let extra = calls.load(Ordering::SeqCst) - n;
        // 20% of the calls plus the reserve (1 a second for the 10-second window).
        assert!(extra <= n / 5 + 10 + 5, "{extra} retries for {n} calls");
        assert!(extra >= n / 10, "the budget should allow retries: {extra}");
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after() {
        let calls = Arc::new(AtomicU32::new(0));
        let after = Some(Duration::from_secs(3));
        let svc = Retry::new(
            flaky(calls.clone(), 1, move || Fail { retryable: true, after }),
            fast(),
            RetryPredicate::idempotent(),
        );
        let start = Instant::now();
        assert_eq!(svc.oneshot(GET).await.unwrap(), 1);
        assert!(start.elapsed() >= Duration::from_secs(3), "waited {:?}", start.elapsed());

        let calls = Arc::new(AtomicU32::new(0));
        let after = Some(Duration::from_secs(120));
        let svc = Retry::new(
            flaky(calls.clone(), 1, move || Fail { retryable: true, after }),
            fast(),
            RetryPredicate::idempotent(),
        );
        assert!(svc.oneshot(GET).await.is_err(), "a Retry-After beyond max_retry_after is not waited for");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn never_retries_an_unsafe_request() {
        let retryable = || Fail { retryable: true, after: None };
        let calls = Arc::new(AtomicU32::new(0));
        let svc = Retry::new(flaky(calls.clone(), 1, retryable), fast(), RetryPredicate::idempotent());
        assert!(svc.oneshot(Call { method: "POST", key: None }).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a POST without an idempotency key is sent once");

        let calls = Arc::new(AtomicU32::new(0));
        let svc = Retry::new(flaky(calls.clone(), 1, retryable), fast(), RetryPredicate::idempotent());
        assert!(svc.oneshot(Call { method: "POST", key: Some("order-7") }).await.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 2, "a POST with a key is retried");

        let calls = Arc::new(AtomicU32::new(0));
        let svc = Retry::new(
            flaky(calls.clone(), 1, || Fail { retryable: false, after: None }),
            fast(),
            RetryPredicate::idempotent(),
        );
        assert!(svc.oneshot(GET).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a permanent error is not retried");
    }

    #[tokio::test(start_paused = true)]
    async fn stops_before_the_deadline() {
        let calls = Arc::new(AtomicU32::new(0));
        let after = Some(Duration::from_secs(5));
        let retry = Retry::new(
            flaky(calls.clone(), 1, move || Fail { retryable: true, after }),
            fast(),
            RetryPredicate::idempotent(),
        );
        let start = Instant::now();
        let err = Deadline::new(retry, Duration::from_secs(2)).oneshot(GET).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Service, "the last error, not a timeout");
        assert_eq!(start.elapsed(), Duration::ZERO, "no backoff that cannot finish in time");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn backoff_is_capped_full_jitter() {
        let p = RetryPolicy::new().backoff(Duration::from_millis(100), Duration::from_millis(400));
        for retry in 1..10 {
            let cap = Duration::from_millis(100 * (1 << (retry - 1))).min(Duration::from_millis(400));
            assert!(p.backoff_for(retry) <= cap);
        }
    }
}
