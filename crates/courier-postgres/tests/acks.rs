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
