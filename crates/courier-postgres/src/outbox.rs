//! The transactional outbox on PostgreSQL: the service's own writes and the messages it publishes commit together.
//!
//! Order: records are delivered by `seq`, drawn when a message is written (at `publish`, not at commit). A
//! transaction that starts after another one committed draws larger numbers, so causally related messages (the
//! second transaction saw the first one's writes) are delivered in commit order; a record whose transaction is
//! still running is simply not there yet and is delivered after it commits, even if its `seq` is smaller than
//! ones already delivered (nothing is skipped). Messages of transactions that overlap have no defined order
//! between them; to order two transactions on the same entity, take the entity's row lock (`UPDATE`,
//! `SELECT ... FOR UPDATE`) before publishing.
//!
//! Wake-ups: a transaction that wrote outbox rows notifies the channel `<schema>_outbox` (PostgreSQL delivers it
//! after the commit); the outbox keeps one LISTEN connection and wakes the relay. Commits in this process wake it
//! at once. While the LISTEN connection is down the relay polls.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use courier_core::{
    Envelope, Error, Message, MessageRef, OutboxDestination, OutboxLag, OutboxRecord, OutboxStore, RawMessage, Result,
    TraceParent,
};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::error::{db_error, retry_once};
use crate::store::{StoreDb, StoreSql, millis, query};

/// A transactional outbox in the service's own PostgreSQL database.
///
/// [`begin`](PgOutbox::begin) a transaction, do the service's writes with sqlx on it as usual, and
/// [`publish`](PgOutboxTransaction::publish) or [`send`](PgOutboxTransaction::send) on the same transaction: the
/// messages are rows of `<schema>.outbox`, committed (or rolled back) with the writes. An
/// [`OutboxRelay`](https://docs.rs/courier-bus) started with this outbox as its store hands them to the transport.
/// A crash anywhere loses nothing: a committed message is delivered after the restart (perhaps twice, which the
/// consumers' inbox absorbs).
///
/// It is cheap to clone; clones share the pool and the LISTEN connection.
///
/// ```no_run
/// # use courier_postgres::PgOutbox;
/// # use courier_core::{Json, Message};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderPlaced { id: i64 }
/// # impl Message for OrderPlaced { const NAME: &'static str = "shop.order.placed.v1"; type Codec = Json; }
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let outbox = PgOutbox::connect("postgres://postgres@127.0.0.1/shop?schema=orders", "orders").await?;
/// let mut tx = outbox.begin().await?;
/// sqlx::query("INSERT INTO orders (id, total) VALUES ($1, $2)").bind(42_i64).bind(4200_i64).execute(&mut **tx).await?;
/// tx.publish(&OrderPlaced { id: 42 }).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PgOutbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: StoreDb,
    service: String,
    wake: Arc<Wake>,
    listener: JoinHandle<()>,
    keep_sent: AtomicBool,
    /// The relay that last took or confirmed the lease here, and until when (on this machine's monotonic clock,
    /// a quarter of the ttl after the statement was sent) it certainly still holds it: no statement is needed until then.
    lease: std::sync::Mutex<Option<(String, Instant)>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

#[derive(Debug, Default)]
struct Wake {
    committed: Notify,
    listening: AtomicBool,
}

/// How often the relay looks while the LISTEN connection is down.
const POLL_WITHOUT_LISTEN: Duration = Duration::from_millis(250);

impl PgOutbox {
    /// Connects a pool of its own from a `postgres://` URL (`?schema=` names the schema of the tables, default
    /// `courier`; see the [crate docs](crate)). `service` is the CloudEvents `source` of the messages.
    pub async fn connect(url: &str, service: impl Into<String>) -> Result<Self> {
        Ok(Self::from_db(StoreDb::connect(url).await?, service.into()))
    }

    /// Uses the service's own pool, with the tables in `schema` (created if missing).
    pub async fn with_pool(pool: PgPool, schema: &str, service: impl Into<String>) -> Result<Self> {
        Ok(Self::from_db(StoreDb::with_pool(pool, schema).await?, service.into()))
    }

    /// Connects without creating anything; fails if the schema has no Courier tables (for read-only tools).
    pub(crate) async fn open_existing(url: &str, service: &str) -> Result<Self> {
        Ok(Self::from_db(StoreDb::open_existing(url).await?, service.to_owned()))
    }

    fn from_db(db: StoreDb, service: String) -> Self {
        let wake = Arc::new(Wake::default());
        let listener = tokio::spawn(listen(db.pool.clone(), db.sql.channel.clone(), wake.clone()));
        Self {
            inner: Arc::new(Inner {
                db,
                service,
                wake,
                listener,
                keep_sent: AtomicBool::new(false),
                lease: Default::default(),
            }),
        }
    }

    /// Whether delivered records are kept (marked with `sent_at`, deleted by the relay after its retention) or
    /// deleted as soon as they are delivered (the default, and about six times cheaper for the database). Keep them
    /// to inspect what was sent. Applies to every clone of this outbox.
    pub fn keep_sent(self, keep: bool) -> Self {
        self.inner.keep_sent.store(keep, Ordering::Relaxed);
        self
    }

    pub(crate) fn db(&self) -> &StoreDb {
        &self.inner.db
    }

    /// The connection pool (for the service's own statements).
    pub fn pool(&self) -> &PgPool {
        &self.inner.db.pool
    }

    /// The schema holding the outbox tables.
    pub fn schema(&self) -> &str {
        &self.inner.db.sql.schema
    }

    /// Starts a database transaction that can publish through the outbox. Dropping it without
    /// [`commit`](PgOutboxTransaction::commit) rolls back the writes and the messages alike.
    pub async fn begin(&self) -> Result<PgOutboxTransaction> {
        let tx = self.pool().begin().await.map_err(|e| db_error("cannot start an outbox transaction", e))?;
        Ok(PgOutboxTransaction { tx, outbox: self.clone(), staged: 0 })
    }

    /// Tells this process's relay that messages were committed.
    pub(crate) fn notify_committed(&self) {
        self.inner.wake.committed.notify_one();
    }
}

/// Writes one outbox row and nothing else on an open transaction (shared with the saga store).
pub(crate) async fn insert_outbox_row(
    conn: &mut PgConnection,
    sql: &StoreSql,
    destination: &OutboxDestination,
    raw: RawMessage,
    deliver_at: Option<DateTime<Utc>>,
) -> Result<()> {
    let headers =
        serde_json::to_string(&raw.headers).map_err(|e| Error::engine(format!("cannot store headers: {e}")))?;
    let destination = match destination {
        OutboxDestination::Publish => None,
        OutboxDestination::Send(queue) => Some(queue.as_str()),
    };
    query(&sql.insert_outbox)
        .bind(destination)
        .bind(headers)
        .bind(raw.body.to_vec())
        .bind(deliver_at)
        .execute(conn)
        .await
        .map(drop)
        .map_err(|e| db_error("cannot write to the outbox", e))
}

/// A database transaction that can also publish and send messages through the outbox. Dereferences to
/// [`sqlx::Transaction`] for the service's own statements (`.execute(&mut **tx)`).
#[derive(Debug)]
pub struct PgOutboxTransaction {
    tx: Transaction<'static, Postgres>,
    outbox: PgOutbox,
    staged: usize,
}

impl Deref for PgOutboxTransaction {
    type Target = Transaction<'static, Postgres>;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl DerefMut for PgOutboxTransaction {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

impl AsMut<PgConnection> for PgOutboxTransaction {
    fn as_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

impl PgOutboxTransaction {
    fn envelope<M: Message>(&self, message: &M) -> Result<Envelope> {
        let mut envelope = Envelope::for_message(&self.outbox.inner.service, message)?;
        envelope.traceparent = Some(TraceParent::new_root().to_string());
        Ok(envelope)
    }

    async fn stage(
        &mut self,
        destination: OutboxDestination,
        envelope: Envelope,
        deliver_at: Option<DateTime<Utc>>,
    ) -> Result<()> {
        let sql = self.outbox.inner.db.sql.clone();
        insert_outbox_row(&mut self.tx, &sql, &destination, envelope.into_raw(), deliver_at).await?;
        self.staged += 1;
        Ok(())
    }

    /// Publishes an event when (and only if) this transaction commits.
    pub async fn publish<M: Message>(&mut self, message: &M) -> Result<()> {
        let envelope = self.envelope(message)?;
        self.stage(OutboxDestination::Publish, envelope, None).await
    }

    /// Sends a command to the queue `endpoint` when this transaction commits.
    pub async fn send<M: Message>(&mut self, endpoint: &str, message: &M) -> Result<()> {
        let envelope = self.envelope(message)?;
        self.stage(OutboxDestination::Send(endpoint.to_owned()), envelope, None).await
    }

    /// Publishes an event at `at`, if this transaction commits.
    pub async fn schedule<M: Message>(&mut self, message: &M, at: DateTime<Utc>) -> Result<()> {
        let envelope = self.envelope(message)?;
        self.stage(OutboxDestination::Publish, envelope, Some(at)).await
    }

    /// Stages a ready-made envelope (to carry correlation and trace from a handler's context).
    pub async fn publish_envelope(&mut self, envelope: Envelope) -> Result<()> {
        self.stage(OutboxDestination::Publish, envelope, None).await
    }

    /// Records `message` as handled by its consumer in this transaction's inbox (the same schema's `inbox` table):
    /// `true` the first time, `false` for a duplicate (then roll back, or simply drop the transaction). For a
    /// handler that both applies an effect and publishes.
    pub async fn record_once(&mut self, message: &impl MessageRef) -> Result<bool> {
        let sql = self.outbox.inner.db.sql.clone();
        crate::inbox::record(&mut self.tx, &sql, message).await
    }

    /// Commits the writes and the messages, and wakes the relay.
    pub async fn commit(mut self) -> Result<()> {
        if self.staged > 0 {
            let sql = self.outbox.inner.db.sql.clone();
            // Delivered by PostgreSQL after the commit, and only if it commits.
            query(&sql.notify)
                .bind(&sql.channel)
                .execute(&mut *self.tx)
                .await
                .map_err(|e| db_error("cannot notify the outbox relay", e))?;
        }
        self.tx
            .commit()
            .await
            .map_err(|e| db_error("cannot commit the outbox transaction (nothing was published)", e))?;
        if self.staged > 0 {
            self.outbox.notify_committed();
        }
        Ok(())
    }

    /// Rolls back the writes and the messages.
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await.map_err(|e| db_error("cannot roll back the outbox transaction", e))
    }
}

fn record_from_row(row: &sqlx::postgres::PgRow) -> std::result::Result<OutboxRecord, sqlx::Error> {
    let destination: Option<String> = row.try_get(1)?;
    let headers: String = row.try_get(2)?;
    Ok(OutboxRecord {
        seq: row.try_get(0)?,
        destination: destination.map_or(OutboxDestination::Publish, OutboxDestination::Send),
        message: RawMessage {
            headers: serde_json::from_str(&headers).unwrap_or_default(),
            body: Bytes::from(row.try_get::<Vec<u8>, _>(3)?),
        },
        deliver_at: row.try_get(4)?,
        created_at: row.try_get(5)?,
    })
}

#[async_trait]
impl OutboxStore for PgOutbox {
    async fn acquire_lease(&self, relay_id: &str, ttl: Duration) -> Result<bool> {
        let started = Instant::now();
        if let Some((holder, until)) = &*self.inner.lease.lock().unwrap_or_else(|p| p.into_inner())
            && holder == relay_id
            && started < *until
        {
            return Ok(true);
        }
        let (pool, sql) = (self.pool(), &self.db().sql);
        // Held for more than half the ttl still: nothing to write (a renewal per batch would cost a commit).
        let held: bool = retry_once(|| query(&sql.lease_held).bind(relay_id).bind(millis(ttl / 2)).fetch_one(pool))
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|e| db_error("cannot read the outbox relay lease", e))?;
        let taken = held
            || retry_once(|| query(&sql.acquire_lease).bind(relay_id).bind(millis(ttl)).execute(pool))
                .await
                .map_err(|e| db_error("cannot take the outbox relay lease", e))?
                .rows_affected()
                == 1;
        if taken {
            // Held for at least ttl/2 from when the statement was sent (confirmed with more than ttl/2 left, or
            // renewed for the full ttl); trust it without asking for half of that.
            *self.inner.lease.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((relay_id.to_owned(), started + ttl / 4));
        }
        Ok(taken)
    }

    async fn release_lease(&self, relay_id: &str) -> Result<()> {
        {
            let mut lease = self.inner.lease.lock().unwrap_or_else(|p| p.into_inner());
            if lease.as_ref().is_some_and(|(holder, _)| holder == relay_id) {
                *lease = None;
            }
        }
        let (pool, sql) = (self.pool(), &self.db().sql);
        retry_once(|| query(&sql.release_lease).bind(relay_id).execute(pool))
            .await
            .map(drop)
            .map_err(|e| db_error("cannot release the outbox relay lease", e))
    }

    async fn fetch_unsent(&self, limit: usize) -> Result<Vec<OutboxRecord>> {
        let (pool, sql) = (self.pool(), &self.db().sql);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = retry_once(|| query(&sql.fetch_unsent).bind(limit).fetch_all(pool))
            .await
            .map_err(|e| db_error("cannot read the outbox", e))?;
        rows.iter()
            .map(record_from_row)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| db_error("cannot read the outbox", e))
    }

    async fn mark_sent(&self, seqs: &[i64]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        let (pool, sql) = (self.pool(), &self.db().sql);
        let stmt = if self.inner.keep_sent.load(Ordering::Relaxed) { &sql.mark_sent } else { &sql.delete_sent };
        retry_once(|| query(stmt).bind(seqs).execute(pool))
            .await
            .map(drop)
            .map_err(|e| db_error("cannot mark outbox records sent", e))
    }

    async fn purge_sent(&self, older_than: Duration) -> Result<u64> {
        let (pool, sql) = (self.pool(), &self.db().sql);
        retry_once(|| query(&sql.purge_sent).bind(millis(older_than)).execute(pool))
            .await
            .map(|d| d.rows_affected())
            .map_err(|e| db_error("cannot purge sent outbox records", e))
    }

    async fn lag(&self) -> Result<OutboxLag> {
        let (pool, sql) = (self.pool(), &self.db().sql);
        let row = retry_once(|| query(&sql.lag).fetch_one(pool))
            .await
            .map_err(|e| db_error("cannot read the outbox lag", e))?;
        let unsent: i64 = row.try_get(0).map_err(|e| db_error("cannot read the outbox lag", e))?;
        let oldest: Option<i64> = row.try_get(1).map_err(|e| db_error("cannot read the outbox lag", e))?;
        Ok(OutboxLag {
            unsent: u64::try_from(unsent).unwrap_or(0),
            oldest_unsent: oldest.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
        })
    }

    async fn wait_for_new(&self, timeout: Duration) {
        let wake = &self.inner.wake;
        let timeout = if wake.listening.load(Ordering::Acquire) { timeout } else { timeout.min(POLL_WITHOUT_LISTEN) };
        let _ = tokio::time::timeout(timeout, wake.committed.notified()).await;
    }
}

/// Keeps a LISTEN connection on `channel` and wakes the relay on every notification. Runs until aborted.
async fn listen(pool: PgPool, channel: String, wake: Arc<Wake>) {
    loop {
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        match connected {
            Ok(mut listener) => {
                wake.listening.store(true, Ordering::Release);
                // Commits may have happened while we were not listening.
                wake.committed.notify_one();
                loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => wake.committed.notify_one(),
                        Ok(None) => wake.committed.notify_one(),
                        Err(e) => {
                            tracing::debug!(error = %e, "outbox LISTEN connection failed; the relay polls");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot open the outbox LISTEN connection; the relay polls"),
        }
        wake.listening.store(false, Ordering::Release);
        tokio::time::sleep(POLL_WITHOUT_LISTEN).await;
    }
}
