//! Idempotency keys in Redis, for services that run several instances.

use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use super::store::{Begin, IdempotencyStore, StoreError, StoredResponse};

/// Keeps idempotency keys in Redis under `<prefix><key>` (default prefix `courier:idem:`): a claim is
/// `SET NX PX <lease>` (so a dead holder's claim expires by itself), a response is stored with `PX <ttl>`, and a
/// release deletes the key only if it is still a claim (a small Lua script). Durable only as far as the server is
/// (AOF); losing keys means a retry runs again, as without the store.
///
/// ```no_run
/// use std::sync::Arc;
/// use courier_http::server::idempotency::{IdempotencyLayer, RedisIdempotencyStore};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisIdempotencyStore::connect("redis://127.0.0.1:6379").await?;
/// let layer = IdempotencyLayer::new(Arc::new(store));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisIdempotencyStore {
    conn: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisIdempotencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisIdempotencyStore").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

const CLAIM: &str = "P";
const DONE: &str = "D";

/// Deletes KEYS[1] if it is still a claim.
const RELEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if v == 'P' then return redis.call('DEL', KEYS[1]) end
return 0
";

fn px(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisIdempotencyStore {
    /// Connects to `url` with the prefix `courier:idem:`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_prefix(url, "courier:idem:").await
    }

    /// Connects to `url`; keys are stored under `prefix`.
    pub async fn connect_prefix(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::new(format!("Redis URL {url:?}: {e}")))?;
        let conn = ConnectionManager::new(client)
            .await
            .map_err(|e| StoreError::new(format!("cannot connect to Redis at {url}: {e}; is the server running?")))?;
        Ok(Self { conn, prefix: prefix.to_owned() })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait]
impl IdempotencyStore for RedisIdempotencyStore {
    async fn begin(&self, key: &str, lease: Duration) -> Result<Begin, StoreError> {
        let key = self.key(key);
        let mut conn = self.conn.clone();
        // A claim that expires between the SET and the GET is claimed again on the next turn.
        for _ in 0..3 {
            let options = redis::SetOptions::default()
                .conditional_set(redis::ExistenceCheck::NX)
                .with_expiration(redis::SetExpiry::PX(px(lease)));
            let claimed: Option<String> = conn.set_options(&key, CLAIM, options).await.map_err(StoreError::new)?;
            if claimed.is_some() {
                return Ok(Begin::Started);
            }
            let value: Option<Vec<u8>> = conn.get(&key).await.map_err(StoreError::new)?;
            match value {
                None => continue,
                Some(v) if v == CLAIM.as_bytes() => return Ok(Begin::InProgress),
                Some(v) => {
                    let stored = v.strip_prefix(DONE.as_bytes()).unwrap_or(&v);
                    let response: StoredResponse = serde_json::from_slice(stored)
                        .map_err(|e| StoreError::new(format!("a stored response is not readable: {e}")))?;
                    return Ok(Begin::Completed(response));
                }
            }
        }
        Ok(Begin::InProgress)
    }

    async fn complete(&self, key: &str, response: &StoredResponse, ttl: Duration) -> Result<(), StoreError> {
        let mut value = DONE.as_bytes().to_vec();
        value.extend(serde_json::to_vec(response).map_err(StoreError::new)?);
        let mut conn = self.conn.clone();
        conn.pset_ex::<_, _, ()>(self.key(key), value, px(ttl)).await.map_err(StoreError::new)
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::Script::new(RELEASE)
            .key(self.key(key))
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(StoreError::new)
    }
}
