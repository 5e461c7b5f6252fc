//! The transactional outbox on PostgreSQL with the relay: commit and rollback, order per key with two relays, and
//! a service process killed with SIGKILL while placing orders, delivering to RabbitMQ.
//!
//! Each test has a schema of its own (and a RabbitMQ namespace of its own), dropped at the end.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{SchemaGuard, transport, unique};
use courier_bus::{Bus, Context, HandlerError, OutboxRelay};
use courier_core::{Engine, Json, Message, OutboxStore};
use courier_postgres::sqlx::{self, AssertSqlSafe};
use courier_postgres::{PgOutbox, PgOutboxTransaction};
use courier_rabbitmq::{RabbitMqOptions, RabbitMqTransport};
use courier_testkit::services::{POSTGRES, RABBITMQ};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order: i64,
    customer: String,
    step: u32,
}

impl Message for OrderPlaced {
    const NAME: &'static str = "pg-outbox-test.order.placed.v1";
    type Codec = Json;
    fn partition_key(&self) -> Option<String> {
        Some(self.customer.clone())
    }
}

async fn outbox(schema: &str) -> PgOutbox {
    let url = format!("{}?schema={schema}", POSTGRES.url());
    let outbox = PgOutbox::connect(&url, "orders").await.expect("connect the outbox");
    let ddl = format!("CREATE TABLE IF NOT EXISTS \"{schema}\".orders (id bigint PRIMARY KEY, customer text NOT NULL)");
    sqlx::raw_sql(AssertSqlSafe(ddl)).execute(outbox.pool()).await.unwrap();
    outbox
}

async fn place(tx: &mut PgOutboxTransaction, schema: &str, order: i64, customer: &str, step: u32) {
    let insert = format!("INSERT INTO \"{schema}\".orders (id, customer) VALUES ($1, $2) ON CONFLICT DO NOTHING");
    sqlx::query(AssertSqlSafe(insert)).bind(order).bind(customer).execute(tx.as_mut()).await.unwrap();
    tx.publish(&OrderPlaced { order, customer: customer.to_owned(), step }).await.unwrap();
}

type Seen = Arc<Mutex<Vec<(i64, String, u32)>>>;

async fn consumer(engine: &Engine, queue: &str, concurrency: usize) -> (Bus, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let bus = Bus::builder(queue)
        .engine_instance(engine.clone())
        .concurrency(concurrency)
        .consume(move |m: OrderPlaced, _ctx: Context| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push((m.order, m.customer, m.step));
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    (bus, seen)
}

async fn wait_for(seen: &Seen, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while seen.lock().unwrap().len() < n {
        assert!(Instant::now() < deadline, "only {} of {n} messages arrived", seen.lock().unwrap().len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_messages_are_delivered_and_rolled_back_ones_are_not() {
    if !POSTGRES.require() {
        return;
    }
    let schema = unique("cpg_outbox_commit");
    let _guard = SchemaGuard(schema.clone());
    let engine = transport(&schema, "outbox-commit").await.into_engine();
    let outbox = outbox(&schema).await;
    let (shipping, seen) = consumer(&engine, "outbox-commit-shipping", 4).await;
    let relay_bus = Bus::builder("orders").engine_instance(engine.clone()).start().await.unwrap();
    let relay = OutboxRelay::new(outbox.clone(), relay_bus.clone()).start();

    let mut tx = outbox.begin().await.unwrap();
    place(&mut tx, &schema, 1, "ada", 0).await;
    tx.commit().await.unwrap();
    let mut tx = outbox.begin().await.unwrap();
    place(&mut tx, &schema, 2, "bob", 0).await;
    tx.rollback().await.unwrap();
    let mut tx = outbox.begin().await.unwrap();
    place(&mut tx, &schema, 3, "cy", 0).await;
    drop(tx); // dropped without commit: rolled back too

    wait_for(&seen, 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*seen.lock().unwrap(), vec![(1, "ada".to_owned(), 0)], "the rolled-back orders published nothing");
    let count = format!("SELECT count(*) FROM \"{schema}\".orders");
    let (orders,): (i64,) = sqlx::query_as(AssertSqlSafe(count)).fetch_one(outbox.pool()).await.unwrap();
    assert_eq!(orders, 1, "and wrote nothing");
    assert_eq!(outbox.lag().await.unwrap().unsent, 0);
    relay.shutdown().await;
    shipping.shutdown().await;
    relay_bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_is_kept_per_partition_key_and_two_relays_deliver_each_message_once() {
    if !POSTGRES.require() {
        return;
    }
    let schema = unique("cpg_outbox_order");
    let _guard = SchemaGuard(schema.clone());
    let engine = transport(&schema, "outbox-order").await.into_engine();
    let outbox = outbox(&schema).await;
    let (shipping, seen) = consumer(&engine, "outbox-order-shipping", 1).await;
    let bus = Bus::builder("orders").engine_instance(engine.clone()).start().await.unwrap();
    let relays = [
        OutboxRelay::new(outbox.clone(), bus.clone()).batch_size(50).start(),
        OutboxRelay::new(outbox.clone(), bus.clone()).batch_size(50).start(),
    ];
    let customers = ["ada", "bob", "cy", "dee"];
    let steps = 250u32;
    // Two writers at once, each its own steps, so commits interleave with the relays' fetches.
    let writers: Vec<_> = (0..2u32)
        .map(|w| {
            let (outbox, schema) = (outbox.clone(), schema.clone());
            tokio::spawn(async move {
                for step in (w..steps).step_by(2) {
                    let mut tx = outbox.begin().await.unwrap();
                    for (i, c) in customers.iter().enumerate() {
                        let customer = format!("{c}-{w}");
                        place(&mut tx, &schema, i64::from(step) * 10 + i as i64, &customer, step).await;
                    }
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let total = customers.len() * steps as usize;
    wait_for(&seen, total, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), total, "each message delivered exactly once by the two relays");
    let mut last: HashMap<String, u32> = HashMap::new();
    for (_, customer, step) in &seen {
        if let Some(prev) = last.insert(customer.clone(), *step) {
            assert!(*step > prev, "{customer}: step {step} after {prev}");
        }
    }
    let delivered: u64 = relays.iter().map(|r| r.delivered()).sum();
    assert_eq!(delivered, total as u64);
    for r in relays {
        r.shutdown().await;
    }
    shipping.shutdown().await;
    bus.shutdown().await;
}

fn rabbit_options(namespace: &str) -> RabbitMqOptions {
    RabbitMqOptions::from_url(&RABBITMQ.url())
        .expect("a valid COURIER_TEST_AMQP_URL")
        .namespace(namespace)
        .connection_name(format!("courier-pg-outbox-{}", std::process::id()))
}

const CHILD_ENV: &str = "COURIER_PG_OUTBOX_CHILD";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_killed_while_placing_orders_loses_no_committed_message() {
    if !POSTGRES.require() || !RABBITMQ.require() {
        return;
    }
    const ORDERS: u64 = 10_000;
    const KILL_AFTER: usize = 3_000;
    let schema = unique("cpg_outbox_crash");
    let _guard = SchemaGuard(schema.clone());
    let namespace = format!("pg-outbox-crash-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let rabbit = RabbitMqTransport::connect(rabbit_options(&namespace)).await.expect("connect to RabbitMQ");
    let engine = rabbit.clone().into_engine();
    engine.transport.bind("outbox-crash-shipping", OrderPlaced::NAME).await.unwrap();
    outbox(&schema).await; // creates the tables before the child starts

    // The child places orders (each with its outbox message in one transaction) and relays, until killed.
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--ignored", "--exact", "child_orders_service", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, format!("{schema}|{namespace}|{ORDERS}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reported = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut committed = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        while committed < KILL_AFTER {
            assert!(Instant::now() < deadline, "the child made too little progress: {committed} orders");
            match lines.next() {
                Some(Ok(line)) if line.starts_with("committed ") => committed += 1,
                Some(Ok(_)) => {}
                _ => panic!("the child stopped after {committed} orders"),
            }
        }
        child.kill().unwrap(); // SIGKILL on Unix
        let _ = child.wait();
        committed
    })
    .await
    .unwrap();

    // Restart: a new relay delivers whatever was committed and not yet delivered.
    let outbox = outbox(&schema).await;
    let ids = format!("SELECT id FROM \"{schema}\".orders");
    let committed: BTreeSet<i64> =
        sqlx::query_scalar(AssertSqlSafe(ids)).fetch_all(outbox.pool()).await.unwrap().into_iter().collect();
    assert!(committed.len() >= reported, "{} committed, {reported} reported", committed.len());
    assert!((committed.len() as u64) < ORDERS, "the child was killed mid-stream");
    let unsent_at_restart = outbox.lag().await.unwrap().unsent;
    let (shipping, seen) = consumer(&engine, "outbox-crash-shipping", 16).await;
    let bus = Bus::builder("orders").engine_instance(engine.clone()).start().await.unwrap();
    let relay = OutboxRelay::new(outbox.clone(), bus.clone()).lease_ttl(Duration::from_secs(1)).start();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let delivered: BTreeSet<i64> = seen.lock().unwrap().iter().map(|(o, _, _)| *o).collect();
        let missing: Vec<_> = committed.difference(&delivered).take(5).collect();
        if missing.is_empty() {
            assert!(delivered.is_subset(&committed), "only committed orders are published");
            break;
        }
        assert!(Instant::now() < deadline, "committed orders never published, e.g. {missing:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{} orders committed before the kill, {unsent_at_restart} of them still in the outbox at restart",
        committed.len()
    );
    relay.shutdown().await;
    shipping.shutdown().await;
    bus.shutdown().await;
    rabbit.delete_namespace().await.expect("delete the test namespace");
}

/// Child: places orders through the PostgreSQL outbox with a relay to RabbitMQ running, printing each committed
/// order, until killed.
#[test]
#[ignore = "child process of the outbox crash test"]
fn child_orders_service() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let parts: Vec<&str> = spec.split('|').collect();
    let (schema, namespace, n) = (parts[0].to_owned(), parts[1].to_owned(), parts[2].parse::<i64>().unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let rabbit = RabbitMqTransport::connect(rabbit_options(&namespace)).await.unwrap();
        let outbox = outbox(&schema).await;
        let bus = Bus::builder("orders").engine_instance(rabbit.into_engine()).start().await.unwrap();
        let _relay = OutboxRelay::new(outbox.clone(), bus).lease_ttl(Duration::from_secs(1)).start();
        for order in 0..n {
            let mut tx = outbox.begin().await.unwrap();
            place(&mut tx, &schema, order, &format!("c{}", order % 7), 0).await;
            tx.commit().await.unwrap();
            println!("committed {order}");
        }
        std::future::pending::<()>().await;
    });
}
