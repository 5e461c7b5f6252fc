//! Outbox relay throughput and the latency the outbox adds, next to a plain publish, in one run.
//!
//! Run: `cargo bench -p courier-postgres --bench outbox` (PostgreSQL from `COURIER_TEST_POSTGRES_URL`, RabbitMQ from
//! `COURIER_TEST_AMQP_URL`; a RabbitMQ that is not running skips its rows). `COURIER_BENCH_MESSAGES=N` sets the
//! size of the throughput runs (default 100,000; RabbitMQ runs use half). Prints a Markdown table; everything runs
//! in a PostgreSQL schema and a RabbitMQ namespace of its own, deleted at the end.
//!
//! - **Relay throughput**: the outbox is filled first (4 writers, 100 messages per transaction; that write rate is
//!   a row of its own), then a relay (batches of 2,000, 256 partition keys in flight) drains it to a consumer;
//!   the figure is the drain rate. Latency in these rows is message creation to handler, mostly queueing.
//! - **Baseline**: a plain confirmed publish through the bus (256 in flight) to the same transport.
//! - **Added latency at 2,000 msg/s**: one message per transaction committed on schedule through one `PgOutbox`,
//!   relayed by a *second* `PgOutbox` on its own pool (so only LISTEN/NOTIFY wakes it; its poll interval is 250
//!   ms) to the in-memory transport; latency from sending `COMMIT` (includes the commit's WAL flush) and from
//!   `COMMIT` returning, to the handler.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_bench::{Figures, bus_latency_at_rate, bus_throughput, payload};
use courier_bus::{Bus, Context, HandlerError, MemoryTransport, OutboxRelay, Retry};
use courier_core::{Engine, Json, Message, OutboxStore};
use courier_postgres::PgOutbox;
use courier_postgres::sqlx::{self, AssertSqlSafe};
use courier_rabbitmq::{RabbitMqOptions, RabbitMqTransport};
use courier_sqlite::SqliteOutbox;
use courier_testkit::services::{POSTGRES, RABBITMQ};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};

/// Courier allocates small objects on one thread and frees them on another (a message is built by a publisher
/// and dropped by a consumer task): glibc's allocator serialises that on its arena locks, which measured about
/// half of the client's CPU time per message on 2 cores. mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PAYLOAD: usize = 256;
const WRITERS: u64 = 4;
const PER_TX: u64 = 100;
const KEYS: u64 = 256;

/// The relayed message: a sequence number (also the slot of its commit time), spread over 256 partition keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Relayed {
    seq: u64,
    payload: String,
}

impl Message for Relayed {
    const NAME: &'static str = "courier.bench.outbox.v1";
    type Codec = Json;
    fn partition_key(&self) -> Option<String> {
        Some((self.seq % KEYS).to_string())
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// Counts handled messages and records latency from the envelope's time, or, with `handled`, the time each
/// message was handled (latency is worked out at the end against the commit times).
struct Sink {
    handled: AtomicU64,
    target: u64,
    done: Notify,
    latency: Mutex<Histogram<u64>>,
    handled_at: Option<Arc<Vec<AtomicU64>>>,
}

async fn sink(engine: &Engine, queue: &str, target: u64, handled_at: Option<Arc<Vec<AtomicU64>>>) -> (Bus, Arc<Sink>) {
    let sink = Arc::new(Sink {
        handled: AtomicU64::new(0),
        target,
        done: Notify::new(),
        latency: Mutex::new(histogram()),
        handled_at,
    });
    let s = sink.clone();
    let bus = Bus::builder(queue)
        .engine_instance(engine.clone())
        .prefetch(1024)
        .concurrency(64)
        .retry(Retry::none())
        .consume(move |m: Relayed, ctx: Context| {
            let s = s.clone();
            async move {
                match &s.handled_at {
                    Some(handled) => {
                        if let Some(slot) = handled.get(m.seq as usize) {
                            slot.store(now_us(), Ordering::Release);
                        }
                    }
                    None => {
                        let us = now_us().saturating_sub(ctx.envelope().time.timestamp_micros() as u64).max(1);
                        let _ = s.latency.lock().unwrap_or_else(|p| p.into_inner()).record(us.min(600_000_000));
                    }
                }
                if s.handled.fetch_add(1, Ordering::Relaxed) + 1 == s.target {
                    s.done.notify_one();
                }
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await
        .expect("start the sink");
    (bus, sink)
}

async fn wait_done(sink: &Sink, within: Duration) {
    let notified = sink.done.notified();
    if sink.handled.load(Ordering::Relaxed) < sink.target {
        tokio::time::timeout(within, notified).await.unwrap_or_else(|_| {
            panic!("only {} of {} messages handled in {within:?}", sink.handled.load(Ordering::Relaxed), sink.target)
        });
    }
}

fn figures(scenario: &str, messages: u64, elapsed: Duration, latency: Option<&Histogram<u64>>) -> Figures {
    let seconds = elapsed.as_secs_f64();
    Figures {
        scenario: scenario.to_owned(),
        messages,
        seconds,
        per_second: messages as f64 / seconds.max(1e-9),
        p50_us: latency.map(|h| h.value_at_quantile(0.50)),
        p99_us: latency.map(|h| h.value_at_quantile(0.99)),
        max_us: latency.map(|h| h.max()),
        ..Default::default()
    }
}

/// Fills the PostgreSQL outbox with `n` messages: 4 writers, 100 per transaction.
async fn fill_pg(outbox: &PgOutbox, n: u64) -> Figures {
    let start = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let body = payload(PAYLOAD);
                let mut seq = w * PER_TX;
                while seq < n {
                    let mut tx = outbox.begin().await.expect("begin");
                    for s in seq..(seq + PER_TX).min(n) {
                        tx.publish(&Relayed { seq: s, payload: body.clone() }).await.expect("publish");
                    }
                    tx.commit().await.expect("commit");
                    seq += WRITERS * PER_TX;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    figures("postgres outbox write (4 writers, 100 per tx)", n, start.elapsed(), None)
}

/// Drains a filled outbox through a relay to `engine`; the figure is the drain rate.
async fn drain(scenario: &str, store: impl OutboxStore, engine: &Engine, queue: &str, n: u64) -> Figures {
    let (consumer, sink) = sink(engine, queue, n, None).await;
    let bus = Bus::builder("bench-relay").engine_instance(engine.clone()).start().await.expect("relay bus");
    let start = Instant::now();
    let relay = OutboxRelay::new(store, bus.clone()).batch_size(2000).concurrency(KEYS as usize).start();
    wait_done(&sink, Duration::from_secs(300)).await;
    let elapsed = start.elapsed();
    relay.shutdown().await;
    consumer.shutdown().await;
    bus.shutdown().await;
    let latency = sink.latency.lock().unwrap_or_else(|p| p.into_inner()).clone();
    figures(scenario, n, elapsed, Some(&latency))
}

/// One message per transaction at `rate`, relayed by a second outbox instance woken by LISTEN/NOTIFY only. Returns
/// two rows: latency from sending `COMMIT`, and from `COMMIT` returning, to the handler.
async fn added_latency(url: &str, engine: &Engine, rate: u64, seconds: f64) -> [Figures; 2] {
    let n = (rate as f64 * seconds) as u64;
    let producer = PgOutbox::connect(&format!("{url}&max_connections=32"), "bench").await.expect("producer outbox");
    let relay_store = PgOutbox::connect(url, "bench").await.expect("relay outbox");
    let slots = || -> Arc<Vec<AtomicU64>> { Arc::new((0..n).map(|_| AtomicU64::new(0)).collect()) };
    let (committing, committed, handled) = (slots(), slots(), slots());
    let queue = "bench-outbox-latency";
    let (consumer, sink) = sink(engine, queue, n, Some(handled.clone())).await;
    let bus = Bus::builder("bench-relay").engine_instance(engine.clone()).start().await.expect("relay bus");
    let relay = OutboxRelay::new(relay_store, bus.clone()).concurrency(KEYS as usize).start();
    tokio::time::sleep(Duration::from_millis(300)).await; // the relay takes its lease and LISTENs
    let in_flight = Arc::new(Semaphore::new(256));
    let body = payload(PAYLOAD);
    let start = Instant::now();
    for seq in 0..n {
        tokio::time::sleep_until((start + Duration::from_secs_f64(seq as f64 / rate as f64)).into()).await;
        let permit = in_flight.clone().acquire_owned().await.expect("semaphore");
        let (producer, committing, committed, payload) =
            (producer.clone(), committing.clone(), committed.clone(), body.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut tx = producer.begin().await.expect("begin");
            tx.publish(&Relayed { seq, payload }).await.expect("publish");
            committing[seq as usize].store(now_us(), Ordering::Release);
            tx.commit().await.expect("commit");
            committed[seq as usize].store(now_us(), Ordering::Release);
        });
    }
    wait_done(&sink, Duration::from_secs(60)).await;
    let elapsed = start.elapsed();
    tokio::time::sleep(Duration::from_millis(100)).await; // the last commits' timestamps
    relay.shutdown().await;
    consumer.shutdown().await;
    bus.shutdown().await;
    let latency = |from: &[AtomicU64]| {
        let mut h = histogram();
        for (f, t) in from.iter().zip(handled.iter()) {
            let us = t.load(Ordering::Acquire).saturating_sub(f.load(Ordering::Acquire)).max(1);
            let _ = h.record(us.min(600_000_000));
        }
        h
    };
    [
        figures(
            &format!("postgres outbox -> memory @ {rate} msg/s (COMMIT sent -> handler)"),
            n,
            elapsed,
            Some(&latency(&committing)),
        ),
        figures(
            &format!("postgres outbox -> memory @ {rate} msg/s (COMMIT returned -> handler)"),
            n,
            elapsed,
            Some(&latency(&committed)),
        ),
    ]
}

/// One message per SQLite transaction at `rate`, relayed in the same process (woken by the commit): latency from
/// the transaction returning to the handler.
async fn sqlite_added_latency(engine: &Engine, rate: u64, seconds: f64) -> Figures {
    let n = (rate as f64 * seconds) as u64;
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = SqliteOutbox::open(dir.path().join("orders.db"), "bench").await.expect("sqlite outbox");
    let slots = || -> Arc<Vec<AtomicU64>> { Arc::new((0..n).map(|_| AtomicU64::new(0)).collect()) };
    let (committed, handled) = (slots(), slots());
    let queue = "bench-sqlite-latency";
    engine.transport.bind(queue, Relayed::NAME).await.expect("bind");
    let (consumer, sink) = sink(engine, queue, n, Some(handled.clone())).await;
    let bus = Bus::builder("bench-relay").engine_instance(engine.clone()).start().await.expect("relay bus");
    let relay = OutboxRelay::new(outbox.clone(), bus.clone()).concurrency(KEYS as usize).start();
    let in_flight = Arc::new(Semaphore::new(256));
    let start = Instant::now();
    for seq in 0..n {
        tokio::time::sleep_until((start + Duration::from_secs_f64(seq as f64 / rate as f64)).into()).await;
        let permit = in_flight.clone().acquire_owned().await.expect("semaphore");
        let (outbox, committed) = (outbox.clone(), committed.clone());
        tokio::spawn(async move {
            let _permit = permit;
            outbox
                .transaction(move |tx| tx.publish(&Relayed { seq, payload: payload(PAYLOAD) }))
                .await
                .expect("commit");
            committed[seq as usize].store(now_us(), Ordering::Release);
        });
    }
    wait_done(&sink, Duration::from_secs(60)).await;
    let elapsed = start.elapsed();
    tokio::time::sleep(Duration::from_millis(100)).await;
    relay.shutdown().await;
    consumer.shutdown().await;
    bus.shutdown().await;
    let _ = engine.transport.delete_queue(queue).await;
    let mut h = histogram();
    for (f, t) in committed.iter().zip(handled.iter()) {
        let us = t.load(Ordering::Acquire).saturating_sub(f.load(Ordering::Acquire)).max(1);
        let _ = h.record(us.min(600_000_000));
    }
    figures(&format!("sqlite outbox -> memory @ {rate} msg/s (commit returned -> handler)"), n, elapsed, Some(&h))
}

async fn sqlite_drain(engine: &Engine, n: u64) -> Figures {
    sqlite_drain_to("sqlite outbox -> memory (relay drain)", engine, "bench-sqlite-drain", n).await
}

/// Fills a SQLite outbox with `n` messages (100 per transaction) and drains it through a relay to `engine`.
async fn sqlite_drain_to(scenario: &str, engine: &Engine, queue: &str, n: u64) -> Figures {
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = SqliteOutbox::open(dir.path().join("orders.db"), "bench").await.expect("sqlite outbox");
    let mut seq = 0;
    while seq < n {
        let end = (seq + PER_TX).min(n);
        outbox
            .transaction(move |tx| {
                let body = payload(PAYLOAD);
                for s in seq..end {
                    tx.publish(&Relayed { seq: s, payload: body.clone() })?;
                }
                Ok::<(), courier_core::Error>(())
            })
            .await
            .expect("fill the sqlite outbox");
        seq = end;
    }
    engine.transport.bind(queue, Relayed::NAME).await.expect("bind");
    drain(scenario, outbox, engine, queue, n).await
}

async fn drop_schema(outbox: &PgOutbox) {
    let statement = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", outbox.schema());
    if let Err(e) = sqlx::raw_sql(AssertSqlSafe(statement)).execute(outbox.pool()).await {
        eprintln!("could not drop the bench schema: {e}");
    }
}

fn main() {
    if !POSTGRES.require() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let n = env_u64("COURIER_BENCH_MESSAGES", 100_000);
        let schema = format!("outbox_bench_{}", uuid::Uuid::new_v4().simple());
        let url = format!("{}?schema={schema}", POSTGRES.url());
        let outbox = PgOutbox::connect(&url, "bench").await.expect("connect the outbox");
        let memory = MemoryTransport::new().into_engine();
        let mut rows = Vec::new();

        // Warm-up.
        memory.transport.bind("bench-memory-drain", Relayed::NAME).await.expect("bind");
        fill_pg(&outbox, 5_000).await;
        drain("warm-up", outbox.clone(), &memory, "bench-memory-drain", 5_000).await;

        rows.push(fill_pg(&outbox, n).await);
        rows.push(
            drain("postgres outbox -> memory (relay drain)", outbox.clone(), &memory, "bench-memory-drain", n).await,
        );
        rows.push(sqlite_drain(&memory, n).await);
        memory.transport.delete_queue("bench-memory-drain").await.expect("delete queue");
        memory.transport.delete_queue("bench-sqlite-drain").await.expect("delete queue");

        let mut rabbit_ratio = None;
        let mut sqlite_rabbit_ratio = None;
        if RABBITMQ.require() {
            let rn = n / 2;
            let namespace = format!("outbox-bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
            let options = RabbitMqOptions::from_url(&RABBITMQ.url()).expect("AMQP URL").namespace(&namespace);
            let rabbit = RabbitMqTransport::connect(options).await.expect("connect to RabbitMQ");
            let engine = rabbit.clone().into_engine();
            let plain = bus_throughput(
                "plain confirmed publish -> rabbitmq (256 in flight)",
                &engine,
                rn,
                256,
                PAYLOAD,
                |_| {},
            )
            .await
            .expect("plain publish");
            engine.transport.bind("bench-rabbit-drain", Relayed::NAME).await.expect("bind");
            fill_pg(&outbox, rn).await;
            let relayed =
                drain("postgres outbox -> rabbitmq (relay drain)", outbox.clone(), &engine, "bench-rabbit-drain", rn)
                    .await;
            rabbit_ratio = Some(relayed.per_second / plain.per_second);
            // The broker slows as a run goes on: the SQLite relay is compared with a plain publish measured just
            // before it, as the PostgreSQL relay is.
            let plain_again = bus_throughput(
                "plain confirmed publish -> rabbitmq (256 in flight), again",
                &engine,
                rn,
                256,
                PAYLOAD,
                |_| {},
            )
            .await
            .expect("plain publish");
            let sqlite_relayed =
                sqlite_drain_to("sqlite outbox -> rabbitmq (relay drain)", &engine, "bench-rabbit-sqlite-drain", rn)
                    .await;
            sqlite_rabbit_ratio = Some(sqlite_relayed.per_second / plain_again.per_second);
            rows.push(plain);
            rows.push(relayed);
            rows.push(plain_again);
            rows.push(sqlite_relayed);
            rabbit.delete_namespace().await.expect("delete the bench namespace");
            rabbit.close().await;
        }

        memory.transport.bind("bench-outbox-latency", Relayed::NAME).await.expect("bind");
        let plain = bus_latency_at_rate(
            "plain publish -> memory @ 2000 msg/s (create to handler)",
            &memory,
            2_000,
            5.0,
            PAYLOAD,
        )
        .await
        .expect("plain at rate");
        let [sent, returned] = added_latency(&url, &memory, 2_000, 5.0).await;
        let sqlite_latency = sqlite_added_latency(&memory, 2_000, 5.0).await;
        let p99 = |f: &Figures| f.p99_us.unwrap_or(0) as f64 / 1000.0;
        let (p99_sent, p99_returned, p99_sqlite) = (p99(&sent), p99(&returned), p99(&sqlite_latency));
        let sqlite_drain_rate = rows[2].per_second;
        rows.extend([plain, sent, returned, sqlite_latency]);

        println!("\n{}", Figures::header());
        for f in &rows {
            println!("{}", f.row());
        }
        println!();
        println!("relay -> memory: {:.0} msg/s (target >= 50,000)", rows[1].per_second);
        if let Some(ratio) = rabbit_ratio {
            println!("relay -> rabbitmq / plain confirmed publish: {:.0}% (target >= 90%)", ratio * 100.0);
        }
        println!("sqlite relay -> memory: {sqlite_drain_rate:.0} msg/s (target >= 50,000)");
        if let Some(ratio) = sqlite_rabbit_ratio {
            println!("sqlite relay -> rabbitmq / plain confirmed publish: {:.0}% (target >= 90%)", ratio * 100.0);
        }
        println!("sqlite p99 commit-to-handler at 2,000 msg/s: {p99_sqlite:.2} ms (target < 20 ms)");
        println!(
            "p99 commit-to-handler at 2,000 msg/s via LISTEN/NOTIFY: {p99_returned:.2} ms from COMMIT returning, \
             {p99_sent:.2} ms from COMMIT sent (target < 20 ms)"
        );
        drop_schema(&outbox).await;
    });
}
