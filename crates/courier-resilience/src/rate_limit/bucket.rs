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

impl Bucket {
    /// Refills for the time since the last call, then takes a token now, reserves one after a wait, or refuses.
    fn take(&mut self, config: &RateLimitConfig, now: Instant) -> Decision {
        let burst = f64::from(config.burst);
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * config.per_second).min(burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Decision::Go;
        }
        let wait = Duration::from_secs_f64((1.0 - self.tokens) / config.per_second);
        if wait <= config.max_wait {
            self.tokens -= 1.0;
            Decision::Wait(wait)
        } else {
            Decision::Refuse(wait)
        }
    }
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
    /// The one bucket of a limiter whose key type has a single value (`()`, the global limiter): no hashing.
    single: Option<Bucket>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    pub(crate) fn new() -> Self {
        Self { buckets: HashMap::new(), single: None }
    }

    pub(crate) fn len(&self) -> usize {
        self.buckets.len() + usize::from(self.single.is_some())
    }

    pub(crate) fn take(&mut self, key: &K, config: &RateLimitConfig, now: Instant) -> Decision {
        // A zero-sized key type has one value: every call shares one bucket.
        if std::mem::size_of::<K>() == 0 {
            let fresh = Bucket { tokens: f64::from(config.burst), updated: now };
            return self.single.get_or_insert(fresh).take(config, now);
        }
        if let Some(bucket) = self.buckets.get_mut(key) {
            return bucket.take(config, now);
        }
        if self.buckets.len() >= config.max_keys {
            self.evict(config, now);
        }
        let fresh = Bucket { tokens: f64::from(config.burst), updated: now };
        self.buckets.entry(key.clone()).or_insert(fresh).take(config, now)
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
