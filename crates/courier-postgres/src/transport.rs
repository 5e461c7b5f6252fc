//! [`PostgresTransport`]: queues in PostgreSQL tables, shared by every process that connects to the database.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use courier_core::{Engine, Error, RawMessage, Result, Subscription, SubscriptionOptions, Transport};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::{mpsc, oneshot};

use crate::error::db_error;
use crate::options::{PostgresOptions, redact};
use crate::reuse::Reuse;
use crate::schema::{Sql, query};
use crate::settle::{self, Settle};
use crate::subscription::{PostgresSubscription, renew_leases};
use crate::wake::{self, Wakers};
use crate::writer::{self, Enqueue, WriterContext};

/// The PostgreSQL transport: queues, fan-out bindings, delayed delivery, visibility timeouts and dead letters in
/// four tables of one schema.
///
/// - **Durable**: a publish returns after its statement committed.
/// - **Fast**: concurrent publishes are written in groups, one statement and one commit per group; acks are
///   grouped the same way; consumers take messages in batches with `FOR UPDATE SKIP LOCKED`.
/// - **Prompt**: consumers are woken by `LISTEN`/`NOTIFY`, and poll only while the LISTEN connection is down.
/// - **Multi-process**: any number of processes may connect; consumers of one queue compete through leases. A
///   message taken by a process that dies becomes visible again after the consumer's visibility timeout; live
///   consumers extend their leases while handlers run.
/// - **Ordering**: first-in first-out per queue (by delivery time, then by enqueue order), except for retries,
///   releases and competing consumers.
///
/// It is cheap to clone; clones share one connection pool.
///
/// ```no_run
/// # async fn demo() -> courier_core::Result<()> {
/// use courier_postgres::{PostgresOptions, PostgresTransport};
/// let options = PostgresOptions::default().schema("shop");
/// let transport = PostgresTransport::connect("postgres://postgres@127.0.0.1:5432/shop", options).await?;
/// let engine = transport.into_engine();
/// # let _ = engine; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresTransport {
    pub(crate) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) pool: PgPool,
    /// Connections reused by the hot statements (see [`Reuse`]).
    pub(crate) reuse: Arc<Reuse>,
    pub(crate) sql: Arc<Sql>,
    pub(crate) options: PostgresOptions,
    pub(crate) declared: Arc<Mutex<HashSet<String>>>,
    pub(crate) writer: mpsc::Sender<Enqueue>,
    pub(crate) settler: mpsc::Sender<Settle>,
    pub(crate) wakers: Arc<Wakers>,
    listener: tokio::task::JoinHandle<()>,
    notifier: tokio::task::JoinHandle<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.listener.abort();
        self.notifier.abort();
        wake::flush_on_drop(self.reuse.clone(), self.sql.clone(), &self.wakers);
    }
}

impl PostgresTransport {
    /// Connects to the database at `url` (a `postgres://` or `postgresql://` URL; query parameters Courier knows,
    /// such as `schema`, override `options`) and creates the schema and tables if missing.
    ///
    /// A malformed URL is an [`ErrorKind::Config`](courier_core::ErrorKind::Config) error; an unreachable server or
    /// a refused login an [`ErrorKind::Connection`](courier_core::ErrorKind::Connection) error. Both name the URL
    /// (password hidden).
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<Self> {
        let (connect, options) = crate::options::parse_url(url, options)?;
        Self::connect_with(connect, options).await.map_err(|e| {
            let what = if e.kind() == courier_core::ErrorKind::Connection {
                "cannot reach PostgreSQL at"
            } else {
                "cannot set up Courier's tables at"
            };
            let hint = if e.kind() == courier_core::ErrorKind::Connection {
                ": check that the server is running and accepts this user and database"
            } else {
                ""
            };
            Error::new(e.kind(), format!("{what} '{}'{hint}", redact(url))).with_source(e)
        })
    }

    /// Connects with sqlx connection options (host, credentials, TLS) and Courier's settings.
    pub async fn connect_with(connect: PgConnectOptions, options: PostgresOptions) -> Result<Self> {
        let schema = options.validate()?;
        // A queue table is often empty when autovacuum looks at it; a take prepared then keeps a plan that reads
        // the whole queue and sorts it (a sequential or bitmap scan and a sort: 20-60 ms a take in the bench after
        // a `VACUUM` of the drained table, see `tests/plans.rs`). Every statement of the transport has an index to
        // walk, so its connections choose neither: a take walks the queue's index in order and stops at its limit,
        // whatever the statistics say.
        let connect = connect
            .application_name(&options.application_name)
            .options([("enable_seqscan", "off"), ("enable_bitmapscan", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            // A broken connection fails its statement and is replaced; pinging before every use would double the
            // round trips of the hot path.
            .test_before_acquire(false)
            .connect_with(connect)
            .await
            .map_err(|e| db_error("cannot connect to PostgreSQL", e))?;
        let sql = Arc::new(Sql::new(&schema));
        sql.create(&pool).await?;

        let declared = Arc::new(Mutex::new(HashSet::new()));
        let wakers = Arc::new(Wakers::default());
        let (writer_tx, writer_rx) = mpsc::channel(options.max_batch * 4);
        // Half the pool at most waits idle for the hot statements; the rest serves everything else.
        let reuse = Arc::new(Reuse::new(pool.clone(), (options.max_connections as usize / 2).max(1)));
        let context = WriterContext {
            reuse: reuse.clone(),
            sql: sql.clone(),
            declared: declared.clone(),
            wakers: wakers.clone(),
            max_batch: options.max_batch,
            writers: options.writers,
        };
        tokio::spawn(writer::run(context, writer_rx));
        let (settle_tx, settle_rx) = mpsc::channel(options.max_batch * 4);
        tokio::spawn(settle::run(reuse.clone(), sql.clone(), options.max_batch.max(256), settle_rx));
        let notifier = tokio::spawn(wake::notify(reuse.clone(), sql.clone(), wakers.clone(), options.notify_interval));
        let listener =
            tokio::spawn(wake::listen(pool.clone(), sql.channel.clone(), wakers.clone(), options.poll_interval));
        Ok(Self {
            shared: Arc::new(Shared {
                pool,
                reuse,
                sql,
                options,
                declared,
                writer: writer_tx,
                settler: settle_tx,
                wakers,
                listener,
                notifier,
            }),
        })
    }

    /// This transport as an [`Engine`] (transport and admin).
    pub fn into_engine(self) -> Engine {
        Engine::new(Arc::new(self))
    }

    /// The schema holding this transport's tables.
    pub fn schema(&self) -> &str {
        &self.shared.sql.schema
    }

    /// The connection pool, for running your own statements next to Courier's (e.g. in tests).
    pub fn pool(&self) -> &PgPool {
        &self.shared.pool
    }

    /// Drops this transport's schema with every queue, message and dead letter in it. For tests and uninstalls;
    /// transports still using the schema fail until one connects again (which recreates it).
    pub async fn drop_schema(&self) -> Result<()> {
        let statement = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.shared.sql.schema);
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&self.shared.pool)
            .await
            .map(drop)
            .map_err(|e| db_error("cannot drop the schema", e))
    }

    async fn enqueue(
        &self,
        queue: Option<String>,
        message: RawMessage,
        deliver_at: Option<DateTime<Utc>>,
    ) -> Result<()> {
        let message_type = message.message_type().unwrap_or_default().to_owned();
        let message_id = message.id().unwrap_or_default().to_owned();
        let headers = encode_headers(&message.headers)?;
        let (reply, done) = oneshot::channel();
        let op = Enqueue {
            queue,
            message_type,
            message_id,
            headers,
            body: message.body,
            visible_at: deliver_at.map(|t| t.timestamp_millis()),
            reply,
        };
        let closed = || Error::closed("the PostgreSQL writer task has stopped");
        self.shared.writer.send(op).await.map_err(|_| closed())?;
        done.await.map_err(|_| closed())?
    }

    async fn execute(&self, doing: &str, statements: &[(&crate::schema::Stmt, &[&str])]) -> Result<()> {
        let mut tx = self.shared.pool.begin().await.map_err(|e| db_error(doing, e))?;
        for (stmt, args) in statements {
            let mut q = query(stmt);
            for arg in *args {
                q = q.bind(*arg);
            }
            q.execute(&mut *tx).await.map_err(|e| db_error(doing, e))?;
        }
        tx.commit().await.map_err(|e| db_error(doing, e))
    }
}

fn encode_headers(headers: &courier_core::Headers) -> Result<String> {
    serde_json::to_string(headers).map_err(|e| Error::engine(format!("cannot store headers: {e}")))
}

#[async_trait]
impl Transport for PostgresTransport {
    async fn declare_queue(&self, queue: &str) -> Result<()> {
        let sql = &self.shared.sql;
        self.execute(&format!("cannot declare queue '{queue}'"), &[(&sql.declare, &[queue])]).await?;
        self.shared.declared.lock().unwrap_or_else(|p| p.into_inner()).insert(queue.to_owned());
        Ok(())
    }

    async fn bind(&self, queue: &str, message_type: &str) -> Result<()> {
        let sql = &self.shared.sql;
        let doing = format!("cannot bind queue '{queue}' to '{message_type}'");
        self.execute(&doing, &[(&sql.declare, &[queue]), (&sql.bind, &[message_type, queue])]).await?;
        self.shared.declared.lock().unwrap_or_else(|p| p.into_inner()).insert(queue.to_owned());
        Ok(())
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        let sql = &self.shared.sql;
        self.shared.declared.lock().unwrap_or_else(|p| p.into_inner()).remove(queue);
        let doing = format!("cannot delete queue '{queue}'");
        self.execute(
            &doing,
            &[(&sql.delete_messages, &[queue]), (&sql.delete_bindings, &[queue]), (&sql.delete_queue, &[queue])],
        )
        .await?;
        self.shared.declared.lock().unwrap_or_else(|p| p.into_inner()).remove(queue);
        Ok(())
    }

    async fn publish(&self, message: RawMessage, deliver_at: Option<DateTime<Utc>>) -> Result<()> {
        self.enqueue(None, message, deliver_at).await
    }

    async fn send(&self, queue: &str, message: RawMessage, deliver_at: Option<DateTime<Utc>>) -> Result<()> {
        self.enqueue(Some(queue.to_owned()), message, deliver_at).await
    }

    /// Acks are run in batches in the background; this waits until those queued before it have been run.
    async fn flush(&self) -> Result<()> {
        let (done, flushed) = oneshot::channel();
        let closed = || Error::closed("the PostgreSQL settle task has stopped");
        self.shared.settler.send(Settle::Flush(done)).await.map_err(|_| closed())?;
        flushed.await.map_err(|_| closed())
    }

    async fn subscribe(&self, queue: &str, options: SubscriptionOptions) -> Result<Box<dyn Subscription>> {
        self.declare_queue(queue).await?;
        let shared = &self.shared;
        let held = Arc::new(Mutex::new(HashMap::new()));
        let visibility = options.visibility_timeout.max(Duration::from_millis(100));
        let renewer = tokio::spawn(renew_leases(shared.reuse.clone(), shared.sql.clone(), held.clone(), visibility));
        Ok(Box::new(PostgresSubscription {
            pool: shared.pool.clone(),
            reuse: shared.reuse.clone(),
            sql: shared.sql.clone(),
            settler: shared.settler.clone(),
            wakers: shared.wakers.clone(),
            queue: Arc::from(queue),
            visibility,
            poll_interval: shared.options.poll_interval,
            recheck_interval: shared.options.recheck_interval,
            held,
            renewer,
        }))
    }
}
