//! An [`IdempotencyStore`] on SQLite, shared by every process using the same file.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use courier_sqlite::rusqlite::{self, Connection, OptionalExtension, TransactionBehavior, params};

use super::store::{Begin, IdempotencyStore, StoreError, StoredResponse};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS courier_idempotency (
    key        TEXT PRIMARY KEY,
    done       INTEGER NOT NULL,
    started_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    status     INTEGER,
    headers    TEXT,
    body       BLOB
)";

/// Keeps idempotency keys in a SQLite table (`courier_idempotency`), through `courier-sqlite`'s bundled
/// `rusqlite`. `begin` is one `BEGIN IMMEDIATE` transaction, so processes sharing the file never both claim a
/// key. Work runs on tokio's blocking pool. Expired rows are purged every 1,000 claims.
///
/// ```
/// use std::sync::Arc;
/// use courier_http::server::idempotency::{IdempotencyLayer, SqliteIdempotencyStore};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let store = SqliteIdempotencyStore::open(dir.path().join("idempotency.db"))?;
/// let layer = IdempotencyLayer::new(Arc::new(store));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteIdempotencyStore {
    conn: Arc<Mutex<Connection>>,
    claims: Arc<AtomicU64>,
}

impl SqliteIdempotencyStore {
    /// Opens (or creates) the database at `path` in WAL mode.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(StoreError::new)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(StoreError::new)?;
        Self::new(conn)
    }

    /// A private in-memory database (for tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::new(Connection::open_in_memory().map_err(StoreError::new)?)
    }

    /// Uses `conn`, creating the table if needed.
    pub fn new(conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(Duration::from_secs(5)).map_err(StoreError::new)?;
        conn.execute(SCHEMA, []).map_err(StoreError::new)?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)), claims: Arc::new(AtomicU64::new(0)) })
    }

    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(StoreError::new)?
        .map_err(StoreError::new)
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

type Row = (bool, i64, i64, Option<u16>, Option<String>, Option<Vec<u8>>);

#[async_trait]
impl IdempotencyStore for SqliteIdempotencyStore {
    async fn begin(&self, key: &str, lease: Duration) -> Result<Begin, StoreError> {
        let key = key.to_owned();
        let purge = self.claims.fetch_add(1, Ordering::Relaxed) % 1000 == 999;
        self.with_conn(move |conn| {
            let now = now_ms();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if purge {
                tx.execute("DELETE FROM courier_idempotency WHERE done = 1 AND expires_ms < ?1", [now])?;
            }
            let row: Option<Row> = tx
                .query_row(
                    "SELECT done, started_ms, expires_ms, status, headers, body FROM courier_idempotency WHERE key = ?1",
                    [&key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
                )
                .optional()?;
            match row {
                Some((true, _, expires, Some(status), headers, body)) if expires > now => {
                    let headers = headers.and_then(|h| serde_json::from_str(&h).ok()).unwrap_or_default();
                    let body = body.unwrap_or_default().into();
                    return Ok(Begin::Completed(StoredResponse { status, headers, body }));
                }
                Some((false, started, _, _, _, _)) if now.saturating_sub(started) < ms(lease) => {
                    return Ok(Begin::InProgress);
                }
                _ => {}
            }
            tx.execute(
                "INSERT OR REPLACE INTO courier_idempotency (key, done, started_ms, expires_ms) VALUES (?1, 0, ?2, 0)",
                params![key, now],
            )?;
            tx.commit()?;
            Ok(Begin::Started)
        })
        .await
    }

    async fn complete(&self, key: &str, response: &StoredResponse, ttl: Duration) -> Result<(), StoreError> {
        let key = key.to_owned();
        let headers = serde_json::to_string(&response.headers).map_err(StoreError::new)?;
        let (status, body) = (response.status, response.body.to_vec());
        self.with_conn(move |conn| {
            let now = now_ms();
            conn.execute(
                "INSERT OR REPLACE INTO courier_idempotency (key, done, started_ms, expires_ms, status, headers, body)
                 VALUES (?1, 1, ?2, ?3, ?4, ?5, ?6)",
                params![key, now, now.saturating_add(ms(ttl)), status, headers, body],
            )?;
            Ok(())
        })
        .await
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.with_conn(move |conn| {
            conn.execute("DELETE FROM courier_idempotency WHERE key = ?1 AND done = 0", [key])?;
            Ok(())
        })
        .await
    }
}
