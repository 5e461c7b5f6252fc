//! The writer thread: every change to the database goes through one thread per process, which groups the
//! operations waiting at that moment into one transaction (group commit). With `synchronous=FULL` a commit costs a
//! disk flush, so one flush for hundreds of concurrent publishes is what makes durable publishing fast.
//!
//! Operations arrive on a bounded channel; the caller awaits a reply that is sent only after the commit, so a
//! returned publish is durable.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use courier_core::{Error, Result, strip_failure_annotations};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use crate::notify::Wakers;

/// A message row handed to a consumer.
#[derive(Debug)]
pub(crate) struct TakenRow {
    pub(crate) seq: i64,
    pub(crate) headers: String,
    pub(crate) body: Vec<u8>,
    pub(crate) deliveries: u32,
}

/// What a take returns: the rows, or when the next delayed message becomes visible.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    pub(crate) rows: Vec<TakenRow>,
    pub(crate) next_visible_at: Option<i64>,
}

/// Where a new message goes.
#[derive(Debug)]
pub(crate) enum Target {
    /// Every queue bound to this message type.
    Publish(String),
    /// One queue.
    Queue(String),
}

/// One change, with where to send its result.
#[derive(Debug)]
pub(crate) enum Op {
    Declare {
        queue: String,
        reply: oneshot::Sender<Result<()>>,
    },
    Bind {
        queue: String,
        message_type: String,
        reply: oneshot::Sender<Result<()>>,
    },
    DeleteQueue {
        queue: String,
        reply: oneshot::Sender<Result<()>>,
    },
    Enqueue {
        target: Target,
        message_id: String,
        headers: String,
        body: Bytes,
        visible_at: i64,
        reply: oneshot::Sender<Result<()>>,
    },
    Take {
        queue: String,
        max: usize,
        lease: i64,
        lease_until: i64,
        reply: oneshot::Sender<Result<Taken>>,
    },
    Ack {
        seq: i64,
        lease: i64,
        reply: Option<oneshot::Sender<Result<()>>>,
    },
    Retry {
        seq: i64,
        lease: i64,
        visible_at: i64,
        annotations: Vec<(String, String)>,
        reply: oneshot::Sender<Result<()>>,
    },
    DeadLetter {
        seq: i64,
        lease: i64,
        queue: String,
        annotations: Vec<(String, String)>,
        reply: oneshot::Sender<Result<()>>,
    },
    Release {
        seq: i64,
        lease: i64,
        reply: Option<oneshot::Sender<Result<()>>>,
    },
    Extend {
        leases: Vec<(i64, i64)>,
        until: i64,
    },
    Replay {
        entry: i64,
        reply: oneshot::Sender<Result<()>>,
    },
    Purge {
        entries: Vec<i64>,
        reply: oneshot::Sender<Result<u64>>,
    },
}

/// A finished operation's reply, sent after the commit.
enum Done {
    Unit(oneshot::Sender<Result<()>>, Result<()>),
    Taken(oneshot::Sender<Result<Taken>>, Result<Taken>),
    Count(oneshot::Sender<Result<u64>>, Result<u64>),
    None,
}

impl Done {
    fn send(self, commit: &Result<()>) {
        let fail = |e: &Error| Error::engine(format!("the SQLite commit failed: {e}"));
        match self {
            Done::Unit(tx, r) => drop(tx.send(commit.as_ref().map_err(fail).and(r))),
            Done::Taken(tx, r) => drop(tx.send(match commit {
                Ok(()) => r,
                Err(e) => Err(fail(e)),
            })),
            Done::Count(tx, r) => drop(tx.send(match commit {
                Ok(()) => r,
                Err(e) => Err(fail(e)),
            })),
            Done::None => {}
        }
    }
}

fn db_err(e: rusqlite::Error) -> Error {
    Error::engine("SQLite operation failed").with_source(e)
}

/// Which queues each message type is published to, cached by the writer and reloaded when the
/// `bindings_version` in `courier_meta` changes (another process, or this one, bound or deleted a queue). The
/// version is read at the start of each transaction, under the write lock, so the cache is never stale while used.
#[derive(Debug, Default)]
struct Bindings {
    version: Option<i64>,
    by_type: HashMap<String, Vec<String>>,
}

impl Bindings {
    fn refresh(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let version: i64 = conn
            .prepare_cached("SELECT value FROM courier_meta WHERE key = 'bindings_version'")?
            .query_row([], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        if self.version == Some(version) {
            return Ok(());
        }
        self.by_type.clear();
        let mut stmt = conn.prepare("SELECT message_type, queue FROM courier_bindings ORDER BY queue")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (message_type, queue) = row?;
            self.by_type.entry(message_type).or_default().push(queue);
        }
        self.version = Some(version);
        Ok(())
    }
}

fn bump_bindings_version(conn: &Connection) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO courier_meta (key, value) VALUES ('bindings_version', 1)
         ON CONFLICT (key) DO UPDATE SET value = value + 1",
    )?
    .execute([])
    .map(drop)
}

fn drain(rx: &mut mpsc::Receiver<Op>, batch: &mut Vec<Op>, max_batch: usize) {
    while batch.len() < max_batch {
        match rx.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
}

/// Runs the writer loop until every sender is gone.
pub(crate) fn run(mut conn: Connection, mut rx: mpsc::Receiver<Op>, max_batch: usize, wakers: Wakers) {
    let mut bindings = Bindings::default();
    let mut batch = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        drain(&mut rx, &mut batch, max_batch);
        let mut woken = HashSet::new();
        let mut done = Vec::with_capacity(batch.len());
        let commit = transaction(&mut conn, &mut bindings, &mut batch, &mut done, &mut woken);
        for d in done {
            d.send(&commit);
        }
        if commit.is_ok() {
            wakers.wake(woken);
        }
        batch.clear();
    }
}

fn transaction(
    conn: &mut Connection,
    bindings: &mut Bindings,
    batch: &mut Vec<Op>,
    done: &mut Vec<Done>,
    woken: &mut HashSet<String>,
) -> Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
    if let Err(e) = bindings.refresh(&tx) {
        bindings.version = None;
        return Err(db_err(e));
    }
    for op in batch.drain(..) {
        done.push(apply(&tx, bindings, op, woken));
    }
    tx.commit().map_err(db_err)
}

fn apply(conn: &Connection, bindings: &mut Bindings, op: Op, woken: &mut HashSet<String>) -> Done {
    let now = courier_core::now_millis();
    match op {
        Op::Declare { queue, reply } => Done::Unit(reply, declare(conn, &queue, now)),
        Op::Bind { queue, message_type, reply } => {
            let r = declare(conn, &queue, now).and_then(|()| {
                let added = conn
                    .prepare_cached("INSERT OR IGNORE INTO courier_bindings (message_type, queue) VALUES (?1, ?2)")
                    .and_then(|mut s| s.execute(params![message_type, queue]))
                    .map_err(db_err)?;
                if added > 0 {
                    bump_bindings_version(conn).map_err(db_err)?;
                    bindings.by_type.entry(message_type).or_default().push(queue);
                }
                Ok(())
            });
            Done::Unit(reply, r)
        }
        Op::DeleteQueue { queue, reply } => {
            let r = (|| {
                conn.execute("DELETE FROM courier_messages WHERE queue = ?1", [&queue])?;
                conn.execute("DELETE FROM courier_bindings WHERE queue = ?1", [&queue])?;
                conn.execute("DELETE FROM courier_queues WHERE name = ?1", [&queue])?;
                bump_bindings_version(conn)
            })()
            .map_err(db_err);
            for queues in bindings.by_type.values_mut() {
                queues.retain(|q| *q != queue);
            }
            Done::Unit(reply, r)
        }
        Op::Enqueue { target, message_id, headers, body, visible_at, reply } => {
            let r = enqueue(conn, bindings, &target, &message_id, &headers, &body, visible_at, now, woken);
            Done::Unit(reply, r)
        }
        Op::Take { queue, max, lease, lease_until, reply } => {
            Done::Taken(reply, take(conn, &queue, max, lease, lease_until, now))
        }
        Op::Ack { seq, lease, reply } => {
            let r = conn
                .prepare_cached("DELETE FROM courier_messages WHERE seq = ?1 AND lease = ?2")
                .and_then(|mut s| s.execute(params![seq, lease]))
                .map(drop)
                .map_err(db_err);
            reply.map_or(Done::None, |tx| Done::Unit(tx, r))
        }
        Op::Retry { seq, lease, visible_at, annotations, reply } => {
            let r = annotate(conn, seq, lease, annotations).and_then(|found| {
                if let Some((queue, headers)) = found {
                    conn.prepare_cached(
                        "UPDATE courier_messages SET headers = ?1, visible_at = ?2, lease = NULL WHERE seq = ?3",
                    )
                    .and_then(|mut s| s.execute(params![headers, visible_at, seq]))
                    .map_err(db_err)?;
                    woken.insert(queue);
                }
                Ok(())
            });
            Done::Unit(reply, r)
        }
        Op::DeadLetter { seq, lease, queue, annotations, reply } => {
            let r = dead_letter(conn, seq, lease, &queue, annotations, now);
            Done::Unit(reply, r)
        }
        Op::Release { seq, lease, reply } => {
            let r = conn
                .prepare_cached(
                    "UPDATE courier_messages SET visible_at = ?1, lease = NULL, deliveries = MAX(deliveries - 1, 0)
                     WHERE seq = ?2 AND lease = ?3 RETURNING queue",
                )
                .and_then(|mut s| s.query_row(params![now, seq, lease], |row| row.get::<_, String>(0)).optional())
                .map(|queue| {
                    woken.extend(queue);
                })
                .map_err(db_err);
            reply.map_or(Done::None, |tx| Done::Unit(tx, r))
        }
        Op::Extend { leases, until } => {
            for (seq, lease) in leases {
                let r = conn
                    .prepare_cached("UPDATE courier_messages SET visible_at = ?1 WHERE seq = ?2 AND lease = ?3")
                    .and_then(|mut s| s.execute(params![until, seq, lease]));
                if let Err(e) = r {
                    tracing::debug!(error = %e, "could not extend a lease");
                }
            }
            Done::None
        }
        Op::Replay { entry, reply } => Done::Unit(reply, replay(conn, entry, now, woken)),
        Op::Purge { entries, reply } => {
            let r = (|| {
                let mut stmt = conn.prepare_cached("DELETE FROM courier_dead_letters WHERE entry = ?1")?;
                let mut n = 0u64;
                for entry in entries {
                    n += stmt.execute([entry])? as u64;
                }
                Ok(n)
            })()
            .map_err(db_err);
            Done::Count(reply, r)
        }
    }
}

fn declare(conn: &Connection, queue: &str, now: i64) -> Result<()> {
    conn.prepare_cached("INSERT OR IGNORE INTO courier_queues (name, created_at) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute(params![queue, now]))
        .map(drop)
        .map_err(db_err)
}

#[allow(clippy::too_many_arguments)]
fn enqueue(
    conn: &Connection,
    bindings: &Bindings,
    target: &Target,
    message_id: &str,
    headers: &str,
    body: &[u8],
    visible_at: i64,
    now: i64,
    woken: &mut HashSet<String>,
) -> Result<()> {
    let queues: &[String] = match target {
        Target::Publish(message_type) => bindings.by_type.get(message_type).map_or(&[], Vec::as_slice),
        Target::Queue(queue) => {
            declare(conn, queue, now)?;
            std::slice::from_ref(queue)
        }
    };
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO courier_messages (queue, message_id, headers, body, visible_at, enqueued_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(db_err)?;
    for queue in queues {
        insert.execute(params![queue, message_id, headers, body, visible_at, now]).map_err(db_err)?;
        if visible_at <= now {
            woken.insert(queue.clone());
        }
    }
    Ok(())
}

fn take(conn: &Connection, queue: &str, max: usize, lease: i64, lease_until: i64, now: i64) -> Result<Taken> {
    let mut stmt = conn
        .prepare_cached(
            "UPDATE courier_messages SET visible_at = ?1, deliveries = deliveries + 1, lease = ?2
             WHERE seq IN (SELECT seq FROM courier_messages WHERE queue = ?3 AND visible_at <= ?4
                           ORDER BY visible_at, seq LIMIT ?5)
             RETURNING seq, headers, body, deliveries",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map(params![lease_until, lease, queue, now, max as i64], |r| {
            Ok(TakenRow { seq: r.get(0)?, headers: r.get(1)?, body: r.get(2)?, deliveries: r.get::<_, u32>(3)? })
        })
        .map_err(db_err)?;
    let mut taken = Taken::default();
    for row in rows {
        taken.rows.push(row.map_err(db_err)?);
    }
    taken.rows.sort_by_key(|r| r.seq);
    if taken.rows.is_empty() {
        taken.next_visible_at = conn
            .prepare_cached("SELECT MIN(visible_at) FROM courier_messages WHERE queue = ?1")
            .and_then(|mut s| s.query_row([queue], |r| r.get::<_, Option<i64>>(0)))
            .map_err(db_err)?;
    }
    Ok(taken)
}

/// Loads a leased message's queue and headers with the annotations applied; `None` if the lease was lost (the
/// message was already settled or redelivered to someone else).
fn annotate(
    conn: &Connection,
    seq: i64,
    lease: i64,
    annotations: Vec<(String, String)>,
) -> Result<Option<(String, String)>> {
    let found = conn
        .prepare_cached("SELECT queue, headers FROM courier_messages WHERE seq = ?1 AND lease = ?2")
        .and_then(|mut s| {
            s.query_row(params![seq, lease], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).optional()
        })
        .map_err(db_err)?;
    let Some((queue, headers)) = found else {
        tracing::debug!(seq, "lease lost before settling; the message was redelivered elsewhere");
        return Ok(None);
    };
    let mut map: courier_core::Headers = serde_json::from_str(&headers).unwrap_or_default();
    map.extend(annotations);
    Ok(Some((queue, serde_json::to_string(&map).map_err(|e| Error::engine(format!("cannot store headers: {e}")))?)))
}

fn dead_letter(
    conn: &Connection,
    seq: i64,
    lease: i64,
    queue: &str,
    annotations: Vec<(String, String)>,
    now: i64,
) -> Result<()> {
    let fingerprint = annotations
        .iter()
        .find(|(k, _)| k == courier_core::dead_letter_attr::FINGERPRINT)
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let Some((_, headers)) = annotate(conn, seq, lease, annotations)? else {
        return Ok(());
    };
    let moved = conn
        .prepare_cached(
            "INSERT INTO courier_dead_letters (queue, message_id, fingerprint, headers, body, dead_lettered_at)
             SELECT ?1, message_id, ?2, ?3, body, ?4 FROM courier_messages WHERE seq = ?5",
        )
        .and_then(|mut s| s.execute(params![queue, fingerprint, headers, now, seq]))
        .map_err(db_err)?;
    if moved == 1 {
        conn.prepare_cached("DELETE FROM courier_messages WHERE seq = ?1")
            .and_then(|mut s| s.execute([seq]))
            .map_err(db_err)?;
    }
    Ok(())
}

fn replay(conn: &Connection, entry: i64, now: i64, woken: &mut HashSet<String>) -> Result<()> {
    let found = conn
        .query_row("SELECT queue, message_id, headers, body FROM courier_dead_letters WHERE entry = ?1", [entry], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, Vec<u8>>(3)?))
        })
        .optional()
        .map_err(db_err)?;
    let Some((queue, message_id, headers, body)) = found else {
        return Err(Error::not_found(format!("no dead letter with id {entry} (already replayed or purged?)")));
    };
    let mut map: courier_core::Headers = serde_json::from_str(&headers).unwrap_or_default();
    strip_failure_annotations(&mut map);
    let headers = serde_json::to_string(&map).map_err(|e| Error::engine(format!("cannot store headers: {e}")))?;
    declare(conn, &queue, now)?;
    conn.execute(
        "INSERT INTO courier_messages (queue, message_id, headers, body, visible_at, enqueued_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        params![queue, message_id, headers, body, now],
    )
    .map_err(db_err)?;
    conn.execute("DELETE FROM courier_dead_letters WHERE entry = ?1", [entry]).map_err(db_err)?;
    woken.insert(queue);
    Ok(())
}
