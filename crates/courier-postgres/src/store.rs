//! The tables of the service-side stores (outbox, inbox, sagas) and every statement they run, for one schema.
//!
//! Times are `timestamptz` from the server's clock (`now()`), except delivery times the caller gives. Headers are a
//! JSON object stored as text, bodies are `bytea`.

use std::sync::Arc;

use courier_core::{Error, Result};
use sqlx::postgres::PgConnectOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};

use crate::error::db_error;
use crate::options::{PostgresOptions, parse_url, redact};
use crate::schema::{Stmt, create_tables};

const DDL: &str = r#"
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.outbox (
    seq         bigserial PRIMARY KEY,
    destination text,
    headers     text NOT NULL,
    body        bytea NOT NULL,
    deliver_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON {s}.outbox (seq) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_sent ON {s}.outbox (sent_at) WHERE sent_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS {s}.outbox_lease (
    id     integer PRIMARY KEY CHECK (id = 1),
    holder text NOT NULL,
    until  timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.inbox (
    consumer     text NOT NULL,
    message_id   text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX IF NOT EXISTS inbox_by_time ON {s}.inbox (processed_at);
CREATE TABLE IF NOT EXISTS {s}.sagas (
    saga       text NOT NULL,
    id         text NOT NULL,
    state      text NOT NULL,
    status     text NOT NULL,
    finished   boolean NOT NULL,
    version    bigint NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (saga, id)
);
CREATE INDEX IF NOT EXISTS sagas_by_time ON {s}.sagas (updated_at);
CREATE TABLE IF NOT EXISTS {s}.saga_history (
    saga         text NOT NULL,
    id           text NOT NULL,
    message_id   text NOT NULL,
    message_type text NOT NULL,
    from_status  text NOT NULL,
    to_status    text NOT NULL,
    at           timestamptz NOT NULL,
    step         bigserial,
    PRIMARY KEY (saga, id, message_id)
);
"#;

/// The statements of one schema's stores, built once per store.
#[derive(Debug)]
pub(crate) struct StoreSql {
    /// The schema name, unquoted (validated).
    pub(crate) schema: String,
    /// The NOTIFY channel the outbox relay listens on.
    pub(crate) channel: String,
    /// `$1` destination, `$2` headers, `$3` body, `$4` deliver_at.
    pub(crate) insert_outbox: Stmt,
    /// `$1` channel.
    pub(crate) notify: Stmt,
    /// `$1` holder, `$2` ms: whether `$1` holds the lease for at least that long still (no write).
    pub(crate) lease_held: Stmt,
    /// `$1` holder, `$2` ttl ms. Committed asynchronously: a renewal lost in a server crash only lets another
    /// relay take over early (duplicates, which the contract allows).
    pub(crate) acquire_lease: Stmt,
    pub(crate) release_lease: Stmt,
    /// `$1` limit.
    pub(crate) fetch_unsent: Stmt,
    /// `$1` seqs. Committed asynchronously (`synchronous_commit = off` for this transaction only): a mark lost in a
    /// server crash means the record is delivered again, which the contract allows; it saves a WAL flush a batch.
    pub(crate) mark_sent: Stmt,
    /// Like `mark_sent`, but deletes the records (the default: a delete costs a sixth of the update).
    pub(crate) delete_sent: Stmt,
    /// `$1` age in ms.
    pub(crate) purge_sent: Stmt,
    pub(crate) lag: Stmt,
    /// `$1` consumer, `$2` message id.
    pub(crate) inbox_insert: Stmt,
    pub(crate) inbox_contains: Stmt,
    /// `$1` age in ms.
    pub(crate) inbox_purge: Stmt,
    pub(crate) saga_load: Stmt,
    pub(crate) saga_history_insert: Stmt,
    pub(crate) saga_insert: Stmt,
    pub(crate) saga_update: Stmt,
    pub(crate) saga_list: Stmt,
    pub(crate) saga_history: Stmt,
}

const SAGA_COLUMNS: &str = "saga, id, state, status, finished, version, updated_at";

impl StoreSql {
    fn new(schema: &str) -> Self {
        let s = |template: &str| -> Stmt { template.replace("{s}", &format!("\"{schema}\"")).into() };
        Self {
            schema: schema.to_owned(),
            channel: format!("{schema}_outbox"),
            insert_outbox: s("INSERT INTO {s}.outbox (destination, headers, body, deliver_at) VALUES ($1, $2, $3, $4)"),
            notify: s("SELECT pg_notify($1, '')::text"),
            lease_held: s("SELECT EXISTS (SELECT 1 FROM {s}.outbox_lease
                WHERE holder = $1 AND until > now() + $2::bigint * interval '1 millisecond')"),
            acquire_lease: s("WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
                INSERT INTO {s}.outbox_lease (id, holder, until)
                SELECT 1, $1, now() + $2::bigint * interval '1 millisecond' FROM relaxed
                ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, until = excluded.until
                WHERE {s}.outbox_lease.holder = excluded.holder OR {s}.outbox_lease.until < now()"),
            release_lease: s("DELETE FROM {s}.outbox_lease WHERE holder = $1"),
            // `LIMIT (SELECT $1)` hides the limit from the planner, which then walks `outbox_unsent` in order and
            // stops: with a plain `LIMIT $1` and stale statistics (a freshly filled or churning outbox) it picks a
            // bitmap scan of every unsent row plus a sort, 30-100 ms per batch of 2,000 instead of under 1 ms.
            fetch_unsent: s("SELECT seq, destination, headers, body, deliver_at, created_at FROM {s}.outbox
                WHERE sent_at IS NULL ORDER BY seq LIMIT (SELECT $1)"),
            mark_sent: s("WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
                UPDATE {s}.outbox SET sent_at = now() FROM relaxed WHERE seq = ANY($1) AND sent_at IS NULL"),
            delete_sent: s("WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
                DELETE FROM {s}.outbox USING relaxed WHERE seq = ANY($1)"),
            purge_sent: s("DELETE FROM {s}.outbox WHERE sent_at IS NOT NULL
                AND sent_at < now() - $1::bigint * interval '1 millisecond'"),
            lag: s("SELECT count(*), floor(extract(epoch FROM now() - min(created_at)) * 1000)::bigint
                FROM {s}.outbox WHERE sent_at IS NULL"),
            inbox_insert: s("INSERT INTO {s}.inbox (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"),
            inbox_contains: s("SELECT EXISTS (SELECT 1 FROM {s}.inbox WHERE consumer = $1 AND message_id = $2)"),
            inbox_purge: s("DELETE FROM {s}.inbox WHERE processed_at < now() - $1::bigint * interval '1 millisecond'"),
            saga_load: s(&format!("SELECT {SAGA_COLUMNS} FROM {{s}}.sagas WHERE saga = $1 AND id = $2")),
            saga_history_insert: s("INSERT INTO {s}.saga_history
                (saga, id, message_id, message_type, from_status, to_status, at)
                VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"),
            saga_insert: s("INSERT INTO {s}.sagas (saga, id, state, status, finished, version, updated_at)
                VALUES ($1, $2, $3, $4, $5, 1, now()) ON CONFLICT DO NOTHING"),
            saga_update: s("UPDATE {s}.sagas SET state = $3, status = $4, finished = $5, version = version + 1,
                updated_at = now() WHERE saga = $1 AND id = $2 AND version = $6"),
            saga_list: s(&format!(
                "SELECT {SAGA_COLUMNS} FROM {{s}}.sagas WHERE ($1::text IS NULL OR saga = $1)
                 ORDER BY updated_at DESC, saga, id LIMIT $2"
            )),
            saga_history: s("SELECT message_id, message_type, from_status, to_status, at FROM {s}.saga_history
                WHERE saga = $1 AND id = $2 ORDER BY step"),
        }
    }

    /// Creates the schema and the store tables if missing, under an advisory lock (many processes may start at
    /// once).
    async fn create(&self, pool: &PgPool) -> Result<()> {
        create_tables(pool, &self.schema, DDL, "courier stores", "outbox, inbox and saga tables").await
    }
}

/// A pool and the statements of one schema, shared by the outbox, inbox and saga store of a service.
#[derive(Debug, Clone)]
pub(crate) struct StoreDb {
    pub(crate) pool: PgPool,
    pub(crate) sql: Arc<StoreSql>,
}

impl StoreDb {
    /// Uses `pool`, with the tables in `schema` (created if missing).
    pub(crate) async fn with_pool(pool: PgPool, schema: &str) -> Result<Self> {
        let schema = PostgresOptions::default().schema(schema).validate()?;
        let sql = Arc::new(StoreSql::new(&schema));
        sql.create(&pool).await?;
        Ok(Self { pool, sql })
    }

    /// Connects a pool of its own from a `postgres://` URL (its `schema` and `max_connections` parameters apply),
    /// creating the tables if missing.
    pub(crate) async fn connect(url: &str) -> Result<Self> {
        let (pool, schema) = Self::pool(url).await?;
        Self::with_pool(pool, &schema).await
    }

    /// Like [`connect`](Self::connect), but creates nothing: fails if the schema has no saga tables (for tools
    /// that only read).
    pub(crate) async fn open_existing(url: &str) -> Result<Self> {
        let (pool, schema) = Self::pool(url).await?;
        let table = format!("\"{schema}\".saga_history");
        let (found,): (bool,) = sqlx::query_as("SELECT to_regclass($1) IS NOT NULL")
            .bind(&table)
            .fetch_one(&pool)
            .await
            .map_err(|e| db_error("cannot look for Courier's saga tables", e))?;
        if !found {
            return Err(Error::config(format!(
                "no Courier saga tables in schema '{schema}' at '{}': check the ?schema= parameter (a service \
                 creates them when it opens its PgOutbox)",
                redact(url)
            )));
        }
        Ok(Self { pool, sql: Arc::new(StoreSql::new(&schema)) })
    }

    async fn pool(url: &str) -> Result<(PgPool, String)> {
        let (connect, options): (PgConnectOptions, PostgresOptions) = parse_url(url, PostgresOptions::default())?;
        let schema = options.validate()?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.application_name(&options.application_name))
            .await
            .map_err(|e| db_error(&format!("cannot connect to PostgreSQL at '{}' (check the URL)", redact(url)), e))?;
        Ok((pool, schema))
    }
}

/// Starts a query from a store statement.
pub(crate) fn query(stmt: &Stmt) -> sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments> {
    crate::schema::query(stmt)
}

/// Milliseconds of a duration, for interval arithmetic in SQL.
pub(crate) fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}
