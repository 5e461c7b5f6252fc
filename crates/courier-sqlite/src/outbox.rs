//! The transactional outbox on SQLite: the service's own writes and the messages it publishes commit together.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use courier_core::{
    Envelope, Error, Message, OutboxDestination, OutboxLag, OutboxRecord, OutboxStore, RawMessage, Result, TraceParent,
    now_millis,
};
use rusqlite::{Connection, Transaction, TransactionBehavior, params};
use tokio::sync::Notify;

use crate::schema::open_service_db;

const OUTBOX_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS courier_outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT,
    headers     TEXT NOT NULL,
    body        BLOB NOT NULL,
    deliver_at  INTEGER,
    created_at  INTEGER NOT NULL,
    sent_at     INTEGER
);
CREATE INDEX IF NOT EXISTS courier_outbox_unsent ON courier_outbox (seq) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS courier_outbox_sent ON courier_outbox (sent_at) WHERE sent_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS courier_outbox_lease (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    until  INTEGER NOT NULL
);
";

/// A transactional outbox in the service's own SQLite database.
///
/// Open a transaction with [`transaction`](SqliteOutbox::transaction), do your writes with `rusqlite` as usual,
/// and [`publish`](OutboxTransaction::publish) or [`send`](OutboxTransaction::send) on the same transaction: the
/// messages are rows in `courier_outbox`, committed (or rolled back) with your writes. An
/// [`OutboxRelay`](https://docs.rs/courier-bus) started with this outbox as its store hands them to the transport.
/// A crash anywhere loses nothing: a committed message is delivered after the restart.
///
/// ```no_run
/// # use courier_sqlite::SqliteOutbox;
/// # use courier_core::{Json, Message};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderPlaced { id: i64 }
/// # impl Message for OrderPlaced { const NAME: &'static str = "shop.order.placed.v1"; type Codec = Json; }
/// # async fn demo() -> courier_core::Result<()> {
/// let outbox = SqliteOutbox::open("./data/orders.db", "orders").await?;
/// outbox
///     .transaction(|tx| {
///         tx.execute("INSERT INTO orders (id, total) VALUES (?1, ?2)", (42, 4200))?;
///         tx.publish(&OrderPlaced { id: 42 })?;
///         Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
///     })
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteOutbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    conn: Mutex<Connection>,
    service: String,
    path: PathBuf,
    committed: Notify,
}

/// A database transaction that can also publish and send messages through the outbox. Dereferences to
/// [`rusqlite::Transaction`] for the service's own statements.
#[derive(Debug)]
pub struct OutboxTransaction<'a> {
    tx: Transaction<'a>,
    service: &'a str,
    staged: usize,
}

impl<'a> Deref for OutboxTransaction<'a> {
    type Target = Transaction<'a>;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl OutboxTransaction<'_> {
    fn stage(
        &mut self,
        destination: Option<&str>,
        envelope: Envelope,
        deliver_at: Option<DateTime<Utc>>,
    ) -> Result<()> {
        insert_outbox_row(&self.tx, destination, envelope.into_raw(), deliver_at)?;
        self.staged += 1;
        Ok(())
    }

    fn envelope<M: Message>(&self, message: &M) -> Result<Envelope> {
        let mut envelope = Envelope::for_message(self.service, message)?;
        envelope.traceparent = Some(TraceParent::new_root().to_string());
        Ok(envelope)
    }

    /// Publishes an event when (and only if) this transaction commits.
    pub fn publish<M: Message>(&mut self, message: &M) -> Result<()> {
        let envelope = self.envelope(message)?;
        self.stage(None, envelope, None)
    }

    /// Sends a command to `endpoint` when this transaction commits.
    pub fn send<M: Message>(&mut self, endpoint: &str, message: &M) -> Result<()> {
        let envelope = self.envelope(message)?;
        self.stage(Some(endpoint), envelope, None)
    }

    /// Publishes an event at `at`, if this transaction commits.
    pub fn schedule<M: Message>(&mut self, message: &M, at: DateTime<Utc>) -> Result<()> {
        let envelope = self.envelope(message)?;
        self.stage(None, envelope, Some(at))
    }

    /// Stages a ready-made envelope (to carry correlation and trace from a handler's context).
    pub fn publish_envelope(&mut self, envelope: Envelope) -> Result<()> {
        self.stage(None, envelope, None)
    }
}

/// Writes one outbox row on an open transaction (shared by outbox transactions and the saga store).
pub(crate) fn insert_outbox_row(
    tx: &Connection,
    destination: Option<&str>,
    raw: RawMessage,
    deliver_at: Option<DateTime<Utc>>,
) -> Result<()> {
    let headers =
        serde_json::to_string(&raw.headers).map_err(|e| Error::engine(format!("cannot store headers: {e}")))?;
    tx.prepare_cached(
        "INSERT INTO courier_outbox (destination, headers, body, deliver_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| {
        s.execute(params![
            destination,
            headers,
            raw.body.as_ref(),
            deliver_at.map(|t| t.timestamp_millis()),
            now_millis()
        ])
    })
    .map(drop)
    .map_err(|e| Error::engine("cannot write to the outbox").with_source(e))
}

fn millis_to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_else(Utc::now)
}

impl SqliteOutbox {
    /// Opens the service database at `path` (creating it and the outbox tables). `service` is the CloudEvents
    /// `source` of the messages.
    pub async fn open(path: impl AsRef<Path>, service: impl Into<String>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let conn = open_service_db(&path, OUTBOX_SCHEMA, "outbox").await?;
        Ok(Self {
            inner: Arc::new(Inner { conn: Mutex::new(conn), service: service.into(), path, committed: Notify::new() }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `work` in one database transaction (BEGIN IMMEDIATE) on a blocking thread; commits if it returns `Ok`,
    /// rolls back (writes and messages alike) if it returns `Err`.
    pub async fn transaction<R, E, F>(&self, work: F) -> Result<R>
    where
        R: Send + 'static,
        E: std::fmt::Display + Send + 'static,
        F: FnOnce(&mut OutboxTransaction<'_>) -> std::result::Result<R, E> + Send + 'static,
    {
        let inner = self.inner.clone();
        let (result, staged) = tokio::task::spawn_blocking(move || -> Result<(R, usize)> {
            let mut conn = inner.conn.lock().unwrap_or_else(|p| p.into_inner());
            let db = |e: rusqlite::Error| Error::engine("outbox transaction failed").with_source(e);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
            let mut otx = OutboxTransaction { tx, service: &inner.service, staged: 0 };
            let result = work(&mut otx).map_err(|e| Error::engine(format!("the transaction's work failed: {e}")))?;
            let staged = otx.staged;
            otx.tx.commit().map_err(db)?;
            Ok((result, staged))
        })
        .await
        .map_err(|e| Error::engine(format!("outbox transaction panicked: {e}")))??;
        if staged > 0 {
            // notify_one keeps a permit if the relay is busy, so a commit during its fetch is not missed.
            self.inner.committed.notify_one();
        }
        Ok(result)
    }

    /// Tells the relay that messages were committed.
    pub(crate) fn notify_committed(&self) {
        self.inner.committed.notify_one();
    }

    pub(crate) async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn).map_err(|e| Error::engine("outbox query failed").with_source(e))
        })
        .await
        .map_err(|e| Error::engine(format!("outbox query panicked: {e}")))?
    }
}

#[async_trait]
impl OutboxStore for SqliteOutbox {
    async fn acquire_lease(&self, relay_id: &str, ttl: Duration) -> Result<bool> {
        let holder = relay_id.to_owned();
        self.with_conn(move |conn| {
            let now = now_millis();
            let changed = conn.execute(
                "INSERT INTO courier_outbox_lease (id, holder, until) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, until = excluded.until
                 WHERE courier_outbox_lease.holder = excluded.holder OR courier_outbox_lease.until < ?3",
                params![holder, now + ttl.as_millis() as i64, now],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn release_lease(&self, relay_id: &str) -> Result<()> {
        let holder = relay_id.to_owned();
        self.with_conn(move |conn| {
            conn.execute("DELETE FROM courier_outbox_lease WHERE holder = ?1", [holder]).map(drop)
        })
        .await
    }

    async fn fetch_unsent(&self, limit: usize) -> Result<Vec<OutboxRecord>> {
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, destination, headers, body, deliver_at, created_at FROM courier_outbox
                 WHERE sent_at IS NULL ORDER BY seq LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit.min(i64::MAX as usize) as i64], |r| {
                let destination: Option<String> = r.get(1)?;
                let headers: String = r.get(2)?;
                Ok(OutboxRecord {
                    seq: r.get(0)?,
                    destination: destination.map_or(OutboxDestination::Publish, OutboxDestination::Send),
                    message: RawMessage {
                        headers: serde_json::from_str(&headers).unwrap_or_default(),
                        body: Bytes::from(r.get::<_, Vec<u8>>(3)?),
                    },
                    deliver_at: r.get::<_, Option<i64>>(4)?.map(millis_to_time),
                    created_at: millis_to_time(r.get(5)?),
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn mark_sent(&self, seqs: &[i64]) -> Result<()> {
        let seqs = seqs.to_vec();
        self.with_conn(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached("UPDATE courier_outbox SET sent_at = ?1 WHERE seq = ?2")?;
                let now = now_millis();
                for seq in seqs {
                    stmt.execute(params![now, seq])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn purge_sent(&self, older_than: Duration) -> Result<u64> {
        let cutoff = now_millis() - older_than.as_millis() as i64;
        self.with_conn(move |conn| {
            conn.execute("DELETE FROM courier_outbox WHERE sent_at IS NOT NULL AND sent_at < ?1", [cutoff])
                .map(|n| n as u64)
        })
        .await
    }

    async fn lag(&self) -> Result<OutboxLag> {
        self.with_conn(|conn| {
            conn.query_row("SELECT COUNT(*), MIN(created_at) FROM courier_outbox WHERE sent_at IS NULL", [], |r| {
                let unsent: i64 = r.get(0)?;
                let oldest: Option<i64> = r.get(1)?;
                Ok(OutboxLag {
                    unsent: unsent as u64,
                    oldest_unsent: oldest.map(|t| Duration::from_millis((now_millis() - t).max(0) as u64)),
                })
            })
        })
        .await
    }

    async fn wait_for_new(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.inner.committed.notified()).await;
    }
}
