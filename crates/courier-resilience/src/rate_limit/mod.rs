//! Token-bucket rate limiting, global or per key (a tenant, a user, a route): a call takes a token, or waits up
//! to `max_wait` for one, or fails at once with [`ErrorKind::RateLimited`] (with the time until the next token
//! as its `retry_after`).
//!
//! ```
//! use std::time::Duration;
//! use courier_resilience::rate_limit::{RateLimitConfig, RateLimitLayer, RateLimiter};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // 100 calls a second per tenant, bursts of 20, at most 10 000 tenants tracked.
//! let limiter = RateLimiter::new("per-tenant", RateLimitConfig::per_second(100.0).burst(20).max_keys(10_000));
//! let svc = ServiceBuilder::new()
//!     .layer(RateLimitLayer::keyed(limiter, |(tenant, _): &(String, u32)| tenant.clone()))
//!     .service(service_fn(|(_, n): (String, u32)| async move { Ok::<_, std::io::Error>(n) }));
//! assert_eq!(svc.oneshot(("acme".into(), 3)).await.unwrap(), 3);
//! # }
//! ```
//!
//! Why our own: tower's `RateLimit` is one global fixed window that only delays (in `poll_ready`), with no keys
//! and no way to refuse.

mod bucket;
mod layer;

use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::Counter;
use tokio::time::Instant;
use tower::Service;

pub use layer::RateLimitLayer;

use crate::deadline;
use crate::error::{BoxFuture, ErrorKind, ErrorOf, IntoResilienceError, ResilienceError};
use bucket::{Buckets, Decision};

/// A rate limit: tokens a second, burst, how long a caller may wait for a token, and the bounds on keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    /// Tokens added a second (per key).
    pub per_second: f64,
    /// Bucket size: the largest burst.
    pub burst: u32,
    /// How long a call may wait for a token (0: refuse at once).
    pub max_wait: Duration,
    /// Keys tracked at most; beyond, idle keys are evicted first, then the least recently used.
    pub max_keys: usize,
    /// A key unused this long may be evicted.
    pub idle_timeout: Duration,
}

impl RateLimitConfig {
    /// `per_second` tokens a second, a burst of the same (at least 1), no waiting, 10 000 keys, 10 minutes idle.
    pub fn per_second(per_second: f64) -> Self {
        let per_second = if per_second.is_finite() && per_second > 0.0 { per_second } else { 1.0 };
        Self {
            per_second,
            burst: (per_second.ceil() as u32).max(1),
            max_wait: Duration::ZERO,
            max_keys: 10_000,
            idle_timeout: Duration::from_secs(600),
        }
    }

    /// Sets the burst.
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst.max(1);
        self
    }

    /// Lets calls wait up to `max_wait` for a token.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Tracks at most `max_keys` keys.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self
    }

    /// Keys idle this long are evicted first.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }
}

struct Shared<K> {
    name: String,
    config: RateLimitConfig,
    buckets: Mutex<Buckets<K>>,
    refused: Counter,
}

/// A rate limiter: a cheap `Clone` handle; clones share the buckets. `K` is the key type (`()` for global).
pub struct RateLimiter<K = ()> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for RateLimiter<K> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

impl<K> std::fmt::Debug for RateLimiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").field("name", &self.shared.name).field("config", &self.shared.config).finish()
    }
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// A limiter named `name` (the `name` label of `courier_rate_limited_total`).
    pub fn new(name: impl Into<String>, config: RateLimitConfig) -> Self {
        let name = name.into();
        let refused = metrics::counter!("courier_rate_limited_total", "name" => name.clone());
        Self { shared: Arc::new(Shared { name, config, buckets: Mutex::new(Buckets::new()), refused }) }
    }

    /// Keys tracked now.
    pub fn keys(&self) -> usize {
        self.shared.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Takes a token for `key`, waiting for one if allowed (never past the call's deadline).
    pub async fn acquire<E>(&self, key: &K) -> Result<(), ResilienceError<E>> {
        if let Some(wait) = self.reserve(key)? {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// Takes a token for `key` without waiting: `None` to go now, or the wait after which the token reserved
    /// for this call is due; an error when the wait would be longer than allowed.
    pub(crate) fn reserve<E>(&self, key: &K) -> Result<Option<Duration>, ResilienceError<E>> {
        self.reserve_at(key, Instant::now())
    }

    /// [`reserve`](Self::reserve) at `now` (a caller that already read the clock).
    pub(crate) fn reserve_at<E>(&self, key: &K, now: Instant) -> Result<Option<Duration>, ResilienceError<E>> {
        let s = &self.shared;
        let mut config = s.config;
        if let Some(at) = deadline::current() {
            config.max_wait = config.max_wait.min(at.saturating_duration_since(now));
        }
        let decision = s.buckets.lock().unwrap_or_else(|p| p.into_inner()).take(key, &config, now);
        match decision {
            Decision::Go => Ok(None),
            Decision::Wait(wait) => Ok(Some(wait)),
            Decision::Refuse(after) => Err(self.refused(after)),
        }
    }

    fn refused<E>(&self, after: Duration) -> ResilienceError<E> {
        self.shared.refused.increment(1);
        ResilienceError::new(ErrorKind::RateLimited).with_layer(self.shared.name.clone()).with_retry_after(after)
    }
}

/// The function giving a request's key.
type KeyFn<Req, K> = Arc<dyn Fn(&Req) -> K + Send + Sync>;

/// Calls `S` within a [`RateLimiter`].
pub struct RateLimit<S, Req, K = ()> {
    inner: S,
    limiter: RateLimiter<K>,
    key: KeyFn<Req, K>,
}

impl<S: Clone, Req, K> Clone for RateLimit<S, Req, K> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), limiter: self.limiter.clone(), key: self.key.clone() }
    }
}

impl<S: std::fmt::Debug, Req, K> std::fmt::Debug for RateLimit<S, Req, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit").field("inner", &self.inner).field("limiter", &self.limiter).finish()
    }
}

impl<S, Req, K> RateLimit<S, Req, K> {
    /// Limits `inner` with `limiter`, keyed by `key`.
    pub fn new(inner: S, limiter: RateLimiter<K>, key: impl Fn(&Req) -> K + Send + Sync + 'static) -> Self {
        Self { inner, limiter, key: Arc::new(key) }
    }
}

impl<S, Req, K> Service<Req> for RateLimit<S, Req, K>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Error: IntoResilienceError,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    Req: Send + 'static,
    K: Hash + Eq + Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = ErrorOf<S, Req>;
    type Future = BoxFuture<Result<S::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(IntoResilienceError::into_resilience)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = (self.key)(&req);
        match self.limiter.reserve(&key) {
            Ok(None) => {
                let fut = self.inner.call(req);
                Box::pin(async move { fut.await.map_err(IntoResilienceError::into_resilience) })
            }
            Err(refused) => Box::pin(std::future::ready(Err(refused))),
            Ok(Some(wait)) => {
                let clone = self.inner.clone();
                let mut svc = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move {
                    tokio::time::sleep(wait).await;
                    tower::ServiceExt::ready(&mut svc).await.map_err(IntoResilienceError::into_resilience)?;
                    svc.call(req).await.map_err(IntoResilienceError::into_resilience)
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tower::{ServiceExt, service_fn};

    use super::*;

    fn echo() -> impl Service<(&'static str, u32), Response = u32, Error = std::io::Error, Future: Send> + Clone + Send
    {
        service_fn(|(_, n): (&'static str, u32)| async move { Ok(n) })
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_per_key() {
        let limiter = RateLimiter::new("k", RateLimitConfig::per_second(1.0).burst(2));
        let svc = RateLimit::new(echo(), limiter.clone(), |(k, _): &(&'static str, u32)| *k);
        assert!(svc.clone().oneshot(("a", 1)).await.is_ok());
        assert!(svc.clone().oneshot(("a", 2)).await.is_ok());
        let err = svc.clone().oneshot(("a", 3)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::RateLimited);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
        assert!(svc.clone().oneshot(("b", 1)).await.is_ok(), "another key has its own bucket");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(svc.clone().oneshot(("a", 4)).await.is_ok(), "refilled");
    }

    #[tokio::test(start_paused = true)]
    async fn waits_when_allowed() {
        let limiter =
            RateLimiter::new("g", RateLimitConfig::per_second(10.0).burst(1).max_wait(Duration::from_secs(1)));
        let svc = RateLimit::new(echo(), limiter, |_: &(&'static str, u32)| ());
        let start = Instant::now();
        for i in 0..5 {
            svc.clone().oneshot(("x", i)).await.unwrap();
        }
        assert_eq!(start.elapsed(), Duration::from_millis(400), "one token every 100 ms after the burst");
    }

    #[tokio::test(start_paused = true)]
    async fn bounds_keys() {
        let config = RateLimitConfig::per_second(1.0).max_keys(3).idle_timeout(Duration::from_secs(60));
        let limiter: RateLimiter<u32> = RateLimiter::new("bounded", config);
        for key in 0..10 {
            limiter.acquire::<std::io::Error>(&key).await.unwrap();
        }
        assert_eq!(limiter.keys(), 3);
        tokio::time::advance(Duration::from_secs(61)).await;
        limiter.acquire::<std::io::Error>(&100).await.unwrap();
        assert_eq!(limiter.keys(), 1, "idle keys went first");
    }
}
