//! Idempotency keys in PostgreSQL, for services that run several instances.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Row};

use super::store::{Begin, IdempotencyStore, StoreError, StoredResponse};

/// Keeps idempotency keys in a PostgreSQL table (default `courier_idempotency`, created if missing). Claiming a key
/// is one `INSERT ... ON CONFLICT DO UPDATE ... WHERE` statement, so instances sharing the table never both claim
/// it; a claim older than the lease (its holder died) is taken over. Expired rows are purged every 1,000 claims.
///
/// ```no_run
/// use std::sync::Arc;
/// use courier_http::server::idempotency::{IdempotencyLayer, PostgresIdempotencyStore};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresIdempotencyStore::connect("postgres://postgres@127.0.0.1/test").await?;
/// let layer = IdempotencyLayer::new(Arc::new(store));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresIdempotencyStore {
    pool: PgPool,
    table: String,
    claims: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, ms)
}

impl PostgresIdempotencyStore {
    /// Connects to `url` and uses the table `courier_idempotency`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_table(url, "courier_idempotency").await
    }

    /// Connects to `url` and uses `table` (letters, digits and `_`; created if missing).
    pub async fn connect_table(url: &str, table: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new().max_connections(8).connect(url).await.map_err(|e| {
            StoreError::new(format!("cannot connect to PostgreSQL at {url}: {e}; is the server running?"))
        })?;
        Self::with_pool(pool, table).await
    }

    /// Uses `pool` and `table` (letters, digits and `_`; created if missing).
    pub async fn with_pool(pool: PgPool, table: &str) -> Result<Self, StoreError> {
        if table.is_empty() || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(StoreError::new(format!("table name {table:?}: use letters, digits and '_' only")));
        }
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, done BOOLEAN NOT NULL, started_ms BIGINT NOT NULL,
             expires_ms BIGINT NOT NULL, status INTEGER, headers TEXT, body BYTEA)"
        );
        // The table name was checked above to be letters, digits and '_': safe to put in the statement.
        sqlx::raw_sql(AssertSqlSafe(create)).execute(&pool).await.map_err(StoreError::new)?;
        Ok(Self { pool, table: table.to_owned(), claims: Default::default() })
    }

    /// Drops the table (for tests and teardown).
    pub async fn drop_table(&self) -> Result<(), StoreError> {
        let drop = format!("DROP TABLE IF EXISTS {}", self.table);
        sqlx::raw_sql(AssertSqlSafe(drop)).execute(&self.pool).await.map(drop_result).map_err(StoreError::new)
    }
}

fn drop_result<T>(_: T) {}

#[async_trait]
impl IdempotencyStore for PostgresIdempotencyStore {
    async fn begin(&self, key: &str, lease: Duration) -> Result<Begin, StoreError> {
        let table = &self.table;
        if self.claims.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1000 == 999 {
            let purge = format!("DELETE FROM {table} WHERE done AND expires_ms < $1");
            sqlx::query(AssertSqlSafe(purge)).bind(now_ms()).execute(&self.pool).await.map_err(StoreError::new)?;
        }
        let claim = format!(
            "INSERT INTO {table} (key, done, started_ms, expires_ms) VALUES ($1, false, $2, 0)
             ON CONFLICT (key) DO UPDATE SET done = false, started_ms = EXCLUDED.started_ms, expires_ms = 0,
                 status = NULL, headers = NULL, body = NULL
             WHERE ({table}.done AND {table}.expires_ms <= $2) OR (NOT {table}.done AND {table}.started_ms <= $2 - $3)
             RETURNING key"
        );
        let look = format!("SELECT done, status, headers, body FROM {table} WHERE key = $1");
        // A key freed between the claim and the look is claimed again on the next turn.
        for _ in 0..3 {
            let now = now_ms();
            let claimed = sqlx::query(AssertSqlSafe(claim.clone()))
                .bind(key)
                .bind(now)
                .bind(ms(lease))
                .fetch_optional(&self.pool)
                .await
                .map_err(StoreError::new)?;
            if claimed.is_some() {
                return Ok(Begin::Started);
            }
            let Some(row) = sqlx::query(AssertSqlSafe(look.clone()))
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(StoreError::new)?
            else {
                continue;
            };
            let done: bool = row.try_get(0).map_err(StoreError::new)?;
            if !done {
                return Ok(Begin::InProgress);
            }
            let status: Option<i32> = row.try_get(1).map_err(StoreError::new)?;
            let headers: Option<String> = row.try_get(2).map_err(StoreError::new)?;
            let body: Option<Vec<u8>> = row.try_get(3).map_err(StoreError::new)?;
            let headers = headers.and_then(|h| serde_json::from_str(&h).ok()).unwrap_or_default();
            let status = status.and_then(|s| u16::try_from(s).ok()).unwrap_or(500);
            return Ok(Begin::Completed(StoredResponse { status, headers, body: body.unwrap_or_default().into() }));
        }
        Ok(Begin::InProgress)
    }

    async fn complete(&self, key: &str, response: &StoredResponse, ttl: Duration) -> Result<(), StoreError> {
        let table = &self.table;
        let headers = serde_json::to_string(&response.headers).map_err(StoreError::new)?;
        let now = now_ms();
        let store = format!(
            "INSERT INTO {table} (key, done, started_ms, expires_ms, status, headers, body) VALUES ($1, true, $2, $3, $4, $5, $6)
             ON CONFLICT (key) DO UPDATE SET done = true, expires_ms = EXCLUDED.expires_ms, status = EXCLUDED.status,
                 headers = EXCLUDED.headers, body = EXCLUDED.body"
        );
        sqlx::query(AssertSqlSafe(store))
            .bind(key)
            .bind(now)
            .bind(now.saturating_add(ms(ttl)))
            .bind(i32::from(response.status))
            .bind(headers)
            .bind(response.body.to_vec())
            .execute(&self.pool)
            .await
            .map(drop_result)
            .map_err(StoreError::new)
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        let release = format!("DELETE FROM {} WHERE key = $1 AND NOT done", self.table);
        sqlx::query(AssertSqlSafe(release))
            .bind(key)
            .execute(&self.pool)
            .await
            .map(drop_result)
            .map_err(StoreError::new)
    }
}
