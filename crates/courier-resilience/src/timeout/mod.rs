//! Time limits: [`Deadline`] bounds the whole call (every retry and backoff included) and makes the deadline
//! visible to the layers below through [`crate::deadline`]; [`AttemptTimeout`] bounds one attempt, never past
//! the deadline.
//!
//! ```
//! use std::time::Duration;
//! use courier_resilience::timeout::{AttemptTimeoutLayer, DeadlineLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(DeadlineLayer::new(Duration::from_secs(2)))
//!     .layer(AttemptTimeoutLayer::new(Duration::from_millis(500)))
//!     .service(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x + 1) }));
//! assert_eq!(svc.oneshot(1).await.unwrap(), 2);
//! # }
//! ```
//!
//! Why not tower's `Timeout`: it boxes every error into `BoxError` (losing the transport's error type the other
//! layers classify) and cannot shorten itself to a deadline set further up.
//!
//! These layers use a runtime timer per call. The fused [`ResiliencePipeline`](crate::pipeline) does not: its
//! attempts share a watchdog (one sweeper task per pipeline, sleeping until the earliest limit of the calls that
//! wait), because registering and cancelling a tokio timer take the runtime's one timer lock, which was 40% of the
//! pipeline's cost on loopback HTTP. No crate offers a shared, sharded table of limits like it; its limits fire at
//! the same millisecond as the runtime's timers.

mod layer;
#[cfg_attr(not(feature = "pipeline"), allow(dead_code))]
pub(crate) mod watchdog;

use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::Service;

pub use layer::{AttemptTimeoutLayer, DeadlineLayer};

use crate::deadline;
use crate::error::{BoxFuture, ErrorKind, ErrorOf, IntoResilienceError, ResilienceError};

/// Fails the call with [`ErrorKind::DeadlineExceeded`] when its total time passes, and publishes the deadline
/// to the layers below.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    total: Duration,
}

impl<S> Deadline<S> {
    /// Bounds every call of `inner` to `total`.
    pub fn new(inner: S, total: Duration) -> Self {
        Self { inner, total }
    }
}

impl<S, Req> Service<Req> for Deadline<S>
where
    S: Service<Req>,
    S::Error: IntoResilienceError,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = ErrorOf<S, Req>;
    type Future = BoxFuture<Result<S::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(IntoResilienceError::into_resilience)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let at = deadline::earliest(Instant::now() + self.total);
        let fut = deadline::sync_scope(at, || self.inner.call(req));
        Box::pin(deadline::scope(at, async move {
            match tokio::time::timeout_at(at, fut).await {
                Ok(result) => result.map_err(IntoResilienceError::into_resilience),
                Err(_) => Err(ResilienceError::new(ErrorKind::DeadlineExceeded)),
            }
        }))
    }
}

/// Fails one attempt with [`ErrorKind::AttemptTimeout`] after its timeout, or with
/// [`ErrorKind::DeadlineExceeded`] if the call's deadline comes first.
#[derive(Debug, Clone)]
pub struct AttemptTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> AttemptTimeout<S> {
    /// Bounds every call of `inner` to `timeout`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self { inner, timeout }
    }
}

impl<S, Req> Service<Req> for AttemptTimeout<S>
where
    S: Service<Req>,
    S::Error: IntoResilienceError,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = ErrorOf<S, Req>;
    type Future = BoxFuture<Result<S::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(IntoResilienceError::into_resilience)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let (at, kind) = attempt_deadline(self.timeout);
        let fut = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout_at(at, fut).await {
                Ok(result) => result.map_err(IntoResilienceError::into_resilience),
                Err(_) => Err(ResilienceError::new(kind)),
            }
        })
    }
}

/// When an attempt with `timeout` must end, and the error if it does not: its own timeout, or the call's
/// deadline if that comes first.
pub(crate) fn attempt_deadline(timeout: Duration) -> (Instant, ErrorKind) {
    attempt_deadline_at(timeout, Instant::now())
}

/// [`attempt_deadline`] for an attempt starting at `now`.
pub(crate) fn attempt_deadline_at(timeout: Duration, now: Instant) -> (Instant, ErrorKind) {
    let own = now + timeout;
    match deadline::current() {
        Some(d) if d < own => (d, ErrorKind::DeadlineExceeded),
        _ => (own, ErrorKind::AttemptTimeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    fn slow(d: Duration) -> impl Service<u32, Response = u32, Error = std::io::Error, Future: Send> + Clone {
        service_fn(move |x: u32| async move {
            tokio::time::sleep(d).await;
            Ok(x)
        })
    }

    #[tokio::test(start_paused = true)]
    async fn attempt_timeout_fires() {
        let err = AttemptTimeout::new(slow(Duration::from_secs(5)), Duration::from_secs(1)).oneshot(1).await;
        assert_eq!(err.unwrap_err().kind(), ErrorKind::AttemptTimeout);
        let ok = AttemptTimeout::new(slow(Duration::from_millis(5)), Duration::from_secs(1)).oneshot(1).await;
        assert_eq!(ok.unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_caps_the_attempt_and_is_visible_below() {
        let start = Instant::now();
        let svc = ServiceBuilder::new()
            .layer(DeadlineLayer::new(Duration::from_secs(1)))
            .layer(AttemptTimeoutLayer::new(Duration::from_secs(10)))
            .service(slow(Duration::from_secs(5)));
        let err = svc.oneshot(1).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
        assert_eq!(start.elapsed(), Duration::from_secs(1));

        let seen = Deadline::new(
            service_fn(|_: ()| async { Ok::<_, std::io::Error>(deadline::remaining()) }),
            Duration::from_secs(3),
        )
        .oneshot(())
        .await
        .unwrap();
        assert_eq!(seen, Some(Duration::from_secs(3)));
    }
}
