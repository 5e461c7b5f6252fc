//! Settling deliveries. Acks and releases are frequent and cheap to group: one task per transport collects those
//! waiting at one moment and settles them with one statement each (`DELETE ... USING unnest(seqs, leases)`).
//! Retries and dead-lettering are rare and run on their own. An ack does not wait for its statement (the handler's
//! task would be woken once more per message for nothing it needs); [`Settle::Flush`], which the transport's
//! `flush` sends, is answered once every settle queued before it is done.
//!
//! Every statement matches the message by sequence number *and* lease token, so settling a delivery whose lease
//! expired and whose message was taken again by another consumer does nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use courier_core::{Acker, Annotations, Error, Result, dead_letter_attr};
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::error::{db_error, retry_once};
use crate::reuse::{Reuse, reusing};
use crate::schema::{Sql, query_planned};

/// Leases held by one subscription and still being handled: seq -> lease token. Renewed while present.
pub(crate) type Held = Arc<Mutex<HashMap<i64, i64>>>;

/// How many settle statements may run at once.
const SETTLERS: usize = 2;

/// An ack or a release, with where to send its result (`None`: nobody waits).
#[derive(Debug)]
pub(crate) enum Settle {
    Ack {
        seq: i64,
        lease: i64,
        reply: Option<oneshot::Sender<Result<()>>>,
    },
    Release {
        seq: i64,
        lease: i64,
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
    if !acks.seqs.is_empty() {
        let r = reusing!(reuse, |conn| query_planned(&sql.ack).bind(&acks.seqs).bind(&acks.leases).execute(conn));
        acks.answer(r.map(drop).map_err(|e| db_error("cannot ack", e)));
    }
    if !releases.seqs.is_empty() {
        let r = reusing!(reuse, |conn| query_planned(&sql.release)
            .bind(&releases.seqs)
            .bind(&releases.leases)
            .bind(&sql.channel)
            .execute(conn));
        releases.answer(r.map(drop).map_err(|e| db_error("cannot release", e)));
    }
    for flush in flushes {
        let _ = flush.send(());
    }
}

#[derive(Default)]
struct Batch {
    seqs: Vec<i64>,
    leases: Vec<i64>,
    replies: Vec<oneshot::Sender<Result<()>>>,
}

impl Batch {
    fn push(&mut self, seq: i64, lease: i64, reply: Option<oneshot::Sender<Result<()>>>) {
        self.seqs.push(seq);
        self.leases.push(lease);
        self.replies.extend(reply);
    }

    fn answer(self, result: Result<()>) {
        if let Err(e) = &result
            && self.replies.len() < self.seqs.len()
        {
            tracing::warn!(
                messages = self.seqs.len() - self.replies.len(),
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
    pub(crate) lease: i64,
    pub(crate) held: Held,
}

impl PostgresAcker {
    fn forget(&self) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.seq);
    }

    async fn call(&self, make: impl FnOnce(oneshot::Sender<Result<()>>) -> Settle) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let closed = || Error::closed("the PostgreSQL transport was dropped");
        self.settler.send(make(tx)).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
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
        self.forget();
        let ack = Settle::Ack { seq: self.seq, lease: self.lease, reply: None };
        self.settler.send(ack).await.map_err(|_| Error::closed("the PostgreSQL transport was dropped"))
    }

    async fn retry(&self, delay: Duration, annotations: Annotations) -> Result<()> {
        self.forget();
        let headers = annotations_json(&annotations)?;
        let (sql, pool) = (&self.sql, &self.pool);
        retry_once(|| {
            query_planned(&sql.retry)
                .bind(self.seq)
                .bind(self.lease)
                .bind(&headers)
                .bind(millis(delay))
                .bind(&sql.channel)
                .execute(pool)
        })
        .await
        .map(drop)
        .map_err(|e| db_error("cannot schedule the redelivery", e))
    }

    async fn dead_letter(&self, annotations: Annotations) -> Result<()> {
        self.forget();
        let fingerprint = annotations
            .iter()
            .rev()
            .find(|(k, _)| k == dead_letter_attr::FINGERPRINT)
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let headers = annotations_json(&annotations)?;
        let (sql, pool) = (&self.sql, &self.pool);
        retry_once(|| {
            query_planned(&sql.dead_letter)
                .bind(self.seq)
                .bind(self.lease)
                .bind(&fingerprint)
                .bind(&headers)
                .execute(pool)
        })
        .await
        .map(drop)
        .map_err(|e| db_error("cannot dead-letter the message", e))
    }

    async fn release(&self) -> Result<()> {
        self.forget();
        let (seq, lease) = (self.seq, self.lease);
        self.call(|reply| Settle::Release { seq, lease, reply: Some(reply) }).await
    }

    fn release_on_drop(&self) {
        self.forget();
        // Best effort: if the channel is full or closed, the lease expires and the message comes back anyway.
        let _ = self.settler.try_send(Settle::Release { seq: self.seq, lease: self.lease, reply: None });
    }
}
