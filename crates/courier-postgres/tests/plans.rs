//! A queue table is often empty when (auto)vacuum looks at it, and plans made from those statistics scanned the whole
//! table for every take once it filled again. The transport's connections take their messages through the index
//! whatever the statistics say.

mod common;

use courier_core::{Envelope, Json, Message, SubscriptionOptions, Transport};
use courier_postgres::sqlx::{self, AssertSqlSafe};
use courier_testkit::services::POSTGRES;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Note {
    n: u32,
}

impl Message for Note {
    const NAME: &'static str = "courier.postgres.test.plan-note.v1";
    type Codec = Json;
}

async fn send(transport: &courier_postgres::PostgresTransport, queue: &str, count: u32) {
    for n in 0..count {
        let raw = Envelope::for_message("test", &Note { n }).unwrap().into_raw();
        transport.send(queue, raw, None).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takes_use_the_index_after_a_vacuum_of_an_empty_queue_table() {
    if !POSTGRES.require() {
        return;
    }
    let schema = common::unique("courier_plans");
    let transport = common::transport(&schema, "courier_plans").await;
    // The table had rows, all handled: a vacuum now records it as empty, as autovacuum does to a drained queue.
    send(&transport, "plans", 500).await;
    let mut subscription = transport.subscribe("plans", SubscriptionOptions::default()).await.unwrap();
    let mut handled = 0;
    while handled < 500 {
        for delivery in subscription.next_batch(500).await.unwrap() {
            delivery.ack().await.unwrap();
            handled += 1;
        }
    }
    drop(subscription);
    transport.flush().await.unwrap();
    common::execute(&format!("VACUUM \"{schema}\".messages")).await;
    // A take prepared now, while the table is (recorded as) empty, as the transport's statements are after a
    // reconnect: its generic plan is made from these statistics and kept.
    let mut conn = transport.pool().acquire().await.unwrap();
    // The take of `schema.rs`, word for word but for its clock: lease up to $2 rows of queue $1.
    let prepare = format!(
        "SET plan_cache_mode = force_generic_plan; \
         PREPARE take_probe(text, int) AS UPDATE \"{schema}\".messages SET visible_at = 1000, \
         deliveries = deliveries + 1, lease = 7 WHERE ctid = ANY(ARRAY( \
         SELECT ctid FROM \"{schema}\".messages WHERE queue = $1 AND visible_at <= 0 \
         ORDER BY visible_at, seq LIMIT $2 FOR UPDATE SKIP LOCKED)) RETURNING seq; \
         EXPLAIN EXECUTE take_probe('plans', 100)"
    );
    sqlx::raw_sql(AssertSqlSafe(prepare)).execute(&mut *conn).await.unwrap();
    // The table fills again; the plan made when it was empty is still the one used.
    send(&transport, "plans", 3_000).await;
    let plan: Vec<String> = sqlx::query_scalar(AssertSqlSafe("EXPLAIN EXECUTE take_probe('plans', 100)".to_owned()))
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    sqlx::raw_sql(AssertSqlSafe("DEALLOCATE take_probe; RESET plan_cache_mode".to_owned()))
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let plan = plan.join("\n");
    transport.drop_schema().await.unwrap();
    assert!(
        plan.contains("Index Scan using messages_by_queue") && !plan.contains("Sort") && !plan.contains("Seq Scan"),
        "a take on the transport's connections should walk the queue's index in order and stop at its limit:\n{plan}"
    );
    assert!(plan.contains("Tid Scan"), "a take should find the rows it leased by their address:\n{plan}");
}
