//! Courier's PostgreSQL transport: queues in ordinary tables, taken with `FOR UPDATE SKIP LOCKED`, consumers woken
//! by `LISTEN`/`NOTIFY`, with visibility timeouts, delayed delivery and a dead-letter table.
//!
//! - [`PostgresTransport`]: implements [`Transport`](courier_core::Transport) and [`Admin`](courier_core::Admin)
//!   (so `courier queues` and `courier dlq list|show|replay|purge` work on it).
//! - [`PostgresEngineFactory`]: selects it by URL: `postgres://user:password@host:5432/database` (or
//!   `postgresql://`).
//! - [`PostgresOptions`]: its settings, from code or from the URL.
//!
//! And the service-side stores, in the service's own database (not necessarily the one the
//! transport uses), tables in a schema of their choice (default `courier`: `outbox`, `outbox_lease`, `inbox`,
//! `sagas`, `saga_history`, created if missing under an advisory lock):
//!
//! - [`PgOutbox`]: the transactional outbox ([`OutboxStore`](courier_core::OutboxStore)):
//!   `let mut tx = outbox.begin().await?`, the service's statements on `&mut **tx`, `tx.publish(&event).await?`,
//!   `tx.commit().await?`. The relay (`courier_bus::OutboxRelay`) is woken by `NOTIFY` from the committing
//!   transaction; its lease is a row with holder and expiry on the server's clock.
//! - [`PgInbox`]: idempotent consumers: `inbox.begin_once(&ctx).await?` gives a transaction for the handler's
//!   writes, or `None` for a duplicate.
//! - [`PgSagaStore`]: a [`SagaStore`](courier_core::SagaStore) on the outbox's database: state, history and
//!   outgoing messages in one transaction.
//!
//! Store guarantees: a committed outbox message is delivered at least once, whatever crashes (delivered records
//! are deleted, or with [`PgOutbox::keep_sent`] marked; that statement and lease renewals commit with
//! `synchronous_commit = off`, so a server crash can only cause redelivery). Records go out in `seq` order, drawn
//! at `publish`: causally related transactions keep their order, overlapping ones have none (see [`PgOutbox`]).
//! A transaction that publishes issues one `NOTIFY`, which PostgreSQL serialises across commits: for many small
//! concurrent transactions, publish several messages per transaction where you can.
//!
//! # Delivery guarantees
//!
//! - **Durable publish.** `publish` and `send` return once the statement that inserted the message committed
//!   (with the server's `synchronous_commit`, `on` by default), so a returned publish survives a crash of any
//!   process and of the server.
//! - **At least once.** A message is deleted only by an ack (run in batches in the background: `ack` returns once
//!   queued, and `Transport::flush`, which `Bus::shutdown` calls, waits for what was queued). A consumer takes messages under a lease (a random
//!   token and a visibility deadline); while its handlers run the lease is extended every third of the visibility
//!   timeout. If the consumer's process dies, or its connection to PostgreSQL is cut for longer than the
//!   visibility timeout, the message becomes visible again and is redelivered, with its delivery count increased.
//!   Settling a delivery whose lease was lost (it was redelivered meanwhile) does nothing. A delivery dropped
//!   unsettled is released in the background at once. So handlers may see duplicates; the inbox makes their
//!   effects exactly-once.
//! - **No double delivery among live consumers.** `SKIP LOCKED` and the lease mean one message is held by one
//!   consumer at a time.
//! - **Ordering.** First-in first-out per queue: messages are taken by delivery time, then by the order they were
//!   written. Concurrent publishes have no order among themselves; retries, releases, redeliveries after a
//!   visibility timeout and competing consumers reorder. There is no per-`partitionkey` ordering beyond this.
//! - **Dead letters** are rows of the `dead_letters` table (reported as `<queue>.dlq`), with the failure
//!   annotations as headers and the fingerprint in its own column; a replay puts the message back at the end of
//!   its queue with the annotations removed and its delivery count reset.
//! - **Wake-ups.** Writes that make a message available notify the channel `<schema>_wake` (payload: the
//!   queue), so idle consumers take it at once: retries, releases and replays in the same transaction; publishes
//!   right after their commit, coalesced by one notifier task per transport (notifying inside every publish
//!   transaction serialised their commits; see the `wake` module): consumers in the publishing process are woken
//!   at once, other processes' consumers by a notification sent at once after a quiet spell and otherwise at most
//!   every `notify_ms` (5 ms), so a busy publisher commits a notification per interval, not per batch. While the LISTEN connection is down, consumers
//!   poll every `poll_ms`; with it up they still look every `recheck_ms` as a safety net (which is also how
//!   another process's consumer finds a message whose publisher died between commit and notification).
//! - **Connection loss.** The pool replaces broken connections; a publish whose connection broke fails with an
//!   [`ErrorKind::Connection`](courier_core::ErrorKind::Connection) error (and may or may not have been written:
//!   retrying it may duplicate it, never lose it). Acks, releases, lease renewals and takes are retried once on a
//!   fresh connection.
//!
//! # Tables
//!
//! Created on connect if missing (serialised with `pg_advisory_xact_lock`, so many processes may start at once),
//! in the schema given by the `schema` option (default `courier`): `queues`, `bindings` (message type to queue:
//! a publish is copied to every bound queue by one `INSERT ... SELECT`), `messages` (`seq`, `queue`,
//! `message_id`, JSON `headers`, `bytea` `body`, `visible_at` and `enqueued_at` in epoch milliseconds,
//! deliveries`, `lease`) and `dead_letters`. Times are read from the database server's clock, except delivery
//! times the caller gives.
//!
//! The transport's own connections run with `enable_seqscan` and `enable_bitmapscan` off: a queue table is often
//! empty when autovacuum records its statistics, and a take prepared then would keep a plan that reads and sorts
//! the whole queue once it fills again; every statement of the transport has an index to walk instead. A take
//! updates the rows it leased by their address (`ctid`), so no index choice is left to such statistics there. The
//! statements that read `messages` (take, the idle look, and those that settle deliveries) are not prepared but
//! planned at each execution, with the table's size and the arguments then. The statements that settle deliveries
//! (ack, release, lease renewal, retry, dead-lettering) find their rows by the address the take, or the last lease
//! renewal, returned: a TID scan, the one plan left on these connections whatever the statistics say. Matched by
//! `seq`, they read the whole primary-key index for every batch, or walked the whole queue index to find one row,
//! when plans were kept from an empty table, and even planned at each execution when a vacuum could not remove a
//! drained table's rows (another session's old snapshot kept them: the statistics then say "no rows" while the
//! pages remain; seen in CI). `tests/plans.rs` reproduces both and checks the plans. Rows not found at their
//! address are still settled, looked for by `seq`, and that statement can still meet such statistics: it runs for
//! a settle that raced a lease renewal (about once per renewal, every third of the visibility timeout), an expired
//! lease, or rows moved by `VACUUM FULL` or a repack.
//!
//! # Sizing the server
//!
//! Every message is inserted, updated once by the take that leases it and deleted by its ack: in the bench about
//! 2 KB of WAL a message (`pg_stat_wal`), 60-70 MB/s at 30,000 msg/s. With PostgreSQL's default `max_wal_size`
//! (1 GB) that is a checkpoint every 7-10 seconds (the log says `checkpoint starting: wal`), and after each one the
//! first change to every page writes the whole page to the WAL again. For a database that carries queues, raise
//! `max_wal_size` until checkpoints come from `checkpoint_timeout` instead. The queue table churns: autovacuum keeps
//! it small and needs nothing special, and the transport does not depend on the statistics it leaves (see Tables).
//!
//! # URL and options
//!
//! `postgres://user:password@host:port/database?schema=courier&max_connections=10`. Courier's own parameters
//! (each a field of [`PostgresOptions`]):
//!
//! | parameter | default | meaning |
//! |---|---|---|
//! | `schema` | `courier` | schema holding the tables (`[a-z_][a-z0-9_]*`, at most 50 characters) |
//! | `max_connections` | 10 | pool size, at least 2 (one connection is kept for LISTEN) |
//! | `poll_ms` | 250 | how often idle consumers look for messages while LISTEN is down |
//! | `recheck_ms` | 5000 | how often idle consumers look for messages while LISTEN is up |
//! | `max_batch` | 512 | most publishes written by one statement |
//! | `writers` | 4 | publish statements running at once |
//! | `notify_ms` | 5 | least time between two notifications of publishes to other processes (see Wake-ups) |
//! | `acquire_timeout_ms` | 10000 | how long to wait for a pooled connection |
//! | `application_name` | `courier` | shown in `pg_stat_activity` |
//!
//! Every other parameter goes to sqlx's connection options (`sslmode`, `sslrootcert`, `host`, `port`, `user`,
//! `password`, `options`, ...).
//!
//! Why our own code: no maintained crate offers fan-out, leases, delayed delivery and dead letters on PostgreSQL
//! with group commit; the database access is sqlx with runtime (not compile-time checked) queries, so building
//! needs no database.

mod admin;
mod error;
mod inbox;
mod options;
mod outbox;
mod reuse;
mod saga;
mod schema;
mod settle;
mod store;
mod subscription;
mod transport;
mod wake;
mod writer;

use async_trait::async_trait;
use courier_core::{Engine, EngineFactory, Result};

pub use inbox::{PgInbox, PgInboxTransaction};
pub use options::{PostgresOptions, redact};
pub use outbox::{PgOutbox, PgOutboxTransaction};
pub use saga::PgSagaStore;
pub use sqlx;
pub use transport::PostgresTransport;

/// The statements that read a schema's `messages` table while settling deliveries (by address) or idling, by
/// name, as the transport runs them: for the test that checks PostgreSQL's plans for them (`tests/plans.rs`).
#[doc(hidden)]
pub fn settling_statements(schema: &str) -> Vec<(&'static str, String)> {
    schema::Sql::new(schema).settling().into_iter().map(|(name, stmt)| (name, stmt.to_string())).collect()
}

/// Connects `postgres://` and `postgresql://` URLs (see the [crate docs](crate) for the parameters).
///
/// ```no_run
/// # async fn demo() -> courier_core::Result<()> {
/// use courier_core::EngineRegistry;
/// use courier_postgres::PostgresEngineFactory;
/// let registry = EngineRegistry::new().with(PostgresEngineFactory);
/// let engine = registry.connect("postgres://postgres@127.0.0.1:5432/shop?schema=courier").await?;
/// # let _ = engine; Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct PostgresEngineFactory;

#[async_trait]
impl EngineFactory for PostgresEngineFactory {
    fn schemes(&self) -> &'static [&'static str] {
        &["postgres", "postgresql"]
    }

    async fn connect(&self, url: &str) -> Result<Engine> {
        Ok(PostgresTransport::connect(url, PostgresOptions::default()).await?.into_engine())
    }
}
