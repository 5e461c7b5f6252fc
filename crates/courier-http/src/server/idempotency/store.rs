//! Where the idempotency middleware keeps responses: the [`IdempotencyStore`] trait and the in-memory store.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A response kept for replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// The status code.
    pub status: u16,
    /// The headers kept (a subset: see [`IdempotencyLayer::keep_header`](super::IdempotencyLayer::keep_header)).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

/// What [`IdempotencyStore::begin`] found for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// The key was free (or its holder's lease ran out): the caller now holds it and must
    /// [`complete`](IdempotencyStore::complete) or [`release`](IdempotencyStore::release) it.
    Started,
    /// Another request holds the key and has not finished.
    InProgress,
    /// A response was stored for the key: replay it.
    Completed(StoredResponse),
}

/// The error of a store: the middleware answers `503` with it and handles nothing.
#[derive(Debug, thiserror::Error)]
#[error("idempotency store failed: {0}")]
pub struct StoreError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

impl StoreError {
    /// Wraps a store's own error.
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(error.into())
    }
}

/// A store of idempotency keys and their responses.
///
/// Contract: `begin` is atomic across every process sharing the store (two concurrent `begin`s for one key
/// never both get [`Begin::Started`]); a key held longer than `lease` (its holder crashed) may be taken over; a
/// stored response is kept for at least `ttl` after `complete`. Implementations are `Send + Sync` and never
/// block the async runtime. The trait is object-safe: the middleware holds an `Arc<dyn IdempotencyStore>`.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `key`, or says who has it.
    async fn begin(&self, key: &str, lease: Duration) -> Result<Begin, StoreError>;
    /// Stores the response of the request holding `key`.
    async fn complete(&self, key: &str, response: &StoredResponse, ttl: Duration) -> Result<(), StoreError>;
    /// Frees `key` without a response (the handler failed with a 5xx: a retry must run it again).
    async fn release(&self, key: &str) -> Result<(), StoreError>;
}

#[derive(Debug)]
enum Entry {
    InProgress { since: Instant },
    Done { response: StoredResponse, expires: Instant },
}

/// An in-memory store for one process (tests, single-instance services). Expired entries are purged as new keys
/// arrive; at most `max_keys` are kept (the oldest completed ones go first).
///
/// ```
/// use std::sync::Arc;
/// use courier_http::server::idempotency::{IdempotencyLayer, MemoryIdempotencyStore};
///
/// let layer = IdempotencyLayer::new(Arc::new(MemoryIdempotencyStore::new()));
/// ```
#[derive(Debug)]
pub struct MemoryIdempotencyStore {
    entries: Mutex<HashMap<String, Entry>>,
    max_keys: usize,
}

impl Default for MemoryIdempotencyStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryIdempotencyStore {
    /// A store keeping up to 100,000 keys.
    pub fn new() -> Self {
        Self::with_max_keys(100_000)
    }

    /// A store keeping up to `max_keys` keys.
    pub fn with_max_keys(max_keys: usize) -> Self {
        Self { entries: Mutex::new(HashMap::new()), max_keys: max_keys.max(1) }
    }

    /// Keys held or stored now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// No key is held or stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl IdempotencyStore for MemoryIdempotencyStore {
    async fn begin(&self, key: &str, lease: Duration) -> Result<Begin, StoreError> {
        let now = Instant::now();
        let mut map = self.lock();
        match map.get(key) {
            Some(Entry::Done { response, expires }) if *expires > now => return Ok(Begin::Completed(response.clone())),
            Some(Entry::InProgress { since }) if now.duration_since(*since) < lease => return Ok(Begin::InProgress),
            _ => {}
        }
        if map.len() >= self.max_keys {
            map.retain(|_, e| match e {
                Entry::Done { expires, .. } => *expires > now,
                Entry::InProgress { since } => now.duration_since(*since) < lease,
            });
            if map.len() >= self.max_keys {
                let oldest = map
                    .iter()
                    .filter_map(|(k, e)| match e {
                        Entry::Done { expires, .. } => Some((k.clone(), *expires)),
                        Entry::InProgress { .. } => None,
                    })
                    .min_by_key(|(_, exp)| *exp)
                    .map(|(k, _)| k);
                match oldest {
                    Some(k) => {
                        map.remove(&k);
                    }
                    None => return Err(StoreError::new("too many requests in progress")),
                }
            }
        }
        map.insert(key.to_owned(), Entry::InProgress { since: now });
        Ok(Begin::Started)
    }

    async fn complete(&self, key: &str, response: &StoredResponse, ttl: Duration) -> Result<(), StoreError> {
        let expires = Instant::now() + ttl;
        self.lock().insert(key.to_owned(), Entry::Done { response: response.clone(), expires });
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        let mut map = self.lock();
        if matches!(map.get(key), Some(Entry::InProgress { .. })) {
            map.remove(key);
        }
        Ok(())
    }
}
