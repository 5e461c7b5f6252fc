//! PostgreSQL publish-to-handle throughput and latency through Courier, next to a raw sqlx client doing the same
//! work in the same run.
//!
//! Run: `cargo bench -p courier-postgres --bench throughput` (PostgreSQL from `COURIER_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`; about a minute). `COURIER_BENCH_MESSAGES=N` changes the size of the
//! throughput runs (default 100,000), `COURIER_BENCH_ROUNDS` their rounds, `COURIER_BENCH_ONLY` the scenarios (see
//! [`courier_bench::Plan`]): `raw`, `courier`, `alone`, `contract`, `rate`. Prints a Markdown table; everything
//! runs in a schema of its own, dropped at the end.
//!
//! - Courier: [`bus_throughput`] (256-byte messages, 256 publishes in flight, one consumer bus with prefetch
//!   1,024 and concurrency 64) and [`bus_latency_at_rate`] at 5,000 msg/s.
//! - Raw sqlx: the same rows (queue, id, JSON headers, 256-byte body, visible_at) inserted by 4 tasks 100 rows per
//!   statement, while 4 tasks take and delete them 100 at a time with `DELETE ... FOR UPDATE SKIP LOCKED`
//!   (polling every millisecond when empty); at 5,000 msg/s, one insert per message.
//! - Raw sqlx doing the work Courier's contract asks of any client: each row carries its own metadata (id, type,
//!   source, time, trace context as JSON) and a JSON body; consumers lease rows with an `UPDATE ... FOR UPDATE SKIP
//!   LOCKED` (a crash then loses nothing: the lease runs out and the rows come back), decode headers and body, and
//!   delete what they handled in a second statement. The plain baseline deletes in the taking statement, so a
//!   consumer that dies after taking loses its batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use courier_bench::{
    BenchMessage, CpuMeter, Figures, Plan, RateBaseline, Table, bus_throughput, courier_scenario, latency_rounds,
    payload,
};

const SERVER: Option<&str> = Some("postgres");
use courier_postgres::sqlx::{self, AssertSqlSafe, PgPool, Row};
use courier_postgres::{PostgresOptions, PostgresTransport};
use courier_testkit::services::POSTGRES;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

/// Courier allocates small objects on one thread and frees them on another (a message is built by a publisher
/// and dropped by a consumer task): glibc's allocator serialises that on its arena locks, which measured about
/// half of the client's CPU time per message on 2 cores. mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PAYLOAD: usize = 256;
const BATCH: i64 = 100;
const RAW_TASKS: usize = 4;
const HEADERS: &str = r#"{"datacontenttype":"application/json","id":"0190f5a2-7c1e-7d4b-9a1e-2b3c4d5e6f70","source":"bench","specversion":"1.0","time":"2026-11-23T21:00:00.000000Z","type":"courier.bench.message.v1"}"#;

fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

fn q(sql: String) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(AssertSqlSafe(sql))
}

async fn raw_setup(pool: &PgPool, schema: &str) {
    let ddl = format!(
        "CREATE TABLE IF NOT EXISTS \"{schema}\".raw_messages (seq bigserial PRIMARY KEY, queue text NOT NULL,
           message_id text NOT NULL, headers text NOT NULL, body bytea NOT NULL, visible_at bigint NOT NULL,
           enqueued_us bigint NOT NULL);
         CREATE INDEX IF NOT EXISTS raw_by_queue ON \"{schema}\".raw_messages (queue, visible_at, seq);
         TRUNCATE \"{schema}\".raw_messages;"
    );
    sqlx::raw_sql(AssertSqlSafe(ddl)).execute(pool).await.expect("raw table");
}

/// Takes and deletes up to 100 rows; records each row's insert-to-take latency. Returns how many.
async fn raw_take(pool: &PgPool, schema: &str, latency: &std::sync::Mutex<Histogram<u64>>) -> u64 {
    let rows = q(format!(
        "DELETE FROM \"{schema}\".raw_messages WHERE seq = ANY(ARRAY(
             SELECT seq FROM \"{schema}\".raw_messages WHERE queue = 'raw' AND visible_at <= $1
             ORDER BY visible_at, seq LIMIT $2 FOR UPDATE SKIP LOCKED))
         RETURNING headers, body, enqueued_us"
    ))
    .bind(i64::MAX / 2)
    .bind(BATCH)
    .fetch_all(pool)
    .await
    .expect("raw take");
    let now = now_us();
    let mut h = latency.lock().unwrap();
    for row in &rows {
        let _: &str = row.get(0);
        let _: &[u8] = row.get(1);
        let at: i64 = row.get(2);
        let _ = h.record(((now - at).max(1) as u64).min(600_000_000));
    }
    rows.len() as u64
}

fn raw_insert(
    schema: &str,
    n: usize,
    body: &[u8],
) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let ids: Vec<String> = (0..n).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    q(format!(
        "INSERT INTO \"{schema}\".raw_messages (queue, message_id, headers, body, visible_at, enqueued_us)
         SELECT 'raw', id, $2, $3, 0, $4 FROM unnest($1::text[]) AS id"
    ))
    .bind(ids)
    .bind(HEADERS)
    .bind(body.to_vec())
    .bind(now_us())
}

/// Leases up to 100 rows, reads each row's metadata and body as a handler would, then deletes them: the contract's
/// work. Records each row's insert-to-handle latency; returns how many.
async fn contract_take(pool: &PgPool, schema: &str, latency: &std::sync::Mutex<Histogram<u64>>) -> u64 {
    let now = now_us();
    let rows = q(format!(
        "UPDATE \"{schema}\".raw_messages SET visible_at = $1 + 30000000 WHERE seq = ANY(ARRAY(
             SELECT seq FROM \"{schema}\".raw_messages WHERE queue = 'raw' AND visible_at <= $1
             ORDER BY visible_at, seq LIMIT $2 FOR UPDATE SKIP LOCKED))
         RETURNING seq, headers, body"
    ))
    .bind(now)
    .bind(BATCH)
    .fetch_all(pool)
    .await
    .expect("contract take");
    let mut handled = Vec::with_capacity(rows.len());
    {
        let mut h = latency.lock().unwrap();
        for row in &rows {
            let headers: std::collections::HashMap<String, String> =
                serde_json::from_str(row.get(1)).expect("JSON headers");
            let message: BenchMessage = serde_json::from_slice(row.get(2)).expect("a JSON body");
            std::hint::black_box(message.seq);
            let sent = headers
                .get("time")
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map_or(0, |t| t.timestamp_micros());
            let _ = h.record(((now_us() - sent).max(1) as u64).min(600_000_000));
            handled.push(row.get::<i64, _>(0));
        }
    }
    if !handled.is_empty() {
        q(format!("DELETE FROM \"{schema}\".raw_messages WHERE seq = ANY($1)"))
            .bind(&handled)
            .execute(pool)
            .await
            .expect("contract delete");
    }
    handled.len() as u64
}

/// `n` rows as the contract writes them: metadata and JSON body of their own.
fn contract_insert(
    schema: &str,
    n: usize,
    payload: &str,
) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let (mut ids, mut headers, mut bodies) = (Vec::new(), Vec::new(), Vec::new());
    for seq in 0..n {
        let id = uuid::Uuid::now_v7().to_string();
        let meta = serde_json::json!({
            "id": id,
            "type": "courier.bench.message.v1",
            "source": "bench-producer",
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "traceparent": format!("00-{}-{:016x}-01", uuid::Uuid::new_v4().simple(), seq + 1),
        });
        ids.push(id);
        headers.push(meta.to_string());
        let body = BenchMessage { seq: seq as u64, payload: payload.to_owned() };
        bodies.push(serde_json::to_vec(&body).expect("a JSON body"));
    }
    q(format!(
        "INSERT INTO \"{schema}\".raw_messages (queue, message_id, headers, body, visible_at, enqueued_us)
         SELECT 'raw', id, h, b, 0, 0 FROM unnest($1::text[], $2::text[], $3::bytea[]) AS t (id, h, b)"
    ))
    .bind(ids)
    .bind(headers)
    .bind(bodies)
}

/// What the raw client does with each message.
#[derive(Clone, Copy, PartialEq)]
enum Work {
    /// Fixed headers, a plain body, deleted in the taking statement.
    Plain,
    /// The contract's work ([`contract_take`], [`contract_insert`]).
    Contract,
}

/// The raw baseline at full speed: `messages` rows inserted 100 per statement by 4 tasks while 4 tasks take and
/// delete them 100 at a time.
async fn raw_throughput(pool: &PgPool, schema: &str, messages: u64, work: Work) -> Figures {
    raw_setup(pool, schema).await;
    let body = payload(PAYLOAD).into_bytes();
    let latency = Arc::new(std::sync::Mutex::new(histogram()));
    let (next, taken) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..RAW_TASKS {
        let (pool, schema, body, next) = (pool.clone(), schema.to_owned(), body.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(BATCH as u64, Ordering::Relaxed);
                if from >= messages {
                    return;
                }
                let n = (messages - from).min(BATCH as u64) as usize;
                let insert = match work {
                    Work::Plain => raw_insert(&schema, n, &body),
                    Work::Contract => contract_insert(&schema, n, &payload(PAYLOAD)),
                };
                insert.execute(&pool).await.expect("raw insert");
            }
        }));
    }
    for _ in 0..RAW_TASKS {
        let (pool, schema, latency, taken) = (pool.clone(), schema.to_owned(), latency.clone(), taken.clone());
        tasks.push(tokio::spawn(async move {
            while taken.load(Ordering::Relaxed) < messages {
                let n = match work {
                    Work::Plain => raw_take(&pool, &schema, &latency).await,
                    Work::Contract => contract_take(&pool, &schema, &latency).await,
                };
                taken.fetch_add(n, Ordering::Relaxed);
                if n == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("raw task");
    }
    let latency = latency.lock().unwrap().clone();
    let scenario = match work {
        Work::Plain => "raw sqlx (insert x100, SKIP LOCKED take+delete x100)",
        Work::Contract => "raw sqlx, the contract's work (metadata, JSON; lease x100, then delete)",
    };
    figures(scenario, messages, start.elapsed(), &latency)
}

/// The raw baseline at a fixed rate: one insert per message on schedule (up to 1,024 in flight), taken as above,
/// doing `work`.
async fn raw_at_rate(pool: &PgPool, schema: &str, rate: u64, seconds: f64, work: Work) -> Figures {
    raw_setup(pool, schema).await;
    let messages = (rate as f64 * seconds) as u64;
    let body = payload(PAYLOAD).into_bytes();
    let latency = Arc::new(std::sync::Mutex::new(histogram()));
    let taken = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::new();
    for _ in 0..RAW_TASKS {
        let (pool, schema, latency, taken) = (pool.clone(), schema.to_owned(), latency.clone(), taken.clone());
        consumers.push(tokio::spawn(async move {
            while taken.load(Ordering::Relaxed) < messages {
                let n = match work {
                    Work::Plain => raw_take(&pool, &schema, &latency).await,
                    Work::Contract => contract_take(&pool, &schema, &latency).await,
                };
                taken.fetch_add(n, Ordering::Relaxed);
                if n == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }));
    }
    let in_flight = Arc::new(Semaphore::new(1024));
    let start = Instant::now();
    for seq in 0..messages {
        tokio::time::sleep_until((start + Duration::from_secs_f64(seq as f64 / rate as f64)).into()).await;
        let permit = in_flight.clone().acquire_owned().await.expect("semaphore");
        let (pool, schema, body) = (pool.clone(), schema.to_owned(), body.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let insert = match work {
                Work::Plain => raw_insert(&schema, 1, &body),
                Work::Contract => contract_insert(&schema, 1, &payload(PAYLOAD)),
            };
            insert.execute(&pool).await.expect("raw insert");
        });
    }
    for c in consumers {
        c.await.expect("raw consumer");
    }
    let latency = latency.lock().unwrap().clone();
    let scenario = match work {
        Work::Plain => format!("raw sqlx @ {rate} msg/s (insert x1, take+delete x100)"),
        Work::Contract => format!("raw sqlx @ {rate} msg/s, the contract's work (insert x1, lease x100, then delete)"),
    };
    figures(&scenario, messages, start.elapsed(), &latency)
}

/// Before each throughput scenario: vacuums the queue tables and makes a checkpoint, so that every scenario starts
/// from the same state: no dead rows left by the one before, no checkpoint under way. (It did not stop the
/// contract's-work baseline from collapsing in some rounds, 11-15k msg/s at 113-154 us of server CPU a message: its
/// connections lacked the planner settings the transport runs with, which they have now.) `CHECKPOINT` needs a
/// superuser or `pg_checkpoint`; without it only the vacuum runs.
async fn fresh_start(pool: &PgPool, schema: &str) {
    for statement in
        [format!("VACUUM \"{schema}\".messages"), format!("VACUUM \"{schema}\".raw_messages"), "CHECKPOINT".to_owned()]
    {
        if let Err(e) = sqlx::raw_sql(AssertSqlSafe(statement.clone())).execute(pool).await {
            eprintln!("{statement}: {e} (the scenarios run without it)");
        }
    }
}

fn figures(scenario: &str, messages: u64, elapsed: Duration, latency: &Histogram<u64>) -> Figures {
    let seconds = elapsed.as_secs_f64();
    Figures {
        scenario: scenario.to_owned(),
        messages,
        seconds,
        per_second: messages as f64 / seconds.max(1e-9),
        p50_us: Some(latency.value_at_quantile(0.50)),
        p99_us: Some(latency.value_at_quantile(0.99)),
        max_us: Some(latency.max()),
        ..Default::default()
    }
}

fn main() {
    if !POSTGRES.require() {
        return;
    }
    let plan = Plan::from_env();
    let messages = plan.messages;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let schema = format!("courier_bench_{}", uuid::Uuid::new_v4().simple());
        let options = PostgresOptions::default().schema(&schema).application_name("courier_bench");
        let transport = PostgresTransport::connect(&POSTGRES.url(), options).await.expect("connect");
        let engine = transport.clone().into_engine();
        // The raw client gets the planner settings the transport runs with (see courier-postgres's docs): without
        // them its takes and deletes keep plans made while its table was empty, and some rounds collapsed.
        let raw_options: sqlx::postgres::PgConnectOptions = POSTGRES.url().parse().expect("PostgreSQL URL");
        let raw_options = raw_options.options([
            ("enable_seqscan", "off"),
            ("enable_bitmapscan", "off"),
            ("plan_cache_mode", "force_custom_plan"),
        ]);
        let raw_pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(RAW_TASKS as u32 * 2 + 2)
            .connect_with(raw_options)
            .await
            .expect("raw pool");

        // Warm-up: prepared statements, caches, the table's first pages.
        bus_throughput("warm-up", &engine, 5_000, 256, PAYLOAD, |_| {}).await.expect("warm-up");
        let _ = raw_throughput(&raw_pool, &schema, 5_000, Work::Plain).await;

        let mut table = Table::new();
        let names = ("courier postgres (256 in flight)", "courier's postgres transport alone, no bus");
        for round in 0..plan.rounds {
            for key in plan.order(round) {
                fresh_start(&raw_pool, &schema).await;
                match key {
                    "raw" => {
                        let run = raw_throughput(&raw_pool, &schema, messages, Work::Plain);
                        table.add("raw", CpuMeter::measure(SERVER, run).await);
                    }
                    "contract" => {
                        let run = raw_throughput(&raw_pool, &schema, messages, Work::Contract);
                        table.add("contract", CpuMeter::measure(SERVER, run).await);
                    }
                    key => courier_scenario(key, &mut table, SERVER, &engine, names, messages, 256, PAYLOAD).await,
                }
            }
        }
        let scenario = "courier postgres @ 5000 msg/s";
        latency_rounds(&plan, &mut table, &engine, scenario, 5_000, 5.0, PAYLOAD, |_, baseline| {
            let work = if baseline == RateBaseline::Plain { Work::Plain } else { Work::Contract };
            let (raw_pool, schema) = (&raw_pool, &schema);
            async move { raw_at_rate(raw_pool, schema, 5_000, 5.0, work).await }
        })
        .await;

        println!();
        table.print();
        println!();
        table.print_engine_ratios(5_000);
        transport.drop_schema().await.expect("drop the bench schema");
    });
}
