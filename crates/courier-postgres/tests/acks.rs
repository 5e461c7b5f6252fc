//! Acks are run in batches in the background: `ack` returns once one is queued, and `flush` waits until every ack
//! queued before it has been run.

mod common;

use courier_core::{Envelope, Json, Message, SubscriptionOptions, Transport};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_waits_for_queued_acks() {
    if !POSTGRES.require() {
        return;
    }
    const MESSAGES: u32 = 2_000;
    let schema = common::unique("courier_acks");
    let transport = common::transport(&schema, "courier_acks").await;
    let queue = "acks";
    for n in 0..MESSAGES {
        let raw = Envelope::for_message("test", &Note { n }).unwrap().into_raw();
        transport.send(queue, raw, None).await.unwrap();
    }
    let mut subscription = transport.subscribe(queue, SubscriptionOptions::default()).await.unwrap();
    let mut deliveries = Vec::new();
    while deliveries.len() < MESSAGES as usize {
        deliveries.extend(subscription.next_batch(500).await.unwrap());
    }
    // Another transaction holds the rows for a moment, so the acks' DELETE waits for it: only a flush that waits
    // for the acks finds the table empty afterwards.
    let mut holder = transport.pool().begin().await.unwrap();
    courier_postgres::sqlx::query(courier_postgres::sqlx::AssertSqlSafe(format!(
        "SELECT seq FROM \"{schema}\".messages FOR SHARE"
    )))
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
    let left: i64 = courier_postgres::sqlx::query_scalar(courier_postgres::sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{schema}\".messages"
    )))
    .fetch_one(transport.pool())
    .await
    .unwrap();
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
    let schema = common::unique("courier_moved");
    let transport = common::transport(&schema, "courier_moved").await;
    let queue = "moved";
    for n in 0..4 {
        let raw = Envelope::for_message("test", &Note { n }).unwrap().into_raw();
        transport.send(queue, raw, None).await.unwrap();
    }
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
    let count = |condition: &str| {
        let statement = sql(&format!("SELECT count(*) FROM {{m}} WHERE {condition}"));
        let pool = transport.pool().clone();
        async move {
            let n: i64 = courier_postgres::sqlx::query_scalar(courier_postgres::sqlx::AssertSqlSafe(statement))
                .fetch_one(&pool)
                .await
                .unwrap();
            n
        }
    };
    let (rows, released_rows, delayed_rows) = (
        count("true").await,
        count("lease IS NULL AND visible_at <= floor(extract(epoch FROM now()) * 1000)").await,
        count("lease IS NULL AND visible_at > floor(extract(epoch FROM now()) * 1000) + 3000000").await,
    );
    let dead_letters: i64 = courier_postgres::sqlx::query_scalar(courier_postgres::sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{schema}\".dead_letters"
    )))
    .fetch_one(transport.pool())
    .await
    .unwrap();
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
    let schema = common::unique("courier_stale");
    let transport = common::transport(&schema, "courier_stale").await;
    let queue = "stale";
    let raw = Envelope::for_message("test", &Note { n: 1 }).unwrap().into_raw();
    transport.send(queue, raw, None).await.unwrap();
    let mut subscription = transport.subscribe(queue, SubscriptionOptions::default()).await.unwrap();
    let expire = format!("UPDATE \"{schema}\".messages SET visible_at = 0");
    let mut deliveries = Vec::new();
    for _ in 0..3 {
        // The lease runs out (as when renewals could not reach the server) and the message is taken again.
        common::execute(&expire).await;
        deliveries.push(subscription.next_batch(1).await.unwrap().pop().unwrap());
    }
    let (newest, second, first) = (deliveries.pop().unwrap(), deliveries.pop().unwrap(), deliveries.pop().unwrap());
    let leases = || {
        let (pool, statement) = (transport.pool().clone(), format!("SELECT lease FROM \"{schema}\".messages"));
        async move {
            let leases: Vec<Option<i64>> =
                courier_postgres::sqlx::query_scalar(courier_postgres::sqlx::AssertSqlSafe(statement))
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            leases
        }
    };
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
