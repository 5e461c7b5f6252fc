//! The tables of the PostgreSQL transport and every statement it runs, written for one schema.
//!
//! Times are milliseconds since the Unix epoch (`bigint`), read from the server's clock (`now()`), except delivery
//! times given by the caller. Headers are a JSON object stored as text (merged with `jsonb` on retry and
//! dead-lettering), bodies are `bytea`.

use std::sync::Arc;

use sqlx::PgPool;
use sqlx::postgres::{PgArguments, Postgres};
use sqlx::query::Query;

use courier_core::{Error, ErrorKind, Result};

use crate::error::{db_error, is_connection_error};

/// The server's current time in milliseconds. `now()` is the statement's start time in an implicit transaction,
/// and stable, so it can bound an index scan.
const NOW: &str = "floor(extract(epoch FROM now()) * 1000)::bigint";

const DDL: &str = r#"
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.queues (
    name        text PRIMARY KEY,
    created_at  bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.bindings (
    message_type text NOT NULL,
    queue        text NOT NULL,
    PRIMARY KEY (message_type, queue)
);
CREATE TABLE IF NOT EXISTS {s}.messages (
    seq         bigserial PRIMARY KEY,
    queue       text NOT NULL,
    message_id  text NOT NULL,
    headers     text NOT NULL,
    body        bytea NOT NULL,
    visible_at  bigint NOT NULL,
    deliveries  integer NOT NULL DEFAULT 0,
    lease       bigint,
    enqueued_at bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_queue ON {s}.messages (queue, visible_at, seq);
CREATE TABLE IF NOT EXISTS {s}.dead_letters (
    entry            bigserial PRIMARY KEY,
    queue            text NOT NULL,
    message_id       text NOT NULL,
    fingerprint      text NOT NULL,
    headers          text NOT NULL,
    body             bytea NOT NULL,
    dead_lettered_at bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_queue ON {s}.dead_letters (queue, entry);
CREATE INDEX IF NOT EXISTS dead_letters_by_fingerprint ON {s}.dead_letters (fingerprint, entry);
"#;

/// A prepared statement's text, cheap to clone.
pub(crate) type Stmt = Arc<str>;

/// Starts a query from a statement of [`Sql`] (our own text with bind parameters: nothing user-supplied is spliced
/// in but the validated schema name).
pub(crate) fn query(stmt: &Stmt) -> Query<'static, Postgres, PgArguments> {
    sqlx::query(sqlx::AssertSqlSafe(stmt.clone()))
}

/// Starts a query from a statement of [`Sql`] that reads `messages` by queue or by sequence number (take, settle,
/// renew, the idle look), to be planned at every execution, with its arguments and the table's size at that
/// moment, rather than prepared once.
///
/// A queue table is often empty when a connection first runs a statement, or when (auto)vacuum has just recorded
/// it as empty, and a plan cached then stays while the table fills: the settling statements, when they matched
/// rows by `seq`, kept plans that read the whole primary-key index for every batch, or walked the whole queue index
/// to find one row (`tests/plans.rs`). They now match by address, which any plan does well, but keep being planned
/// at each execution for the hashed key lookup (see [`ROWS_AT`]). An unprepared statement costs one more round
/// trip (sqlx describes it before running it) and its planning; these run once per batch of messages, or for a failed handling, and the bench on one machine
/// measured no difference. The other way to get plans made at each execution, `plan_cache_mode =
/// force_custom_plan` on the transport's connections, plans every publish batch too: 3-6 us more server CPU a
/// message and 3-7% less throughput in three A/B pairs, so not taken.
pub(crate) fn query_planned(stmt: &Stmt) -> Query<'static, Postgres, PgArguments> {
    query(stmt).persistent(false)
}

/// The rows of a settling batch found by address: a TID scan, whatever the table's statistics say.
///
/// A queue table's statistics can say "no rows" while its pages hold thousands: a vacuum of a drained queue that
/// could not remove the deleted rows (another session's old snapshot kept them) records 0 live rows, and the
/// planner estimates every table size from that density until autoanalyze runs. Matching a batch by `seq` then
/// planned a read of a whole index, even planned at each execution (seen in CI): a join on `seq` makes the
/// primary key's order look useful, and a condition on `seq` alone can walk the whole `messages_by_queue` index,
/// both cheap for a table believed empty. By address, with no join and no indexed column in the condition, the
/// only plan that is not disabled on the transport's connections (`enable_seqscan` and `enable_bitmapscan` off)
/// is the TID scan, which reads exactly the rows named (`tests/plans.rs`). The key (`seq:lease`) is compared as
/// one value; planned at each execution, as these statements are, PostgreSQL (14 and later) looks it up in a hash
/// of the batch's keys once they are 9 or more, where a prepared plan would compare each row with every key.
///
/// The rows not found by address are looked for by `seq` ([`ROWS_BY_SEQ`]), and that statement can still meet such
/// statistics and walk an index. It runs only for rows that moved: a settle that raced a lease renewal (so about
/// once per renewal, every third of the visibility timeout), an expired lease, a `VACUUM FULL` or repack.
const ROWS_AT: &str = "ctid = ANY($1::text[]::tid[]) AND seq::text || ':' || lease::text = ANY($2::text[])";
/// The rows of a settling batch found by sequence number, for those whose address changed.
const ROWS_BY_SEQ: &str = "seq = ANY($1::bigint[]) AND seq::text || ':' || lease::text = ANY($2::text[])";

/// A settling statement by address and the same by sequence number (see [`ROWS_AT`]).
#[derive(Debug)]
pub(crate) struct Pair {
    pub(crate) at: Stmt,
    pub(crate) seq: Stmt,
    /// How many rows were looked for by seq, not having been found at their address.
    pub(crate) by_seq: std::sync::atomic::AtomicU64,
}

/// The statements of one schema, built once per transport.
#[derive(Debug)]
pub(crate) struct Sql {
    /// The schema name, unquoted (validated: `[a-z_][a-z0-9_]*`).
    pub(crate) schema: String,
    /// The NOTIFY channel consumers of this schema listen on.
    pub(crate) channel: String,
    pub(crate) declare: Stmt,
    pub(crate) bind: Stmt,
    pub(crate) delete_messages: Stmt,
    pub(crate) delete_bindings: Stmt,
    pub(crate) delete_queue: Stmt,
    /// `$1` queues (NULL for publish), `$2` types, `$3` ids, `$4` headers, `$5` bodies, `$6` visible_at (NULL for
    /// now), `$7` queues to declare. Returns
    /// the queues written to.
    pub(crate) enqueue: Stmt,
    /// `$1` queue, `$2` limit, `$3` visibility ms, `$4` lease. Returns each row's address for settling it.
    pub(crate) take: Stmt,
    /// `$1` queue: milliseconds until the next message becomes visible (negative if one is visible now); no row if
    /// the queue is empty.
    pub(crate) next_visible: Stmt,
    /// Settling statements come in pairs: `.at` finds the rows by their address (`$1` the `ctid`s as text, the
    /// common case), `.seq` by sequence number (`$1` seqs, for rows that moved since their address was learned).
    /// Either way `$2` holds each message's `seq:lease` key, so only the lease holder settles. Both return the
    /// seqs they settled.
    pub(crate) ack: Pair,
    /// `$3` channel.
    pub(crate) release: Pair,
    /// `$3` visibility ms. Also returns each row's new address and its lease.
    pub(crate) renew: Pair,
    /// One message: `$3` annotations (JSON object), `$4` delay ms, `$5` channel.
    pub(crate) retry: Pair,
    /// One message: `$3` fingerprint, `$4` annotations (JSON object).
    pub(crate) dead_letter: Pair,
    pub(crate) queues: Stmt,
    pub(crate) replay_select: Stmt,
    pub(crate) replay_insert: Stmt,
    pub(crate) replay_delete: Stmt,
    /// The dead letters matching `$1` queue, `$2` fingerprint, `$3` entry ids (each NULL for any), `$4` limit.
    pub(crate) dead_letters: Stmt,
    /// `$1` channel, `$2` queues: one notification per queue.
    pub(crate) notify: Stmt,
    /// Deletes what [`dead_letters`](Self::dead_letters) would list; returns the count.
    pub(crate) purge: Stmt,
}

impl Sql {
    pub(crate) fn new(schema: &str) -> Self {
        let s =
            |template: &str| -> Stmt { template.replace("{s}", &format!("\"{schema}\"")).replace("{now}", NOW).into() };
        // A settling statement by address and by seq (see `Pair`).
        let pair = |template: &str| Pair {
            by_seq: Default::default(),
            at: s(&template.replace("{rows}", ROWS_AT)),
            seq: s(&template.replace("{rows}", ROWS_BY_SEQ)),
        };
        let filter = "($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR fingerprint = $2)
                      AND ($3::bigint[] IS NULL OR entry = ANY($3))";
        Self {
            schema: schema.to_owned(),
            channel: format!("{schema}_wake"),
            declare: s("INSERT INTO {s}.queues (name, created_at) VALUES ($1, {now}) ON CONFLICT DO NOTHING"),
            bind: s("INSERT INTO {s}.bindings (message_type, queue) VALUES ($1, $2) ON CONFLICT DO NOTHING"),
            delete_messages: s("DELETE FROM {s}.messages WHERE queue = $1"),
            delete_bindings: s("DELETE FROM {s}.bindings WHERE queue = $1"),
            delete_queue: s("DELETE FROM {s}.queues WHERE name = $1"),
            enqueue: s("WITH input AS (
                    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::bigint[])
                        WITH ORDINALITY AS i (queue, message_type, message_id, headers, body, visible_at, ord)
                ), declared AS (
                    INSERT INTO {s}.queues (name, created_at) SELECT unnest($7::text[]), {now} ON CONFLICT DO NOTHING
                ), inserted AS (
                    INSERT INTO {s}.messages (queue, message_id, headers, body, visible_at, enqueued_at)
                    SELECT COALESCE(i.queue, b.queue), i.message_id, i.headers, i.body,
                           COALESCE(i.visible_at, {now}), {now}
                    FROM input i LEFT JOIN {s}.bindings b ON i.queue IS NULL AND b.message_type = i.message_type
                    WHERE i.queue IS NOT NULL OR b.queue IS NOT NULL
                    ORDER BY i.ord, b.queue
                    RETURNING queue
                )
                SELECT DISTINCT queue FROM inserted"),
            // The rows are found again by their physical address (a TID scan): they are locked by the inner select
            // and cannot move before the update, and no index choice is left to statistics that may say the table
            // is empty (an index on (queue, visible_at, seq) was once chosen to find rows by seq, a full scan).
            take: s("UPDATE {s}.messages SET visible_at = {now} + $3, deliveries = deliveries + 1, lease = $4
                WHERE ctid = ANY(ARRAY(
                    SELECT ctid FROM {s}.messages WHERE queue = $1 AND visible_at <= {now}
                    ORDER BY visible_at, seq LIMIT $2 FOR UPDATE SKIP LOCKED))
                RETURNING seq, headers, body, deliveries, ctid::text"),
            // `ORDER BY ... LIMIT 1` walks the queue's index and stops at its first entry, whatever the statistics say
            // (an aggregate was planned as a read of the whole queue).
            next_visible: s("SELECT visible_at - {now} FROM {s}.messages WHERE queue = $1 ORDER BY visible_at LIMIT 1"),
            ack: pair("DELETE FROM {s}.messages WHERE {rows} RETURNING seq"),
            release: pair(
                "WITH released AS (
                    UPDATE {s}.messages SET visible_at = {now}, lease = NULL, deliveries = GREATEST(deliveries - 1, 0)
                    WHERE {rows}
                    RETURNING seq, queue
                )
                SELECT seq, pg_notify($3, queue)::text FROM released",
            ),
            renew: pair(
                "UPDATE {s}.messages SET visible_at = {now} + $3 WHERE {rows} RETURNING seq, ctid::text, lease",
            ),
            retry: pair(
                "WITH retried AS (
                    UPDATE {s}.messages SET headers = (headers::jsonb || $3::jsonb)::text, visible_at = {now} + $4,
                           lease = NULL
                    WHERE {rows}
                    RETURNING seq, queue
                )
                SELECT seq, pg_notify($5, queue)::text FROM retried",
            ),
            dead_letter: pair(
                "WITH moved AS (
                    DELETE FROM {s}.messages WHERE {rows}
                    RETURNING seq, queue, message_id, headers, body
                ), stored AS (
                    INSERT INTO {s}.dead_letters (queue, message_id, fingerprint, headers, body, dead_lettered_at)
                    SELECT queue, message_id, $3, (headers::jsonb || $4::jsonb)::text, body, {now} FROM moved
                )
                SELECT seq FROM moved",
            ),
            queues: s("WITH depth AS (
                    SELECT queue,
                           count(*) FILTER (WHERE visible_at <= {now}) AS ready,
                           count(*) FILTER (WHERE visible_at > {now} AND lease IS NOT NULL) AS in_flight,
                           count(*) FILTER (WHERE visible_at > {now} AND lease IS NULL) AS delayed
                    FROM {s}.messages GROUP BY queue
                ), dead AS (
                    SELECT queue, count(*) AS dead FROM {s}.dead_letters GROUP BY queue
                )
                SELECT q.name, COALESCE(d.ready, 0), COALESCE(d.in_flight, 0), COALESCE(d.delayed, 0),
                       COALESCE(x.dead, 0)
                FROM {s}.queues q LEFT JOIN depth d ON d.queue = q.name LEFT JOIN dead x ON x.queue = q.name
                ORDER BY q.name"),
            replay_select: s(
                "SELECT queue, message_id, headers, body FROM {s}.dead_letters WHERE entry = $1 FOR UPDATE",
            ),
            replay_insert: s("WITH declared AS (
                    INSERT INTO {s}.queues (name, created_at) VALUES ($1, {now}) ON CONFLICT DO NOTHING
                )
                INSERT INTO {s}.messages (queue, message_id, headers, body, visible_at, enqueued_at)
                VALUES ($1, $2, $3, $4, {now}, {now})"),
            replay_delete: s("DELETE FROM {s}.dead_letters WHERE entry = $1"),
            notify: s("SELECT pg_notify($1, q)::text FROM unnest($2::text[]) AS q"),
            dead_letters: s(&format!(
                "SELECT entry, queue, headers, body, dead_lettered_at FROM {{s}}.dead_letters
                 WHERE {filter} ORDER BY entry LIMIT $4"
            )),
            purge: s(&format!(
                "DELETE FROM {{s}}.dead_letters WHERE entry IN (
                     SELECT entry FROM {{s}}.dead_letters WHERE {filter} ORDER BY entry LIMIT $4)"
            )),
        }
    }

    /// The statements that read `messages` while settling by address or idling, by name (see
    /// [`settling_statements`](crate::settling_statements)).
    pub(crate) fn settling(&self) -> Vec<(&'static str, Stmt)> {
        vec![
            ("ack", self.ack.at.clone()),
            ("release", self.release.at.clone()),
            ("renew", self.renew.at.clone()),
            ("retry", self.retry.at.clone()),
            ("dead_letter", self.dead_letter.at.clone()),
            ("next_visible", self.next_visible.clone()),
        ]
    }

    /// Creates the schema and tables if missing. Serialised by an advisory lock, so many transports connecting at
    /// once do not race on the catalog.
    pub(crate) async fn create(&self, pool: &PgPool) -> Result<()> {
        create_tables(pool, &self.schema, DDL, "courier schema", "tables").await
    }
}

/// Runs `ddl` (with `{s}` standing for the quoted schema) under a transaction-scoped advisory lock named after
/// `lock` and the schema, so many processes starting at once do not race on the catalog. `what` names the tables
/// in the error, which says what permission is missing.
pub(crate) async fn create_tables(pool: &PgPool, schema: &str, ddl: &str, lock: &str, what: &str) -> Result<()> {
    let mut tx = pool.begin().await.map_err(|e| db_error("cannot start the schema transaction", e))?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || ' ' || $2, 0))")
        .bind(lock)
        .bind(schema)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("cannot take the schema lock", e))?;
    let ddl = ddl.replace("{s}", &format!("\"{schema}\""));
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl)).execute(&mut *tx).await.map_err(|e| {
        let kind = if is_connection_error(&e) { ErrorKind::Connection } else { ErrorKind::Engine };
        Error::new(
            kind,
            format!(
                "cannot create Courier's {what} in schema '{schema}': the user needs CREATE on the database (or \
                 create the schema for it)"
            ),
        )
        .with_source(e)
    })?;
    tx.commit().await.map_err(|e| db_error("cannot commit the schema", e))
}
