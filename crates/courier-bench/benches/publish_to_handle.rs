//! Publish-to-handle throughput, latency and memory for the in-memory and SQLite transports, next to raw SQLite.
//!
//! Run: `cargo bench -p courier-bench` (about two minutes). Smaller: `COURIER_BENCH_MESSAGES=50000
//! COURIER_BENCH_BIG=100000 cargo bench -p courier-bench`. Prints a Markdown table and writes
//! `target/courier-bench.json`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use courier_bench::{
    BenchMessage, Figures, bus_drain, bus_latency_at_rate, bus_throughput, payload, peak_rss_bytes,
    raw_sqlite_baseline, rss_bytes,
};
use courier_bus::{Bus, Context, HandlerError, MemoryTransport, Retry};
use courier_core::{Engine, Message};
use courier_sqlite::{SqliteOptions, SqliteTransport};

/// Courier allocates small objects on one thread and frees them on another (a message is built by a publisher
/// and dropped by a consumer task): glibc's allocator serialises that on its arena locks, which measured about
/// half of the client's CPU time per message on 2 cores. mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PAYLOAD: usize = 256;
const CHILD_ENV: &str = "COURIER_BENCH_CHILD";

/// Runs this bench binary again as a child doing one memory measurement in a fresh process; returns its stdout
/// lines.
fn run_child(spec: &str) -> Vec<String> {
    let exe = std::env::current_exe().expect("bench binary");
    let mut child = Command::new(exe).env(CHILD_ENV, spec).stdout(Stdio::piped()).spawn().expect("spawn child");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines().map_while(Result::ok).collect();
    let _ = child.wait();
    lines
}

/// Child: a long SQLite run, sampling resident memory as it goes.
async fn rss_run(spec: &str) {
    let Some((db, n)) = spec.split_once('|').and_then(|(d, n)| Some((d, n.parse::<u64>().ok()?))) else {
        eprintln!("bad rss spec: {spec}");
        return;
    };
    let engine = sqlite(std::path::Path::new(db)).await;
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = samples.clone();
    let figures = bus_throughput("rss", &engine, n, 256, PAYLOAD, move |handled| {
        if let Some(rss) = rss_bytes() {
            s.lock().unwrap().push((handled, rss));
        }
    })
    .await
    .expect("RSS run");
    let samples = samples.lock().unwrap().clone();
    let settled: Vec<u64> = samples.iter().filter(|(h, _)| *h >= n / 10).map(|(_, r)| *r).collect();
    println!("per_second {}", figures.per_second);
    println!("seconds {}", figures.seconds);
    println!("p50_us {}", figures.p50_us.unwrap_or(0));
    println!("p99_us {}", figures.p99_us.unwrap_or(0));
    println!("max_us {}", figures.max_us.unwrap_or(0));
    println!("rss_min {}", settled.iter().min().copied().unwrap_or(0));
    println!("rss_max {}", settled.iter().max().copied().unwrap_or(0));
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn sqlite(path: &std::path::Path) -> Engine {
    SqliteTransport::open(path, SqliteOptions::default()).await.expect("open SQLite").into_engine()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        match spec.split_once('|') {
            Some(("backlog", rest)) => rt.block_on(backlog_consumer(rest)),
            Some(("rss", rest)) => rt.block_on(rss_run(rest)),
            _ => eprintln!("bad {CHILD_ENV}: {spec}"),
        }
        return;
    }
    rt.block_on(run());
}

async fn run() {
    let messages = env_u64("COURIER_BENCH_MESSAGES", 200_000);
    let big = env_u64("COURIER_BENCH_BIG", 1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rows: Vec<Figures> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let quiet = |_| {};
    // COURIER_BENCH_ONLY=2,3 runs only those steps.
    let only: Vec<u32> = std::env::var("COURIER_BENCH_ONLY")
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_default();
    let step = |n: u32| only.is_empty() || only.contains(&n);

    let memory = MemoryTransport::new().into_engine();
    if step(7) {
        eprintln!("[7] consumer alone, in memory ({messages} messages queued first)");
        rows.push(bus_drain("memory, consumer alone", &memory, messages, PAYLOAD).await.expect("memory drain"));
    }
    if step(1) {
        eprintln!("[1/6] in-memory throughput ({messages} messages, 8 publishers)");
        rows.push(
            bus_throughput("memory, 8 publishers", &memory, messages, 8, PAYLOAD, quiet).await.expect("memory run"),
        );
    }
    if step(2) {
        eprintln!("[2/6] SQLite throughput ({messages} messages, 256 publishers, WAL + synchronous=FULL)");
        let engine = sqlite(&dir.path().join("throughput.db")).await;
        rows.push(
            bus_throughput("SQLite FULL, 256 publishers", &engine, messages, 256, PAYLOAD, quiet)
                .await
                .expect("sqlite run"),
        );
    }
    if step(3) {
        eprintln!("[3/6] raw SQLite baseline ({messages} rows)");
        rows.push(raw_sqlite_baseline(&dir.path().join("raw.db"), messages, 100, PAYLOAD).expect("raw SQLite"));
    }
    if step(4) {
        eprintln!("[4/6] latency at 5,000 msg/s for 5 s");
        rows.push(bus_latency_at_rate("memory @ 5,000/s", &memory, 5000, 5.0, PAYLOAD).await.expect("memory latency"));
        let engine = sqlite(&dir.path().join("latency.db")).await;
        rows.push(
            bus_latency_at_rate("SQLite FULL @ 5,000/s", &engine, 5000, 5.0, PAYLOAD).await.expect("sqlite latency"),
        );
    }
    if step(5) {
        eprintln!("[5/6] resident memory across a {big}-message SQLite run (in a fresh process)");
        let out = run_child(&format!("rss|{}|{big}", dir.path().join("flat.db").display()));
        let value = |key: &str| out.iter().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse::<f64>().ok()));
        if let (Some(per_second), Some(seconds), Some(min), Some(max)) =
            (value("per_second "), value("seconds "), value("rss_min "), value("rss_max "))
        {
            rows.push(Figures {
                scenario: "SQLite FULL, 256 publishers, RSS run".into(),
                messages: big,
                seconds,
                per_second,
                p50_us: value("p50_us ").map(|v| v as u64),
                p99_us: value("p99_us ").map(|v| v as u64),
                max_us: value("max_us ").map(|v| v as u64),
                ..Default::default()
            });
            notes.push(format!(
                "RSS from 10% to 100% of a {big}-message run: min {:.1} MiB, max {:.1} MiB, growth {:.1}% (target: within 10%)",
                mib(min as u64),
                mib(max as u64),
                (max / min - 1.0) * 100.0
            ));
        } else {
            notes.push("the RSS run did not report".into());
        }
    }
    if step(6) {
        eprintln!("[6/6] a consumer started against a backlog of {big} messages on disk");
        let backlog_db = dir.path().join("backlog.db");
        let engine = sqlite(&backlog_db).await;
        let queue = "bench-backlog";
        engine.transport.bind(queue, BenchMessage::NAME).await.expect("bind");
        let producer =
            Bus::builder("bench-backlog-producer").engine_instance(engine.clone()).start().await.expect("producer");
        let next = Arc::new(AtomicU64::new(0));
        let body = payload(PAYLOAD);
        let mut tasks = Vec::new();
        for _ in 0..256 {
            let (producer, next, body) = (producer.clone(), next.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= big {
                        return;
                    }
                    producer.publish(BenchMessage { seq, payload: body.clone() }).await.expect("publish");
                }
            }));
        }
        for t in tasks {
            t.await.expect("publisher");
        }
        producer.shutdown().await;
        let out = run_child(&format!("backlog|{}|{queue}|{big}", backlog_db.display()));
        let value = |key: &str| out.iter().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse::<f64>().ok()));
        let (peak, seconds) = (value("peak_rss_bytes ").map(|v| v as u64), value("seconds "));
        if let (Some(peak), Some(seconds)) = (peak, seconds) {
            rows.push(Figures {
                scenario: "SQLite FULL, consumer draining a backlog".into(),
                messages: big,
                seconds,
                per_second: big as f64 / seconds,
                p50_us: None,
                p99_us: None,
                max_us: None,
                ..Default::default()
            });
            notes.push(format!(
                "peak RSS of a consumer process draining a {big}-message backlog: {:.1} MiB (target: under 50 MB)",
                mib(peak)
            ));
        } else {
            notes.push("the backlog consumer did not report".into());
        }
    }

    println!("\n{}", Figures::header());
    for r in &rows {
        println!("{}", r.row());
    }
    println!();
    for n in &notes {
        println!("- {n}");
    }
    let json = serde_json::json!({ "rows": rows, "notes": notes, "payload_bytes": PAYLOAD });
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/courier-bench.json");
    if std::fs::write(&out, serde_json::to_vec_pretty(&json).expect("json")).is_ok() {
        eprintln!("figures written to {}", out.display());
    }
}

/// Child process: consumes the whole backlog, then reports its peak resident memory.
async fn backlog_consumer(spec: &str) {
    let mut parts = spec.split('|');
    let (Some(db), Some(queue), Some(n)) =
        (parts.next(), parts.next(), parts.next().and_then(|n| n.parse::<u64>().ok()))
    else {
        eprintln!("bad backlog spec: {spec}");
        return;
    };
    let engine = sqlite(std::path::Path::new(db)).await;
    let handled = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let (h, d) = (handled.clone(), done.clone());
    let start = Instant::now();
    let bus = Bus::builder(queue)
        .engine_instance(engine)
        .prefetch(1024)
        .concurrency(64)
        .retry(Retry::none())
        .consume(move |_m: BenchMessage, _ctx: Context| {
            let (h, d) = (h.clone(), d.clone());
            async move {
                if h.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    d.notify_one();
                }
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await
        .expect("consumer");
    let notified = done.notified();
    if handled.load(Ordering::Relaxed) < n {
        let _ = tokio::time::timeout(Duration::from_secs(600), notified).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    bus.shutdown().await;
    println!("seconds {seconds}");
    println!("peak_rss_bytes {}", peak_rss_bytes().unwrap_or(0));
}
