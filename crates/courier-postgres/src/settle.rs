//! Settling deliveries. Acks and releases are frequent and cheap to group: one task per transport collects those
//! waiting at one moment and settles them with one statement each (`DELETE ... USING unnest(seqs, leases)`).
//! Retries and dead-lettering are rare and run on their own. An ack does not wait for its statement (the handler's
//! task would be woken once more per message for nothing it needs); [`Settle::Flush`], which the transport's
//! `flush` sends, is answered once every settle queued before it is done.
//!
//! Every statement matches the message by sequence number *and* lease token, so settling a delivery whose lease
//! expired and whose message was taken again by another consumer does nothing. Each finds its rows by address (the
//! `ctid` the take or the last lease renewal returned), and by sequence number only those that moved since (see
//! [`ROWS_AT`](crate::schema) for why).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use courier_core::{Acker, Annotations, Error, Result, dead_letter_attr};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{PgPool, Postgres, Row};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::error::{db_error, retry_once};
use crate::reuse::{Reuse, reusing};
use crate::schema::{Pair, Sql, query_planned};

/// A message's lease: its token, and the row's address as last learned (from the take or a lease renewal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lease {
    pub(crate) token: i64,
    pub(crate) at: String,
}

/// Leases held by one subscription and still being handled, by seq. Renewed while present.
pub(crate) type Held = Arc<Mutex<HashMap<i64, Lease>>>;

/// The rows a settling statement is about: their seqs, addresses and `seq:lease` keys (see [`Pair`]).
#[derive(Debug, Default)]
pub(crate) struct Rows {
    seqs: Vec<i64>,
    ats: Vec<String>,
    keys: Vec<String>,
}

impl Rows {
    pub(crate) fn push(&mut self, seq: i64, lease: &Lease) {
        self.seqs.push(seq);
        self.ats.push(lease.at.clone());
        self.keys.push(format!("{seq}:{}", lease.token));
    }

    pub(crate) fn len(&self) -> usize {
        self.seqs.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// The rows whose seq is not in `settled`.
    fn without(&self, settled: &HashSet<i64>) -> Rows {
        let mut rest = Rows::default();
        for (i, seq) in self.seqs.iter().enumerate() {
            if !settled.contains(seq) {
                rest.seqs.push(*seq);
                rest.ats.push(self.ats[i].clone());
                rest.keys.push(self.keys[i].clone());
            }
        }
        rest
    }
}

/// Runs a settling statement for `rows` by address, then by seq for the rows it did not find (moved since their
/// address was learned, or no longer leased to us); `rest` binds the parameters after `$2`. Returns the rows of
/// both, each starting with the seq it settled.
pub(crate) async fn settle_rows<'a>(
    reuse: &Reuse,
    pair: &Pair,
    rows: &'a Rows,
    rest: impl Fn(Query<'a, Postgres, PgArguments>) -> Query<'a, Postgres, PgArguments>,
) -> std::result::Result<Vec<PgRow>, sqlx::Error> {
    let mut found =
        reusing!(reuse, |conn| rest(query_planned(&pair.at).bind(&rows.ats).bind(&rows.keys)).fetch_all(conn))?;
    if found.len() < rows.len() {
        let settled: HashSet<i64> = found.iter().filter_map(|row| row.try_get(0).ok()).collect();
        let moved = rows.without(&settled);
        if !moved.is_empty() {
            found.extend(reusing!(reuse, |conn| rest(query_planned(&pair.seq).bind(&moved.seqs).bind(&moved.keys))
                .fetch_all(conn))?);
        }
    }
    Ok(found)
}

/// How many settle statements may run at once.
const SETTLERS: usize = 2;

/// An ack or a release, with where to send its result (`None`: nobody waits).
#[derive(Debug)]
pub(crate) enum Settle {
    Ack {
        seq: i64,
        lease: Lease,
        reply: Option<oneshot::Sender<Result<()>>>,
    },
    Release {
        seq: i64,
        lease: Lease,
        reply: Option<oneshot::Sender<Result<()>>>,
    },
    /// Answered once every settle queued before it has been run.
    Flush(oneshot::Sender<()>),
}

/// Runs until every sender is gone.
pub(crate) async fn run(reuse: Arc<Reuse>, sql: Arc<Sql>, max_batch: usize, mut rx: mpsc::Receiver<Settle>) {
    let permits = Arc::new(Semaphore::new(SETTLERS));
    let mut settling = JoinSet::new();
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        if rx.recv_many(&mut batch, max_batch).await == 0 {
            break;
        }
        while settling.try_join_next().is_some() {}
        let ops = std::mem::replace(&mut batch, Vec::with_capacity(max_batch));
        if ops.iter().any(|op| matches!(op, Settle::Flush(_))) {
            // Everything before the flush: the batches already running, then this one.
            while settling.join_next().await.is_some() {}
            settle(&reuse, &sql, ops).await;
            drop(permit);
            continue;
        }
        let (reuse, sql) = (reuse.clone(), sql.clone());
        settling.spawn(async move {
            settle(&reuse, &sql, ops).await;
            drop(permit);
        });
    }
    while settling.join_next().await.is_some() {}
}

async fn settle(reuse: &Reuse, sql: &Sql, ops: Vec<Settle>) {
    let (mut acks, mut releases, mut flushes) = (Batch::default(), Batch::default(), Vec::new());
    for op in ops {
        match op {
            Settle::Ack { seq, lease, reply } => acks.push(seq, lease, reply),
            Settle::Release { seq, lease, reply } => releases.push(seq, lease, reply),
            Settle::Flush(reply) => flushes.push(reply),
        }
    }
    if !acks.rows.is_empty() {
        let r = settle_rows(reuse, &sql.ack, &acks.rows, |q| q).await;
        acks.answer(r.map(drop).map_err(|e| db_error("cannot ack", e)));
    }
    if !releases.rows.is_empty() {
        let r = settle_rows(reuse, &sql.release, &releases.rows, |q| q.bind(&sql.channel)).await;
        releases.answer(r.map(drop).map_err(|e| db_error("cannot release", e)));
    }
    for flush in flushes {
        let _ = flush.send(());
    }
}

#[derive(Default)]
struct Batch {
    rows: Rows,
    replies: Vec<oneshot::Sender<Result<()>>>,
}

impl Batch {
    fn push(&mut self, seq: i64, lease: Lease, reply: Option<oneshot::Sender<Result<()>>>) {
        self.rows.push(seq, &lease);
        self.replies.extend(reply);
    }

    fn answer(self, result: Result<()>) {
        if let Err(e) = &result
            && self.replies.len() < self.rows.len()
        {
            tracing::warn!(
                messages = self.rows.len() - self.replies.len(),
                error = %e,
                "acknowledgements failed; those messages will be redelivered after their visibility timeout"
            );
        }
        for reply in self.replies {
            let _ = reply.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

/// Settles one delivery.
#[derive(Debug)]
pub(crate) struct PostgresAcker {
    pub(crate) pool: PgPool,
    pub(crate) sql: Arc<Sql>,
    pub(crate) settler: mpsc::Sender<Settle>,
    pub(crate) seq: i64,
    /// The lease as the take returned it; the held map has its latest address.
    pub(crate) lease: Lease,
    pub(crate) held: Held,
}

impl PostgresAcker {
    /// Stops renewing the lease; returns it with the row's latest known address.
    fn forget(&self) -> Lease {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.seq);
        held.unwrap_or_else(|| self.lease.clone())
    }

    async fn call(&self, make: impl FnOnce(oneshot::Sender<Result<()>>) -> Settle) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let closed = || Error::closed("the PostgreSQL transport was dropped");
        self.settler.send(make(tx)).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Runs a statement of `pair` for this message by address, then by seq if the row was not there; `rest`
    /// binds the parameters after `$3` (seq and lease).
    async fn settle_one<'a>(
        &self,
        pair: &Pair,
        lease: &'a Lease,
        rest: impl Fn(Query<'a, Postgres, PgArguments>) -> Query<'a, Postgres, PgArguments>,
    ) -> std::result::Result<(), sqlx::Error> {
        let (seq, token, pool) = (self.seq, lease.token, &self.pool);
        let at = retry_once(|| rest(query_planned(&pair.at).bind(&lease.at).bind(seq).bind(token)).execute(pool));
        if at.await?.rows_affected() == 0 {
            retry_once(|| rest(query_planned(&pair.seq).bind(seq).bind(seq).bind(token)).execute(pool)).await?;
        }
        Ok(())
    }
}

fn annotations_json(annotations: &Annotations) -> Result<String> {
    let map: serde_json::Map<String, serde_json::Value> =
        annotations.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    serde_json::to_string(&map).map_err(|e| Error::engine(format!("cannot store headers: {e}")))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

#[async_trait]
impl Acker for PostgresAcker {
    /// Queues the ack and returns; the transport's `flush` waits for it.
    async fn ack(&self) -> Result<()> {
        let ack = Settle::Ack { seq: self.seq, lease: self.forget(), reply: None };
        self.settler.send(ack).await.map_err(|_| Error::closed("the PostgreSQL transport was dropped"))
    }

    async fn retry(&self, delay: Duration, annotations: Annotations) -> Result<()> {
        let lease = self.forget();
        let headers = annotations_json(&annotations)?;
        let (delay, channel) = (millis(delay), &self.sql.channel);
        self.settle_one(&self.sql.retry, &lease, |q| q.bind(&headers).bind(delay).bind(channel))
            .await
            .map_err(|e| db_error("cannot schedule the redelivery", e))
    }

    async fn dead_letter(&self, annotations: Annotations) -> Result<()> {
        let lease = self.forget();
        let fingerprint = annotations
            .iter()
            .rev()
            .find(|(k, _)| k == dead_letter_attr::FINGERPRINT)
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let headers = annotations_json(&annotations)?;
        self.settle_one(&self.sql.dead_letter, &lease, |q| q.bind(&fingerprint).bind(&headers))
            .await
            .map_err(|e| db_error("cannot dead-letter the message", e))
    }

    async fn release(&self) -> Result<()> {
        let (seq, lease) = (self.seq, self.forget());
        self.call(|reply| Settle::Release { seq, lease, reply: Some(reply) }).await
    }

    fn release_on_drop(&self) {
        let lease = self.forget();
        // Best effort: if the channel is full or closed, the lease expires and the message comes back anyway.
        let _ = self.settler.try_send(Settle::Release { seq: self.seq, lease, reply: None });
    }
}
