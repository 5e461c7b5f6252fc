//! Publish-to-handle throughput and latency of the Redis transport, next to a raw Redis Streams client doing the
//! same work in the same run (XADD with 256 in flight; XREADGROUP batches; XACK), and the raw client doing the
//! work of Courier's contract (message metadata and a JSON body, decoded; XACK and XDEL in one transaction).
//!
//! Run: `cargo bench -p courier-redis --bench throughput` (needs Redis at `COURIER_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`). Size: `COURIER_BENCH_MESSAGES` (default 100,000); rounds: `COURIER_BENCH_ROUNDS`;
//! scenarios (`COURIER_BENCH_ONLY`, see [`courier_bench::Plan`]): `raw`, `contract`, `courier`, `alone`, `rate`.
//! Uses its own key prefix and deletes its keys at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use courier_bench::{
    BenchMessage, CpuMeter, Figures, Plan, RateBaseline, Table, courier_scenario, latency_rounds, payload,
};

const SERVER: Option<&str> = Some("redis-server");
use courier_redis::{RedisOptions, RedisTransport};
use courier_testkit::services::REDIS;
use hdrhistogram::Histogram;
use redis::Value;
use redis::aio::MultiplexedConnection;

/// Courier allocates small objects on one thread and frees them on another (a message is built by a publisher
/// and dropped by a consumer task): glibc's allocator serialises that on its arena locks, which measured about
/// half of the client's CPU time per message on 2 cores. mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PAYLOAD: usize = 256;
const IN_FLIGHT: usize = 256;
const RATE: u64 = 5_000;

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

async fn conn(client: &redis::Client) -> MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    client.get_multiplexed_async_connection_with_config(&config).await.expect("connect")
}

/// A connection, once the stream `key` and its group `g` exist.
async fn with_group(client: &redis::Client, key: &str) -> MultiplexedConnection {
    let mut admin = conn(client).await;
    let _: redis::RedisResult<()> =
        redis::cmd("XGROUP").arg("CREATE").arg(key).arg("g").arg("0").arg("MKSTREAM").query_async(&mut admin).await;
    admin
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram")
}

/// `XREADGROUP` of up to 1,024 new entries of `key` for consumer `c` of group `g`, blocking up to a second.
fn read_group(key: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP").arg("g").arg("c").arg("COUNT").arg(1024).arg("BLOCK").arg(1000).arg("STREAMS").arg(key).arg(">");
    cmd
}

/// Adds `messages` entries to `key` from `IN_FLIGHT` tasks (each as soon as the last is stored, or on schedule at
/// `rate` per second from `start`), the command for entry `seq` made by `entry`; returns when all are stored.
async fn produce<F>(
    producer: MultiplexedConnection,
    key: &str,
    messages: u64,
    rate: Option<u64>,
    start: Instant,
    entry: F,
) where
    F: Fn(&str, u64) -> redis::Cmd + Clone + Send + 'static,
{
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (mut c, next, key, entry) = (producer.clone(), next.clone(), key.to_owned(), entry.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= messages {
                    return;
                }
                if let Some(rate) = rate {
                    let due = start + Duration::from_secs_f64(seq as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let _: String = entry(&key, seq).query_async(&mut c).await.expect("XADD");
            }
        }));
    }
    for t in tasks {
        t.await.expect("producer");
    }
}

/// One consumer reading `key` in batches until `messages` were handled: `handle` records a batch's latencies and
/// returns its entry ids, `settle` makes the command that acknowledges them. Returns the latencies.
fn consume<R, I, H, S>(
    mut c: MultiplexedConnection,
    key: &str,
    messages: u64,
    mut handle: H,
    settle: S,
) -> tokio::task::JoinHandle<Histogram<u64>>
where
    R: redis::FromRedisValue,
    I: redis::ToRedisArgs + Send + 'static,
    H: FnMut(R, &mut Histogram<u64>) -> Vec<I> + Send + 'static,
    S: Fn(&str, &[I]) -> redis::Pipeline + Send + 'static,
{
    let key = key.to_owned();
    tokio::spawn(async move {
        let (mut latency, mut handled) = (histogram(), 0u64);
        while handled < messages {
            let reply: R = read_group(&key).query_async(&mut c).await.expect("XREADGROUP");
            let ids = handle(reply, &mut latency);
            handled += ids.len() as u64;
            if !ids.is_empty() {
                let _: Value = settle(&key, &ids).query_async(&mut c).await.expect("XACK");
            }
        }
        latency
    })
}

/// The raw baseline: `messages` XADDs (with `in_flight` concurrent, or at `rate` per second) of a 256-byte body
/// and a timestamp, consumed by one XREADGROUP loop (batches of up to 1,024) that XACKs each batch.
async fn raw(client: &redis::Client, key: &str, messages: u64, rate: Option<u64>) -> Figures {
    let mut admin = with_group(client, key).await;
    let body = payload(PAYLOAD);
    let handle = |reply: Value, latency: &mut Histogram<u64>| {
        let mut ids = Vec::new();
        let Value::Array(streams) = reply else { return ids };
        for stream in streams {
            let Value::Array(mut parts) = stream else { continue };
            let Some(Value::Array(entries)) = parts.pop() else { continue };
            for entry in entries {
                let Value::Array(mut e) = entry else { continue };
                let fields = e.pop();
                if let Some(Value::BulkString(id)) = e.pop() {
                    ids.push(id);
                }
                if let Some(Value::Array(f)) = fields
                    && let Some(Value::BulkString(t)) = f.get(1)
                {
                    let sent: i64 = std::str::from_utf8(t).ok().and_then(|t| t.parse().ok()).unwrap_or(0);
                    let _ = latency.record((now_micros() - sent).max(1) as u64);
                }
            }
        }
        ids
    };
    let settle = |key: &str, ids: &[Vec<u8>]| {
        let mut xack = redis::pipe();
        xack.cmd("XACK").arg(key).arg("g").arg(ids);
        xack
    };
    let consumer = consume(conn(client).await, key, messages, handle, settle);
    let start = Instant::now();
    let body: Arc<str> = body.into();
    let entry = move |key: &str, _seq: u64| {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(key).arg("*").arg("t").arg(now_micros()).arg("b").arg(&*body);
        xadd
    };
    produce(conn(client).await, key, messages, rate, start, entry).await;
    let latency = consumer.await.expect("consumer");
    let elapsed = start.elapsed();
    let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(key).query_async(&mut admin).await;
    let scenario = match rate {
        None => format!("raw Redis Streams, {IN_FLIGHT} in flight (baseline)"),
        Some(r) => format!("raw Redis Streams at {r} msg/s (baseline)"),
    };
    figures(&scenario, messages, elapsed, &latency)
}

/// The raw client doing the work Courier's contract asks for, with no framework: each entry carries the same
/// metadata as a Courier message (id, type, source, time and trace context as a JSON header field) and a
/// JSON-encoded body; the consumer decodes both and, per batch, acknowledges and deletes the entries atomically
/// (`MULTI` / `XACK` / `XDEL` / `EXEC`), so the stream does not grow. Shown next to the plain baseline: the gap
/// between the two is the price of the contract, whoever pays it. All out with `rate` `None`, else at `rate` msg/s.
async fn raw_equal_work(client: &redis::Client, key: &str, messages: u64, rate: Option<u64>) -> Figures {
    let mut admin = with_group(client, key).await;
    let body = payload(PAYLOAD);
    let handle = |reply: redis::streams::StreamReadReply, latency: &mut Histogram<u64>| {
        let mut ids = Vec::new();
        for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
            let headers: std::collections::BTreeMap<String, String> =
                entry.get::<Vec<u8>>("h").and_then(|h| serde_json::from_slice(&h).ok()).expect("a JSON header field");
            let message: BenchMessage =
                entry.get::<Vec<u8>>("b").and_then(|b| serde_json::from_slice(&b).ok()).expect("a JSON body");
            std::hint::black_box(message.seq);
            let sent = headers
                .get("time")
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map_or(0, |t| t.timestamp_micros());
            let _ = latency.record((now_micros() - sent).max(1) as u64);
            ids.push(entry.id);
        }
        ids
    };
    let settle = |key: &str, ids: &[String]| {
        let mut ack_and_delete = redis::pipe();
        ack_and_delete.atomic().cmd("XACK").arg(key).arg("g").arg(ids).cmd("XDEL").arg(key).arg(ids);
        ack_and_delete
    };
    let consumer = consume(conn(client).await, key, messages, handle, settle);
    let start = Instant::now();
    let entry = move |key: &str, seq: u64| {
        let headers = serde_json::json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "type": "courier.bench.message.v1",
            "source": "bench-producer",
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "traceparent": format!("00-{}-{:016x}-01", uuid::Uuid::new_v4().simple(), seq + 1),
        });
        let encoded = serde_json::to_vec(&BenchMessage { seq, payload: body.clone() }).expect("a JSON body");
        let mut xadd = redis::cmd("XADD");
        xadd.arg(key).arg("*").arg("h").arg(headers.to_string()).arg("b").arg(encoded);
        xadd
    };
    produce(conn(client).await, key, messages, rate, start, entry).await;
    let latency = consumer.await.expect("consumer");
    let elapsed = start.elapsed();
    let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(key).query_async(&mut admin).await;
    let scenario = match rate {
        None => format!("raw Redis Streams, {IN_FLIGHT} in flight, the contract's work (metadata, JSON, XACK+XDEL)"),
        Some(r) => format!("raw Redis Streams at {r} msg/s, the contract's work"),
    };
    figures(&scenario, messages, elapsed, &latency)
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

fn delete_keys(client: &redis::Client, prefix: &str) {
    let Ok(mut c) = client.get_connection() else { return };
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query(&mut c).unwrap_or_default();
    if !keys.is_empty() {
        let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&keys).query(&mut c);
    }
}

fn main() {
    if !REDIS.require() {
        return;
    }
    let plan = Plan::from_env();
    let messages = plan.messages;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let prefix = format!("courier-bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let client = redis::Client::open(REDIS.url()).expect("Redis URL");
    let table = rt.block_on(async {
        let transport = RedisTransport::connect(&REDIS.url(), RedisOptions::default().with_prefix(prefix.clone()))
            .await
            .expect("connect");
        let engine = transport.into_engine();
        let mut table = Table::new();
        let courier = format!("Courier Redis transport, {IN_FLIGHT} publishes in flight");
        let names = (courier.as_str(), "Courier's Redis transport alone, no bus");
        for round in 0..plan.rounds {
            let key = |name: &str| format!("{prefix}:{name}{round}");
            for scenario in plan.order(round) {
                match scenario {
                    "raw" => {
                        table.add("raw", CpuMeter::measure(SERVER, raw(&client, &key("raw"), messages, None)).await);
                    }
                    "contract" => {
                        let stream = key("eq");
                        let run = raw_equal_work(&client, &stream, messages, None);
                        table.add("contract", CpuMeter::measure(SERVER, run).await);
                    }
                    other => {
                        courier_scenario(other, &mut table, SERVER, &engine, names, messages, IN_FLIGHT, PAYLOAD).await
                    }
                }
            }
        }
        let scenario = format!("Courier Redis transport at {RATE} msg/s");
        latency_rounds(&plan, &mut table, &engine, &scenario, RATE, 5.0, PAYLOAD, |round, baseline| {
            let client = &client;
            let (plain, contract) = (format!("{prefix}:rate{round}"), format!("{prefix}:ratec{round}"));
            async move {
                match baseline {
                    RateBaseline::Plain => raw(client, &plain, RATE * 5, Some(RATE)).await,
                    RateBaseline::Contract => raw_equal_work(client, &contract, RATE * 5, Some(RATE)).await,
                }
            }
        })
        .await;
        table
    });
    delete_keys(&client, &prefix);
    println!("\n{messages} 256-byte messages, publish to handle\n");
    table.print();
    println!();
    table.print_engine_ratios(RATE);
}
