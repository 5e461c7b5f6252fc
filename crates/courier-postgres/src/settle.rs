//! Settling deliveries. Acks and releases are frequent and cheap to group: one task per transport collects those
//! waiting at one moment and settles them with one statement each. Retries and dead-lettering are rare and run on
//! their own. An ack does not wait for its statement (the handler's
//! task would be woken once more per message for nothing it needs); [`Settle::Flush`], which the transport's
//! `flush` sends, is answered once every settle queued before it is done.
//!
//! Every statement matches the message by sequence number *and* lease token, so settling a delivery whose lease
//! expired and whose message was taken again (by any consumer, this one included) does nothing. Each finds its rows
//! by address (the `ctid` the take or the last lease renewal returned), and by sequence number only those it did
//! not find there (see [`ROWS_AT`](crate::schema) for why): rows that moved since, mostly because a lease renewal
//! updated them while the settle was on its way, and rows no longer leased to us.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use courier_core::{Acker, Annotations, Error, Result, dead_letter_attr};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{Postgres, Row};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::error::db_error;
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

/// The rows a settling statement is about: their seqs, lease tokens, addresses and `seq:lease` keys (see [`Pair`]).
#[derive(Debug, Default)]
pub(crate) struct Rows {
    seqs: Vec<i64>,
    tokens: Vec<i64>,
    ats: Vec<String>,
    keys: Vec<String>,
}

impl Rows {
    pub(crate) fn push(&mut self, seq: i64, lease: &Lease) {
        self.seqs.push(seq);
        self.tokens.push(lease.token);
        self.ats.push(lease.at.clone());
        self.keys.push(format!("{seq}:{}", lease.token));
    }

    pub(crate) fn len(&self) -> usize {
        self.seqs.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// The rows whose seq is not in `settled` and that `wanted` (seq, token) keeps.
    fn without(&self, settled: &HashSet<i64>, wanted: impl Fn(i64, i64) -> bool) -> Rows {
        let mut rest = Rows::default();
        for (i, &seq) in self.seqs.iter().enumerate() {
            if !settled.contains(&seq) && wanted(seq, self.tokens[i]) {
                rest.seqs.push(seq);
                rest.tokens.push(self.tokens[i]);
                rest.ats.push(self.ats[i].clone());
                rest.keys.push(self.keys[i].clone());
            }
        }
        rest
    }
}

/// What a settling statement did: the rows it returned (each starting with the seq it settled), and whether both
/// steps ran.
pub(crate) struct Settled {
    pub(crate) rows: Vec<PgRow>,
    pub(crate) result: std::result::Result<(), sqlx::Error>,
}

/// Runs a settling statement for `rows` by address, then by seq for the rows it did not find there that `wanted`
/// (seq, token) still asks for (moved since their address was learned, or no longer leased to us); `rest` binds
/// the parameters after `$2`. What the first step settled is returned even if the second fails.
pub(crate) async fn settle_rows<'a>(
    reuse: &Reuse,
    pair: &Pair,
    rows: &'a Rows,
    wanted: impl Fn(i64, i64) -> bool,
    rest: impl Fn(Query<'a, Postgres, PgArguments>) -> Query<'a, Postgres, PgArguments>,
) -> Settled {
    let at = reusing!(reuse, |conn| rest(query_planned(&pair.at).bind(&rows.ats).bind(&rows.keys)).fetch_all(conn));
    let mut found = match at {
        Ok(found) => found,
        Err(e) => return Settled { rows: Vec::new(), result: Err(e) },
    };
    let mut result = Ok(());
    if found.len() < rows.len() {
        let settled: HashSet<i64> = found.iter().filter_map(|row| row.try_get(0).ok()).collect();
        let moved = rows.without(&settled, wanted);
        if !moved.is_empty() {
            pair.by_seq.fetch_add(moved.len() as u64, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(rows = moved.len(), "settling rows by seq: not found at their address");
            let by_seq = reusing!(reuse, |conn| rest(query_planned(&pair.seq).bind(&moved.seqs).bind(&moved.keys))
                .fetch_all(conn));
            match by_seq {
                Ok(more) => found.extend(more),
                Err(e) => result = Err(e),
            }
        }
    }
    Settled { rows: found, result }
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
        let settled = settle_rows(reuse, &sql.ack, &acks.rows, |_, _| true, |q| q).await;
        acks.answer(settled.result.map_err(|e| db_error("cannot ack", e)));
    }
    if !releases.rows.is_empty() {
        let settled = settle_rows(reuse, &sql.release, &releases.rows, |_, _| true, |q| q.bind(&sql.channel)).await;
        releases.answer(settled.result.map_err(|e| db_error("cannot release", e)));
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
    pub(crate) reuse: Arc<Reuse>,
    pub(crate) sql: Arc<Sql>,
    pub(crate) settler: mpsc::Sender<Settle>,
    pub(crate) seq: i64,
    /// The lease as the take returned it; the held map has its latest address.
    pub(crate) lease: Lease,
    pub(crate) held: Held,
}

impl PostgresAcker {
    /// Stops renewing the lease; returns it with the row's latest known address. Only this delivery's own lease:
    /// if its message was taken again (its lease expired), the held entry is the newer delivery's, left alone.
    fn forget(&self) -> Lease {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.get(&self.seq).is_some_and(|lease| lease.token == self.lease.token)
            && let Some(lease) = held.remove(&self.seq)
        {
            return lease;
        }
        self.lease.clone()
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
        let ack = Settle::Ack { seq: self.seq, lease: self.forget(), reply: None };
        self.settler.send(ack).await.map_err(|_| Error::closed("the PostgreSQL transport was dropped"))
    }

    async fn retry(&self, delay: Duration, annotations: Annotations) -> Result<()> {
        let lease = self.forget();
        let headers = annotations_json(&annotations)?;
        let (delay, channel) = (millis(delay), &self.sql.channel);
        let mut row = Rows::default();
        row.push(self.seq, &lease);
        let settled = settle_rows(
            &self.reuse,
            &self.sql.retry,
            &row,
            |_, _| true,
            |q| q.bind(&headers).bind(delay).bind(channel),
        )
        .await;
        settled.result.map_err(|e| db_error("cannot schedule the redelivery", e))
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
        let mut row = Rows::default();
        row.push(self.seq, &lease);
        let settled =
            settle_rows(&self.reuse, &self.sql.dead_letter, &row, |_, _| true, |q| q.bind(&fingerprint).bind(&headers))
                .await;
        settled.result.map_err(|e| db_error("cannot dead-letter the message", e))
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use courier_core::{Delivery, Envelope, Json, Message, Subscription, SubscriptionOptions, Transport};
    use courier_testkit::services::POSTGRES;

    use crate::{PostgresOptions, PostgresTransport};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Note;

    impl Message for Note {
        const NAME: &'static str = "courier.postgres.test.address-note.v1";
        type Codec = Json;
    }

    /// Sends `count` messages to `queue` and takes them: the subscription (whose renewer renews their leases while
    /// it lives) and the deliveries.
    async fn take(
        transport: &PostgresTransport,
        queue: &str,
        count: usize,
        visibility: Duration,
    ) -> (Box<dyn Subscription>, Vec<Delivery>) {
        for _ in 0..count {
            transport.send(queue, Envelope::for_message("test", &Note).unwrap().into_raw(), None).await.unwrap();
        }
        let options = SubscriptionOptions { visibility_timeout: visibility, ..SubscriptionOptions::default() };
        let mut subscription = transport.subscribe(queue, options).await.unwrap();
        let mut deliveries = Vec::new();
        while deliveries.len() < count {
            deliveries.extend(subscription.next_batch(count).await.unwrap());
        }
        (subscription, deliveries)
    }

    /// Settles find their rows at the address the take returned, and lease renewals find them at the address the
    /// previous renewal returned: none is looked for by seq. A row moved behind the transport's back is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_are_settled_at_the_address_their_take_or_last_renewal_returned() {
        if !POSTGRES.require() {
            return;
        }
        let schema = format!("courier_address_{}", uuid::Uuid::new_v4().simple());
        let transport = PostgresTransport::connect(&POSTGRES.url(), PostgresOptions::default().schema(&schema))
            .await
            .expect("connect to PostgreSQL");
        let sql = transport.shared.sql.clone();
        let by_seq = |pair: &crate::schema::Pair| pair.by_seq.load(Ordering::Relaxed);

        // Acked before any renewal (the first comes after a third of 30 s).
        for delivery in take(&transport, "acked", 50, Duration::from_secs(30)).await.1 {
            delivery.ack().await.unwrap();
        }
        transport.flush().await.unwrap();
        // Held through several renewals (one every 100 ms), each of which moves every row.
        let renewed = take(&transport, "renewed", 50, Duration::from_millis(300)).await;
        tokio::time::sleep(Duration::from_millis(550)).await;
        let (acks_by_seq, renewals_by_seq) = (by_seq(&sql.ack), by_seq(&sql.renew));
        drop(renewed);
        // Moved behind the transport's back.
        let (_moved_subscription, moved) = take(&transport, "moved", 1, Duration::from_secs(30)).await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE \"{schema}\".messages SET headers = headers WHERE queue = 'moved'"
        )))
        .execute(transport.pool())
        .await
        .unwrap();
        for delivery in moved {
            delivery.ack().await.unwrap();
        }
        transport.flush().await.unwrap();
        let moved_by_seq = by_seq(&sql.ack) - acks_by_seq;
        transport.drop_schema().await.unwrap();
        assert_eq!(acks_by_seq, 0, "acks found their rows at the address the take returned");
        assert_eq!(renewals_by_seq, 0, "renewals found their rows at the address the last renewal returned");
        assert_eq!(moved_by_seq, 1, "a row moved behind the transport's back is found by seq");
    }
}
