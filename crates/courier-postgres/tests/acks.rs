//! Acks are run in batches in the background: `ack` returns once one is queued, and `flush` waits until every ack
//! queued before it has been run.

mod common;

use courier_core::{Envelope, Json, Message, SubscriptionOptions, Transport};
use courier_postgres::PostgresTransport;
use courier_postgres::sqlx;
use courier_testkit::services::POSTGRES;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Note {
    n: u32,
}

impl Message for Note {
    const NAME: &'static str = "courier.postgres.test.note.v1";
    type Codec = Json;
}

/// A transport on a schema of its own (`courier_<queue>_<uuid>`) with `count` notes sent to `queue`.
async fn queue_with(queue: &str, count: u32) -> (String, PostgresTransport) {
    let schema = common::unique(&format!("courier_{queue}"));
    let transport = common::transport(&schema, &format!("courier_{queue}")).await;
    for n in 0..count {
        let raw = Envelope::for_message("test", &Note { n }).unwrap().into_raw();
        transport.send(queue, raw, None).await.unwrap();
    }
    (schema, transport)
}

/// The first column of every row `statement` returns.
async fn column<T>(transport: &PostgresTransport, statement: String) -> Vec<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    sqlx::query_scalar(sqlx::AssertSqlSafe(statement)).fetch_all(transport.pool()).await.unwrap()
}

/// How many rows `statement` (a `SELECT count(*)`) counts.
async fn count(transport: &PostgresTransport, statement: String) -> i64 {
    column::<i64>(transport, statement).await[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_waits_for_queued_acks() {
    if !POSTGRES.require() {
        return;
    }
    const MESSAGES: u32 = 2_000;
    let queue = "acks";
    let (schema, transport) = queue_with(queue, MESSAGES).await;
    let mut subscription = transport.subscribe(queue, SubscriptionOptions::default()).await.unwrap();
    let mut deliveries = Vec::new();
    while deliveries.len() < MESSAGES as usize {
        deliveries.extend(subscription.next_batch(500).await.unwrap());
    }
    // Another transaction holds the rows for a moment, so the acks' DELETE waits for it: only a flush that waits
    // for the acks finds the table empty afterwards.
    let mut holder = transport.pool().begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("SELECT seq FROM \"{schema}\".messages FOR SHARE")))
        .fetch_all(&mut *holder)
        .await
        .unwrap();
    for delivery in deliveries {
        delivery.ack().await.unwrap();
    }
    let release = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        holder.commit().await.unwrap();
    });
    transport.flush().await.unwrap();
    let left = count(&transport, format!("SELECT count(*) FROM \"{schema}\".messages")).await;
    release.await.unwrap();
    transport.drop_schema().await.unwrap();
    assert_eq!(left, 0, "every acked message is deleted once flush returns");
}

/// Rows are settled by the address their take (or last lease renewal) returned. A row that moved since (updated
/// by someone else, as `VACUUM FULL` or a repack would move it) is still settled, found by its sequence number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settles_find_rows_that_moved() {
    if !POSTGRES.require() {
        return;
    }
    let queue = "moved";
    let (schema, transport) = queue_with(queue, 4).await;
    let mut subscription = transport.subscribe(queue, SubscriptionOptions::default()).await.unwrap();
    let mut deliveries = Vec::new();
    while deliveries.len() < 4 {
        deliveries.extend(subscription.next_batch(4).await.unwrap());
    }
    let sql = |statement: &str| statement.replace("{m}", &format!("\"{schema}\".messages"));
    let moved = common::execute(&sql("UPDATE {m} SET headers = headers")).await;
    assert_eq!(moved, 4, "every row has a new address");
    let mut deliveries = deliveries.into_iter();
    let (acked, released, retried, dead) = (
        deliveries.next().unwrap(),
        deliveries.next().unwrap(),
        deliveries.next().unwrap(),
        deliveries.next().unwrap(),
    );
    acked.ack().await.unwrap();
    released.release().await.unwrap();
    retried.retry(std::time::Duration::from_secs(3600), Default::default()).await.unwrap();
    dead.dead_letter(Default::default()).await.unwrap();
    transport.flush().await.unwrap();
    let rows = |condition: &str| count(&transport, sql(&format!("SELECT count(*) FROM {{m}} WHERE {condition}")));
    let (rows, released_rows, delayed_rows) = (
        rows("true").await,
        rows("lease IS NULL AND visible_at <= floor(extract(epoch FROM now()) * 1000)").await,
        rows("lease IS NULL AND visible_at > floor(extract(epoch FROM now()) * 1000) + 3000000").await,
    );
    let dead_letters = count(&transport, format!("SELECT count(*) FROM \"{schema}\".dead_letters")).await;
    drop(subscription);
    transport.drop_schema().await.unwrap();
    assert_eq!(
        (rows, released_rows, delayed_rows, dead_letters),
        (2, 1, 1, 1),
        "acked, released, retried, dead-lettered"
    );
}

/// Deliveries whose lease ran out, and whose message this same subscription took again, settle nothing: the
/// newest delivery keeps the message (and its lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_delivery_does_not_settle_a_newer_lease() {
    if !POSTGRES.require() {
        return;
    }
    let queue = "stale";
    let (schema, transport) = queue_with(queue, 1).await;
    let mut subscription = transport.subscribe(queue, SubscriptionOptions::default()).await.unwrap();
    let expire = format!("UPDATE \"{schema}\".messages SET visible_at = 0");
    let mut deliveries = Vec::new();
    for _ in 0..3 {
        // The lease runs out (as when renewals could not reach the server) and the message is taken again.
        common::execute(&expire).await;
        deliveries.push(subscription.next_batch(1).await.unwrap().pop().unwrap());
    }
    let (newest, second, first) = (deliveries.pop().unwrap(), deliveries.pop().unwrap(), deliveries.pop().unwrap());
    let leases = || column::<Option<i64>>(&transport, format!("SELECT lease FROM \"{schema}\".messages"));
    let newest_lease = leases().await;
    first.ack().await.unwrap();
    second.release().await.unwrap();
    transport.flush().await.unwrap();
    let after_stale = leases().await;
    newest.ack().await.unwrap();
    transport.flush().await.unwrap();
    let at_end = leases().await;
    drop(subscription);
    transport.drop_schema().await.unwrap();
    assert!(matches!(newest_lease.as_slice(), [Some(_)]), "{newest_lease:?}");
    assert_eq!(after_stale, newest_lease, "the stale ack and release left the newest delivery's lease alone");
    assert!(at_end.is_empty(), "the newest delivery's own ack removes the message");
}
