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

/// A transport on a fresh schema whose queue table had rows, all handled, and was then vacuumed: recorded as empty,
/// as autovacuum leaves a drained queue. With `old_snapshot`, another session holds a snapshot taken before the
/// rows were handled (returned, to be dropped when done), so the vacuum cannot remove them: the statistics then say
/// "no rows" while the pages are still there.
async fn drained_and_vacuumed(
    old_snapshot: bool,
) -> (String, courier_postgres::PostgresTransport, Option<sqlx::Transaction<'static, sqlx::Postgres>>) {
    let schema = common::unique("courier_plans");
    let transport = common::transport(&schema, "courier_plans").await;
    send(&transport, "plans", 300).await;
    let mut holder = None;
    if old_snapshot {
        let mut tx = transport.pool().begin().await.unwrap();
        sqlx::raw_sql(AssertSqlSafe("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; SELECT 1".to_owned()))
            .execute(&mut *tx)
            .await
            .unwrap();
        holder = Some(tx);
    }
    let mut subscription = transport.subscribe("plans", SubscriptionOptions::default()).await.unwrap();
    let mut handled = 0;
    while handled < 300 {
        for delivery in subscription.next_batch(300).await.unwrap() {
            delivery.ack().await.unwrap();
            handled += 1;
        }
    }
    drop(subscription);
    transport.flush().await.unwrap();
    common::execute(&format!("VACUUM \"{schema}\".messages")).await;
    (schema, transport, holder)
}

/// The table's statistics: (pages, rows) as the last vacuum recorded them.
async fn statistics(transport: &courier_postgres::PostgresTransport, schema: &str) -> (i32, f32) {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT relpages, reltuples FROM pg_class WHERE oid = '\"{schema}\".messages'::regclass"
    )))
    .fetch_one(transport.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takes_use_the_index_after_a_vacuum_of_an_empty_queue_table() {
    if !POSTGRES.require() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let (schema, transport, _) = drained_and_vacuumed(false).await;
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

/// Arguments to explain each of [`courier_postgres::settling_statements`] with.
fn arguments(name: &str) -> String {
    let rows = r#"'{"(0,1)","(0,2)","(0,3)"}', '{"1:7","2:7","3:7"}'"#;
    let row = r#"'{"(0,1)"}', '{"1:7"}'"#;
    match name {
        "ack" => format!("({rows})"),
        "release" => format!("({rows}, 'wake')"),
        "renew" => format!("({rows}, 1000)"),
        "retry" => format!("({row}, '{{}}', 1000, 'wake')"),
        "dead_letter" => format!("({row}, 'fingerprint', '{{}}')"),
        "next_visible" => "('plans')".to_owned(),
        other => panic!("no arguments for {other}"),
    }
}

/// The plans PostgreSQL makes, on the transport's connections, for the statements that settle deliveries and the
/// one an idle consumer runs, once the table has filled again after a vacuum of the drained table: `mode` says
/// how (`force_custom_plan`: at each execution, as the transport runs them; `force_generic_plan`: once, from the
/// statistics of the empty table). `None` when, without `old_snapshot`, no vacuum could empty the table's pages
/// (another session holds an old snapshot).
async fn settling_plans(mode: &str, old_snapshot: bool) -> Option<Vec<(&'static str, String)>> {
    let (schema, transport, holder) = drained_and_vacuumed(old_snapshot).await;
    let mut tries = 0;
    while !old_snapshot && statistics(&transport, &schema).await.0 > 0 {
        tries += 1;
        if tries > 10 {
            transport.drop_schema().await.unwrap();
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        common::execute(&format!("VACUUM \"{schema}\".messages")).await;
    }
    if old_snapshot {
        let (pages, rows) = statistics(&transport, &schema).await;
        assert!(pages > 0 && rows == 0.0, "the old snapshot should leave pages recorded with no rows: {pages}, {rows}");
    }
    let mut conn = transport.pool().acquire().await.unwrap();
    let statements = courier_postgres::settling_statements(&schema);
    let mut prepare = format!("SET plan_cache_mode = {mode};");
    for (name, statement) in &statements {
        prepare.push_str(&format!(
            "PREPARE {name}_probe AS {statement}; EXPLAIN EXECUTE {name}_probe{};",
            arguments(name)
        ));
    }
    sqlx::raw_sql(AssertSqlSafe(prepare)).execute(&mut *conn).await.unwrap();
    send(&transport, "plans", 3_000).await;
    let mut plans = Vec::new();
    for (name, _) in &statements {
        let explain = format!("EXPLAIN EXECUTE {name}_probe{}", arguments(name));
        let plan: Vec<String> = sqlx::query_scalar(AssertSqlSafe(explain)).fetch_all(&mut *conn).await.unwrap();
        plans.push((*name, plan.join("\n")));
    }
    sqlx::raw_sql(AssertSqlSafe("DEALLOCATE ALL; RESET plan_cache_mode".to_owned())).execute(&mut *conn).await.unwrap();
    drop((conn, holder));
    transport.drop_schema().await.unwrap();
    Some(plans)
}

/// Whether a plan reads only what the statement is about: its rows by address, or the first entry of the queue's
/// index.
fn reads_only_its_rows(name: &str, plan: &str) -> bool {
    let no_full_read = !plan.contains("Seq Scan") && !plan.contains("Sort");
    if name == "next_visible" {
        no_full_read && plan.contains("Limit") && plan.contains("messages_by_queue") && plan.contains("Index Cond")
    } else {
        no_full_read && plan.contains("Tid Scan") && !plan.contains("Index")
    }
}

/// Only one of these tests at a time: one holds an old snapshot, which keeps the other's vacuum from emptying its
/// table. (For a few seconds it holds back every vacuum of this database, other processes' included.)
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The statements that settle deliveries find their rows by address and read only those, however stale the
/// statistics, planned at each execution (as the transport runs them) or once while the table was recorded as
/// empty. Matched by seq instead, the ack, release and renewal read the whole primary-key index for every batch
/// and a retry or dead-letter walked the whole queue index, both when plans were kept from an empty table and,
/// planned at each execution, when a vacuum could not remove the drained rows (seen in CI; reproduced here with
/// an old snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settling_statements_read_only_their_rows_whatever_the_statistics() {
    if !POSTGRES.require() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    for mode in ["force_custom_plan", "force_generic_plan"] {
        for old_snapshot in [true, false] {
            let Some(plans) = settling_plans(mode, old_snapshot).await else {
                eprintln!("not checked with a clean vacuum ({mode}): for 5 s no vacuum could empty the drained table");
                continue;
            };
            for (name, plan) in plans {
                assert!(
                    reads_only_its_rows(name, &plan),
                    "{name} ({mode}, old snapshot: {old_snapshot}) reads more than its rows:\n{plan}"
                );
            }
        }
    }
}
