//! Token buckets, one per key, with a bound on keys and idle eviction.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

use super::RateLimitConfig;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// What the limiter decided for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Go now.
    Go,
    /// A token is reserved; go after this wait.
    Wait(Duration),
    /// Refused; a token comes after this long.
    Refuse(Duration),
}

#[derive(Debug)]
pub(crate) struct Buckets<K> {
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    pub(crate) fn new() -> Self {
        Self { buckets: HashMap::new() }
    }

    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }

    pub(crate) fn take(&mut self, key: &K, config: &RateLimitConfig, now: Instant) -> Decision {
        let burst = f64::from(config.burst);
        if !self.buckets.contains_key(key) {
            if self.buckets.len() >= config.max_keys {
                self.evict(config, now);
            }
            self.buckets.insert(key.clone(), Bucket { tokens: burst, updated: now });
        }
        let Some(bucket) = self.buckets.get_mut(key) else { return Decision::Go };
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * config.per_second).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Decision::Go;
        }
        let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / config.per_second);
        if wait <= config.max_wait {
            bucket.tokens -= 1.0;
            Decision::Wait(wait)
        } else {
            Decision::Refuse(wait)
        }
    }

    /// Drops buckets idle past the idle timeout; if none is, the least recently used one.
    fn evict(&mut self, config: &RateLimitConfig, now: Instant) {
        let before = self.buckets.len();
        self.buckets.retain(|_, b| now.saturating_duration_since(b.updated) < config.idle_timeout);
        if self.buckets.len() == before
            && let Some(oldest) = self.buckets.iter().min_by_key(|(_, b)| b.updated).map(|(k, _)| k.clone())
        {
            self.buckets.remove(&oldest);
        }
    }
}
