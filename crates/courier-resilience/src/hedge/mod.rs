//! Hedged requests: if an answer has not come after a delay (fixed, or a percentile of recent latencies), send
//! the same request again (behind the [balancer](crate::balance), to another endpoint), take the first success
//! and drop (cancel) the other attempt. Only for requests its [`RetryPredicate`] calls safe to send twice.
//!
//! ```
//! use std::time::Duration;
//! use courier_resilience::hedge::{HedgeDelay, HedgeLayer};
//! use courier_resilience::retry::RetryPredicate;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(HedgeLayer::new(HedgeDelay::percentile(0.95, Duration::from_millis(50)), RetryPredicate::always()))
//!     .service(service_fn(|id: u64| async move { Ok::<_, std::io::Error>(id) }));
//! assert_eq!(svc.oneshot(9).await.unwrap(), 9);
//! # }
//! ```
//!
//! Why our own: tower's `Hedge` boxes errors into `BoxError`, needs a `Policy` per request type and cannot steer
//! the second attempt away from the endpoint of the first.

mod latency;
mod layer;

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Service, ServiceExt};

pub use layer::HedgeLayer;

use crate::error::{BoxFuture, ErrorOf, IntoResilienceError};
use crate::retry::RetryPredicate;
use crate::route::Tried;
use latency::Latencies;

/// When to send the second attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeDelay {
    /// After this fixed delay.
    Fixed(Duration),
    /// After this percentile (0..1) of the latencies of the last 256 successful calls; `fallback` until 20
    /// calls were seen.
    Percentile {
        /// The percentile, such as 0.95.
        percentile: f64,
        /// The delay until enough calls were seen.
        fallback: Duration,
    },
}

impl HedgeDelay {
    /// After the `percentile` of recent latencies (`fallback` at first).
    pub fn percentile(percentile: f64, fallback: Duration) -> Self {
        Self::Percentile { percentile, fallback }
    }
}

const MIN_SAMPLES: usize = 20;

/// Hedges calls of `S` (see the [module docs](self)).
pub struct Hedge<S, Req> {
    inner: S,
    delay: HedgeDelay,
    predicate: RetryPredicate<Req>,
    latencies: Arc<Mutex<Latencies>>,
}

impl<S: Clone, Req> Clone for Hedge<S, Req> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            delay: self.delay,
            predicate: self.predicate.clone(),
            latencies: self.latencies.clone(),
        }
    }
}

impl<S: std::fmt::Debug, Req> std::fmt::Debug for Hedge<S, Req> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hedge").field("inner", &self.inner).field("delay", &self.delay).finish()
    }
}

impl<S, Req> Hedge<S, Req> {
    /// Hedges the calls of `inner` that `predicate` allows, after `delay`.
    pub fn new(inner: S, delay: HedgeDelay, predicate: RetryPredicate<Req>) -> Self {
        Self { inner, delay, predicate, latencies: Arc::new(Mutex::new(Latencies::new())) }
    }

    fn current_delay(&self) -> Duration {
        match self.delay {
            HedgeDelay::Fixed(d) => d,
            HedgeDelay::Percentile { percentile, fallback } => self
                .latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .percentile(percentile, MIN_SAMPLES)
                .unwrap_or(fallback),
        }
    }
}

impl<S, Req> Service<Req> for Hedge<S, Req>
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
        let first = std::mem::replace(&mut self.inner, clone);
        if !self.predicate.allows(&req) {
            let mut first = first;
            let fut = first.call(req);
            return Box::pin(async move { fut.await.map_err(IntoResilienceError::into_resilience) });
        }
        let second = self.inner.clone();
        let delay = self.current_delay();
        let latencies = self.latencies.clone();
        Box::pin(async move {
            let started = Instant::now();
            let tried = Tried::default();
            let again = req.clone();
            let first = tried.scope(attempt(first, req));
            tokio::pin!(first);
            let result = tokio::select! {
                result = &mut first => Some(result),
                _ = tokio::time::sleep(delay) => None,
            };
            let result = match result {
                Some(result) => result,
                None => {
                    metrics::counter!("courier_hedges_total").increment(1);
                    let second = tried.scope(attempt(second, again));
                    tokio::pin!(second);
                    race(first, second).await
                }
            };
            if result.is_ok() {
                latencies.lock().unwrap_or_else(|p| p.into_inner()).record(started.elapsed());
            }
            result
        })
    }
}

async fn attempt<S, Req>(mut svc: S, req: Req) -> Result<S::Response, ErrorOf<S, Req>>
where
    S: Service<Req>,
    S::Error: IntoResilienceError,
{
    let ready = svc.ready().await.map_err(IntoResilienceError::into_resilience)?;
    ready.call(req).await.map_err(IntoResilienceError::into_resilience)
}

/// The first success of two attempts (the other is dropped); if both fail, the later error.
async fn race<T, E, A, B>(mut a: std::pin::Pin<&mut A>, mut b: std::pin::Pin<&mut B>) -> Result<T, E>
where
    A: std::future::Future<Output = Result<T, E>>,
    B: std::future::Future<Output = Result<T, E>>,
{
    let (mut a_done, mut b_done) = (false, false);
    loop {
        tokio::select! {
            result = &mut a, if !a_done => match result {
                Ok(v) => return Ok(v),
                Err(e) if b_done => return Err(e),
                Err(_) => a_done = true,
            },
            result = &mut b, if !b_done => match result {
                Ok(v) => {
                    metrics::counter!("courier_hedge_wins_total").increment(1);
                    return Ok(v);
                }
                Err(e) if a_done => return Err(e),
                Err(_) => b_done = true,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use tower::service_fn;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn takes_the_fast_replica_and_cancels_the_slow() {
        let calls = Arc::new(AtomicU32::new(0));
        let slow_finished = Arc::new(AtomicBool::new(false));
        let (c, f) = (calls.clone(), slow_finished.clone());
        // The first call is slow (5 s), the hedge fast (10 ms).
        let svc = service_fn(move |x: u32| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            let f = f.clone();
            async move {
                if n == 0 {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    f.store(true, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(("slow", x))
                } else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Ok(("fast", x))
                }
            }
        });
        let hedge = Hedge::new(svc, HedgeDelay::Fixed(Duration::from_millis(100)), RetryPredicate::always());
        let start = Instant::now();
        assert_eq!(hedge.oneshot(7).await.unwrap(), ("fast", 7));
        assert_eq!(start.elapsed(), Duration::from_millis(110));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!slow_finished.load(Ordering::SeqCst), "the slow attempt was dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn no_hedge_when_fast_or_unsafe() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let svc = service_fn(move |x: u32| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(if x == 0 { 10 } else { 500 })).await;
                Ok::<_, std::io::Error>(x)
            }
        });
        let hedge = Hedge::new(svc.clone(), HedgeDelay::Fixed(Duration::from_millis(100)), RetryPredicate::always());
        hedge.oneshot(0).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "answered before the delay");
        let hedge = Hedge::new(svc, HedgeDelay::Fixed(Duration::from_millis(100)), RetryPredicate::never());
        hedge.oneshot(1).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "not safe to send twice: no hedge");
    }
}
