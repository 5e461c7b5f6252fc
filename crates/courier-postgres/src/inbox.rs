//! The inbox on PostgreSQL: a handler's effect applied exactly once, however often its message is delivered.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use courier_core::{Error, MessageRef, Result};
use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::PgOutbox;
use crate::error::{db_error, retry_once};
use crate::store::{StoreDb, StoreSql, millis, query};

/// An idempotent-consumer inbox in the service's own PostgreSQL database (table `<schema>.inbox`).
///
/// [`begin_once`](PgInbox::begin_once) records the message id in a transaction and hands the transaction over for
/// the handler's writes: either both commit or neither does. A redelivered message (after a crash, a lost ack, a
/// duplicate publish) finds its id and gets `None`, so its effect happens once. A concurrent duplicate waits for
/// the first one's transaction and then gets `None` (or runs, if the first rolled back).
///
/// ```no_run
/// # use courier_postgres::PgInbox;
/// # async fn handler(inbox: PgInbox, ctx: impl courier_core::MessageRef) -> Result<(), Box<dyn std::error::Error>> {
/// if let Some(mut tx) = inbox.begin_once(&ctx).await? {
///     courier_postgres::sqlx::query("UPDATE stock SET reserved = reserved + 1 WHERE sku = 'A'")
///         .execute(&mut **tx)
///         .await?;
///     tx.commit().await?;
/// } // else: a duplicate, the effect was already applied
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PgInbox {
    db: StoreDb,
}

/// A transaction in which a message was recorded as handled. Dereferences to [`sqlx::Transaction`]; dropping it
/// without [`commit`](PgInboxTransaction::commit) forgets the record (the message will be handled again).
#[derive(Debug)]
pub struct PgInboxTransaction {
    tx: Transaction<'static, Postgres>,
}

impl Deref for PgInboxTransaction {
    type Target = Transaction<'static, Postgres>;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl DerefMut for PgInboxTransaction {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

impl AsMut<PgConnection> for PgInboxTransaction {
    fn as_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

impl PgInboxTransaction {
    /// Commits the handler's writes and the inbox record together.
    pub async fn commit(self) -> Result<()> {
        self.tx
            .commit()
            .await
            .map_err(|e| db_error("cannot commit the inbox transaction (the message will be handled again)", e))
    }

    /// Rolls both back.
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await.map_err(|e| db_error("cannot roll back the inbox transaction", e))
    }
}

/// Records `message` on an open transaction: `true` if it was new.
pub(crate) async fn record(conn: &mut PgConnection, sql: &StoreSql, message: &impl MessageRef) -> Result<bool> {
    let done = query(&sql.inbox_insert)
        .bind(message.consumer())
        .bind(message.message_id())
        .execute(conn)
        .await
        .map_err(|e| db_error("cannot record the message in the inbox", e))?;
    Ok(done.rows_affected() == 1)
}

impl PgInbox {
    /// Connects a pool of its own from a `postgres://` URL (`?schema=`, default `courier`).
    pub async fn connect(url: &str) -> Result<Self> {
        Ok(Self { db: StoreDb::connect(url).await? })
    }

    /// Uses the service's own pool, with the table in `schema` (created if missing).
    pub async fn with_pool(pool: PgPool, schema: &str) -> Result<Self> {
        Ok(Self { db: StoreDb::with_pool(pool, schema).await? })
    }

    /// The inbox in the same database and schema as `outbox`.
    pub fn for_outbox(outbox: &PgOutbox) -> Self {
        Self { db: outbox.db().clone() }
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    /// Starts a transaction that records `message` as handled by its consumer: `Some` to do the work on and
    /// commit, `None` if it already was (a duplicate; nothing to do).
    pub async fn begin_once(&self, message: &impl MessageRef) -> Result<Option<PgInboxTransaction>> {
        let mut tx = self.db.pool.begin().await.map_err(|e| db_error("cannot start an inbox transaction", e))?;
        if record(&mut tx, &self.db.sql, message).await? {
            Ok(Some(PgInboxTransaction { tx }))
        } else {
            let _ = tx.rollback().await;
            Ok(None)
        }
    }

    /// Runs `work` on a transaction that also records `message`, unless it already was. Returns `Some(result)` if
    /// the work ran and committed, `None` for a duplicate. If `work` fails, nothing is recorded (the message will be
    /// retried).
    ///
    /// ```no_run
    /// # async fn handler(inbox: courier_postgres::PgInbox, ctx: impl courier_core::MessageRef) -> courier_core::Result<()> {
    /// inbox
    ///     .once(&ctx, |conn| {
    ///         Box::pin(async move {
    ///             courier_postgres::sqlx::query("UPDATE stock SET reserved = reserved + 1").execute(conn).await
    ///         })
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn once<R, E, F>(&self, message: &impl MessageRef, work: F) -> Result<Option<R>>
    where
        E: std::fmt::Display,
        F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, std::result::Result<R, E>>,
    {
        let Some(mut tx) = self.begin_once(message).await? else { return Ok(None) };
        let result = work(&mut tx.tx).await.map_err(|e| Error::engine(format!("handler work failed: {e}")))?;
        tx.commit().await?;
        Ok(Some(result))
    }

    /// Whether `consumer` already handled `message_id`.
    pub async fn contains(&self, consumer: &str, message_id: &str) -> Result<bool> {
        let (pool, sql) = (&self.db.pool, &self.db.sql);
        let row: (bool,) = retry_once(|| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.inbox_contains.clone()))
                .bind(consumer)
                .bind(message_id)
                .fetch_one(pool)
        })
        .await
        .map_err(|e| db_error("cannot read the inbox", e))?;
        Ok(row.0)
    }

    /// Forgets ids recorded more than `retention` ago; returns how many. Keep the retention longer than any
    /// redelivery can take (the retry policy's total backoff plus the broker's redelivery window).
    pub async fn purge_older_than(&self, retention: Duration) -> Result<u64> {
        let (pool, sql) = (&self.db.pool, &self.db.sql);
        retry_once(|| query(&sql.inbox_purge).bind(millis(retention)).execute(pool))
            .await
            .map(|d| d.rows_affected())
            .map_err(|e| db_error("cannot purge the inbox", e))
    }
}
