//! The inbox on SQLite: a handler's effect applied exactly once, however often its message is delivered.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_core::{Error, MessageRef, Result, now_millis};
use rusqlite::{Connection, Transaction, TransactionBehavior, params};

use crate::schema::open_service_db;

const INBOX_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS courier_inbox (
    consumer     TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    processed_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS courier_inbox_by_time ON courier_inbox (processed_at);
";

/// An idempotent-consumer inbox in the service's own SQLite database.
///
/// [`once`](SqliteInbox::once) records the message id in the **same transaction** as the handler's writes: either
/// both commit or neither does. A redelivered message (after a crash, a lost ack, a duplicate publish) finds its id
/// and is skipped, so its effect happens once.
///
/// ```no_run
/// # use courier_sqlite::SqliteInbox;
/// # async fn handler(inbox: SqliteInbox, ctx: impl courier_core::MessageRef) -> courier_core::Result<()> {
/// let applied = inbox
///     .once(&ctx, |tx| tx.execute("UPDATE stock SET reserved = reserved + 1 WHERE sku = 'A'", []))
///     .await?;
/// if applied.is_none() {
///     // a duplicate: the effect was already applied
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteInbox {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl SqliteInbox {
    /// Opens the service database at `path` (creating it and the `courier_inbox` table if needed).
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let conn = open_service_db(&path, INBOX_SCHEMA, "inbox").await?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)), path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` in a transaction that also records the message as handled by this consumer, unless it already
    /// was. Returns `Some(result)` if the work ran and committed, `None` for a duplicate. If `work` fails, nothing
    /// is recorded (the message will be retried).
    pub async fn once<R, E, F>(&self, message: &impl MessageRef, work: F) -> Result<Option<R>>
    where
        R: Send + 'static,
        E: std::fmt::Display + Send + 'static,
        F: FnOnce(&Transaction<'_>) -> std::result::Result<R, E> + Send + 'static,
    {
        let consumer = message.consumer().to_owned();
        let message_id = message.message_id().to_owned();
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            let db = |e: rusqlite::Error| Error::engine("inbox transaction failed").with_source(e);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
            let inserted = tx
                .execute(
                    "INSERT OR IGNORE INTO courier_inbox (consumer, message_id, processed_at) VALUES (?1, ?2, ?3)",
                    params![consumer, message_id, now_millis()],
                )
                .map_err(db)?;
            if inserted == 0 {
                return Ok(None);
            }
            let result = work(&tx).map_err(|e| Error::engine(format!("handler work failed: {e}")))?;
            tx.commit().map_err(db)?;
            Ok(Some(result))
        })
        .await
        .map_err(|e| Error::engine(format!("inbox work panicked: {e}")))?
    }

    /// Whether `consumer` already handled `message_id`.
    pub async fn contains(&self, consumer: &str, message_id: &str) -> Result<bool> {
        let (consumer, message_id) = (consumer.to_owned(), message_id.to_owned());
        self.with_conn(move |conn| {
            conn.query_row(
                "SELECT COUNT(*) FROM courier_inbox WHERE consumer = ?1 AND message_id = ?2",
                params![consumer, message_id],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
        })
        .await
    }

    /// Forgets ids recorded more than `retention` ago; returns how many. Keep the retention longer than any
    /// redelivery can take (the retry policy's total backoff plus the broker's redelivery window).
    pub async fn purge_older_than(&self, retention: Duration) -> Result<u64> {
        let cutoff = now_millis() - retention.as_millis() as i64;
        self.with_conn(move |conn| {
            conn.execute("DELETE FROM courier_inbox WHERE processed_at < ?1", [cutoff]).map(|n| n as u64)
        })
        .await
    }

    /// Runs `f` with the inbox's connection on a blocking thread (for the service's own queries).
    pub async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn).map_err(|e| Error::engine("SQLite query failed").with_source(e))
        })
        .await
        .map_err(|e| Error::engine(format!("SQLite query panicked: {e}")))?
    }
}
