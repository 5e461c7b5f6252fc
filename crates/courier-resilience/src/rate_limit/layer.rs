use std::hash::Hash;
use std::sync::Arc;

use tower::Layer;

use super::{KeyFn, RateLimit, RateLimiter};

/// Applies [`RateLimit`], global or keyed.
pub struct RateLimitLayer<Req, K = ()> {
    limiter: RateLimiter<K>,
    key: KeyFn<Req, K>,
}

impl<Req> RateLimitLayer<Req, ()> {
    /// One bucket for every call.
    pub fn global(limiter: RateLimiter<()>) -> Self {
        Self { limiter, key: Arc::new(|_| ()) }
    }
}

impl<Req, K: Hash + Eq + Clone> RateLimitLayer<Req, K> {
    /// One bucket per key, the key given by `key`.
    pub fn keyed(limiter: RateLimiter<K>, key: impl Fn(&Req) -> K + Send + Sync + 'static) -> Self {
        Self { limiter, key: Arc::new(key) }
    }
}

impl<Req, K> Clone for RateLimitLayer<Req, K> {
    fn clone(&self) -> Self {
        Self { limiter: self.limiter.clone(), key: self.key.clone() }
    }
}

impl<Req, K> std::fmt::Debug for RateLimitLayer<Req, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer").field("limiter", &self.limiter).finish()
    }
}

impl<S, Req, K> Layer<S> for RateLimitLayer<Req, K> {
    type Service = RateLimit<S, Req, K>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit { inner, limiter: self.limiter.clone(), key: self.key.clone() }
    }
}
