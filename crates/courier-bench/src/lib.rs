//! Courier's benchmark scenarios, shared by `cargo bench -p courier-bench` and `courier bench`.
//!
//! Every figure is measured next to its baseline in the same run, so it reads as a ratio on the same machine:
//! - [`bus_throughput`]: publish-to-handle throughput through the bus, with concurrent publishers;
//! - [`bus_latency_at_rate`]: publish-to-handle latency percentiles at a fixed offered rate;
//! - [`raw_sqlite_baseline`]: the same rows inserted and deleted with plain SQLite, no bus;
//! - [`rss_bytes`] / [`peak_rss_bytes`]: resident memory, for the flat-memory and backlog checks;
//! - [`CpuMeter`]: CPU time per message of this process and of the engine's server, over one scenario.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_bus::{Bus, Context, HandlerError, Retry};
use courier_core::{Engine, Json, Message, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};

/// The benchmark message: a sequence number and a payload of the requested size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchMessage {
    /// Sequence number.
    pub seq: u64,
    /// Filler.
    pub payload: String,
}

impl Message for BenchMessage {
    const NAME: &'static str = "courier.bench.message.v1";
    type Codec = Json;
}

/// One measured scenario.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    /// What was measured.
    pub scenario: String,
    /// Messages (or rows) moved.
    pub messages: u64,
    /// Wall time.
    pub seconds: f64,
    /// Throughput.
    pub per_second: f64,
    /// Median publish-to-handle latency in microseconds, where measured.
    pub p50_us: Option<u64>,
    /// 99th percentile latency in microseconds, where measured.
    pub p99_us: Option<u64>,
    /// Maximum latency in microseconds, where measured.
    pub max_us: Option<u64>,
    /// CPU time this process spent per message, in microseconds, where measured (see [`CpuMeter`]).
    pub client_cpu_us: Option<f64>,
    /// CPU time the engine's server spent per message, in microseconds, where measured (see [`CpuMeter`]).
    pub server_cpu_us: Option<f64>,
}

impl Figures {
    fn new(scenario: &str, messages: u64, elapsed: Duration, latency: Option<&Histogram<u64>>) -> Self {
        let seconds = elapsed.as_secs_f64();
        Self {
            scenario: scenario.to_owned(),
            messages,
            seconds,
            per_second: messages as f64 / seconds.max(1e-9),
            p50_us: latency.map(|h| h.value_at_quantile(0.50)),
            p99_us: latency.map(|h| h.value_at_quantile(0.99)),
            max_us: latency.map(|h| h.max()),
            client_cpu_us: None,
            server_cpu_us: None,
        }
    }

    /// A Markdown table row.
    pub fn row(&self) -> String {
        let ms = |v: Option<u64>| v.map_or("-".to_owned(), |us| format!("{:.2}", us as f64 / 1000.0));
        let cpu = |v: Option<f64>| v.map_or("-".to_owned(), |us| format!("{us:.1}"));
        format!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} |",
            self.scenario,
            self.messages,
            self.per_second,
            ms(self.p50_us),
            ms(self.p99_us),
            ms(self.max_us),
            cpu(self.client_cpu_us),
            cpu(self.server_cpu_us)
        )
    }

    /// The Markdown table header matching [`row`](Self::row).
    pub fn header() -> &'static str {
        "| scenario | messages | msg/s | p50 ms | p99 ms | max ms | client CPU us/msg | server CPU us/msg |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|"
    }
}

/// Which scenarios of an engine bench run, and how many times.
///
/// `COURIER_BENCH_ONLY=courier,alone` runs only the scenarios with those keys (all when unset; each bench lists its
/// keys in its docs). `COURIER_BENCH_ROUNDS=3` runs the throughput scenarios three times, interleaved (raw,
/// contract's work, Courier, transport alone, then again), and the latency rows at a fixed rate three times
/// ([`rate_order`](Self::rate_order)), so that each ratio is taken within a round and the
/// machine's drift between rounds shows instead of hiding in one figure; [`Table`] reports each round and the
/// median. Each round starts one scenario later ([`order`](Self::order)), so that no scenario always runs right
/// after the same other one: on PostgreSQL the scenario after Courier's met its autovacuum, and a checkpoint lands
/// wherever the WAL fills up.
#[derive(Debug, Clone)]
pub struct Plan {
    only: Vec<String>,
    /// Rounds of the throughput scenarios, and of the latency rows at a fixed rate (at least 1).
    pub rounds: usize,
    /// Messages per throughput scenario (`COURIER_BENCH_MESSAGES`, 100,000 by default).
    pub messages: u64,
}

impl Plan {
    /// Reads `COURIER_BENCH_ONLY`, `COURIER_BENCH_ROUNDS` and `COURIER_BENCH_MESSAGES`.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok();
        Self {
            only: var("COURIER_BENCH_ONLY")
                .map(|v| v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default(),
            rounds: var("COURIER_BENCH_ROUNDS").and_then(|v| v.parse().ok()).unwrap_or(1usize).max(1),
            messages: var("COURIER_BENCH_MESSAGES").and_then(|v| v.parse().ok()).unwrap_or(100_000),
        }
    }

    /// Whether the scenario with this key runs.
    pub fn runs(&self, key: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|k| k == key)
    }

    /// The throughput scenarios of round `round` (from 0) that run, in the order they run: those of
    /// [`THROUGHPUT_KEYS`] the plan runs, turned by one place each round.
    ///
    /// ```
    /// let plan = courier_bench::Plan::from_env();
    /// # if std::env::var("COURIER_BENCH_ONLY").is_err() {
    /// assert_eq!(plan.order(0), ["raw", "contract", "courier", "alone"]);
    /// assert_eq!(plan.order(1), ["contract", "courier", "alone", "raw"]);
    /// # }
    /// ```
    pub fn order(&self, round: usize) -> Vec<&'static str> {
        let mut keys = THROUGHPUT_KEYS.to_vec();
        keys.retain(|k| self.runs(k));
        if !keys.is_empty() {
            let turn = round % keys.len();
            keys.rotate_left(turn);
        }
        keys
    }
}

impl Plan {
    /// The latency scenarios at a fixed rate for round `round` (from 0), in the order they run: the plain raw
    /// client's (`raw-rate`), the raw client doing the contract's work (`contract-rate`) and Courier's
    /// (`courier-rate`); none unless the plan runs `rate`. Each round starts one later, and every second cycle of
    /// three rounds runs backwards, so that six rounds run every order once (three rounds cannot balance which
    /// baseline runs before Courier). Each round's p99 ratio is reported and their median, as for throughput: one
    /// p99 of a few seconds moves by a third with a single stall of the machine.
    pub fn rate_order(&self, round: usize) -> Vec<&'static str> {
        if !self.runs("rate") {
            return Vec::new();
        }
        let mut keys = vec!["raw-rate", "contract-rate", "courier-rate"];
        let turn = round % keys.len();
        keys.rotate_left(turn);
        if (round / keys.len()) % 2 == 1 {
            keys.reverse();
        }
        keys
    }
}

/// Which raw client a latency row at a fixed rate runs (see [`latency_rounds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateBaseline {
    /// The raw client moving a plain body.
    Plain,
    /// The raw client doing the work of Courier's contract (metadata, JSON), as in the throughput scenario
    /// `contract`.
    Contract,
}

/// The keys of the throughput scenarios every engine bench runs: the plain raw client, the raw client doing the
/// contract's work, Courier, and Courier's transport alone.
pub const THROUGHPUT_KEYS: [&str; 4] = ["raw", "contract", "courier", "alone"];

/// The rows of an engine bench, each under a scenario key, in the order they ran (several per key when the bench
/// ran several rounds); prints them and the ratios between keys, round by round.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<(&'static str, Figures)>,
}

impl Table {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a row under `key`.
    pub fn add(&mut self, key: &'static str, figures: Figures) {
        self.rows.push((key, figures));
    }

    fn of(&self, key: &str) -> Vec<&Figures> {
        self.rows.iter().filter(|(k, _)| *k == key).map(|(_, f)| f).collect()
    }

    /// Prints the rows as a Markdown table, grouped by key in the order the keys first appeared, each row's
    /// scenario followed by its round when there were several.
    pub fn print(&self) {
        println!("{}", Figures::header());
        let mut keys: Vec<&str> = Vec::new();
        for (key, _) in &self.rows {
            if !keys.contains(key) {
                keys.push(key);
            }
        }
        for key in keys {
            let rows = self.of(key);
            for (round, figures) in rows.iter().enumerate() {
                let mut figures = (*figures).clone();
                if rows.len() > 1 {
                    figures.scenario = format!("{} (round {})", figures.scenario, round + 1);
                }
                println!("{}", figures.row());
            }
        }
    }

    /// The ratio of `numerator`'s throughput to `denominator`'s in each round both ran, and their median;
    /// printed as `label: 0.81, 0.85, 0.79 (median 0.81)`. Nothing when either key did not run.
    pub fn throughput_ratio(&self, label: &str, numerator: &str, denominator: &str) -> Option<f64> {
        let ratios: Vec<f64> = self
            .of(numerator)
            .iter()
            .zip(self.of(denominator))
            .map(|(n, d)| n.per_second / d.per_second.max(1e-9))
            .collect();
        print_ratios(label, &ratios)
    }

    /// The ratio of `numerator`'s p99 latency to `denominator`'s, as [`throughput_ratio`](Self::throughput_ratio).
    pub fn p99_ratio(&self, label: &str, numerator: &str, denominator: &str) -> Option<f64> {
        let ratios: Vec<f64> = self
            .of(numerator)
            .iter()
            .zip(self.of(denominator))
            .filter_map(|(n, d)| Some(n.p99_us? as f64 / d.p99_us?.max(1) as f64))
            .collect();
        print_ratios(label, &ratios)
    }
}

impl Table {
    /// Prints the ratios every engine bench reports, from the scenario keys of [`Plan`]: Courier against the plain
    /// raw client, against the raw client doing the contract's work, against its transport alone, and its p99 at
    /// `rate` msg/s against the plain raw client's and against the raw client's doing the contract's work.
    pub fn print_engine_ratios(&self, rate: u64) {
        self.throughput_ratio("Courier / raw throughput (target >= 0.90)", "courier", "raw");
        self.throughput_ratio("Courier / raw doing the contract's work", "courier", "contract");
        self.throughput_ratio("Courier / its transport alone", "courier", "alone");
        self.p99_ratio(&format!("Courier / raw p99 at {rate} msg/s (target <= 1.5)"), "courier-rate", "raw-rate");
        self.p99_ratio(
            &format!("Courier / raw doing the contract's work, p99 at {rate} msg/s"),
            "courier-rate",
            "contract-rate",
        );
    }
}

/// Runs the latency rows at a fixed rate of an engine bench, one of each a round in [`Plan::rate_order`]:
/// `raw(round, baseline)` for the raw client, plain (key `raw-rate`) and doing the contract's work
/// (`contract-rate`), and [`bus_latency_at_rate`] named `scenario` for Courier (`courier-rate`), at `rate` msg/s
/// for `seconds`; adds their rows to `table`.
#[allow(clippy::too_many_arguments)]
pub async fn latency_rounds<F, Fut>(
    plan: &Plan,
    table: &mut Table,
    engine: &Engine,
    scenario: &str,
    rate: u64,
    seconds: f64,
    payload_size: usize,
    mut raw: F,
) where
    F: FnMut(usize, RateBaseline) -> Fut,
    Fut: std::future::Future<Output = Figures>,
{
    for round in 0..plan.rounds {
        for key in plan.rate_order(round) {
            let figures = match key {
                "raw-rate" => raw(round, RateBaseline::Plain).await,
                "contract-rate" => raw(round, RateBaseline::Contract).await,
                _ => bus_latency_at_rate(scenario, engine, rate, seconds, payload_size)
                    .await
                    .expect("Courier latency at rate"),
            };
            table.add(key, figures);
        }
    }
}

/// Runs one Courier scenario of an engine bench under a [`CpuMeter`] and adds its row to `table`: `courier`
/// ([`bus_throughput`], named `scenario`) or `alone` ([`transport_throughput`], named `alone`), with `messages`,
/// `publishers` in flight and `payload_size`-byte bodies. Any other key is a mistake in the bench and panics.
#[allow(clippy::too_many_arguments)]
pub async fn courier_scenario(
    key: &str,
    table: &mut Table,
    server: Option<&str>,
    engine: &Engine,
    (scenario, alone): (&str, &str),
    messages: u64,
    publishers: usize,
    payload_size: usize,
) {
    match key {
        "courier" => {
            let run = bus_throughput(scenario, engine, messages, publishers, payload_size, |_| {});
            table.add("courier", CpuMeter::measure(server, async { run.await.expect("Courier throughput") }).await);
        }
        "alone" => {
            let run = transport_throughput(alone, engine, messages, publishers, payload_size);
            table.add("alone", CpuMeter::measure(server, async { run.await.expect("transport throughput") }).await);
        }
        other => panic!("no Courier scenario '{other}': the keys are 'courier' and 'alone'"),
    }
}

fn print_ratios(label: &str, ratios: &[f64]) -> Option<f64> {
    let median = median(ratios)?;
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    if ratios.len() > 1 {
        println!("{label}: {} (median {median:.2})", each.join(", "));
    } else {
        println!("{label}: {median:.2}");
    }
    Some(median)
}

/// The median of some values (the mean of the middle two for an even count); `None` when there are none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// A payload of `size` bytes.
pub fn payload(size: usize) -> String {
    "x".repeat(size)
}

struct Sink {
    handled: AtomicU64,
    target: u64,
    done: Notify,
    latency: Latencies,
}

/// Latencies recorded by handlers running on every worker thread: one histogram per thread, merged at the end, so
/// recording does not contend on one lock across threads (the raw baselines record from a single task, lock-free).
struct Latencies {
    shards: Box<[Mutex<Histogram<u64>>]>,
}

impl Latencies {
    fn new() -> Self {
        let shards = std::thread::available_parallelism().map_or(4, |n| n.get() * 2);
        Self { shards: (0..shards).map(|_| Mutex::new(Self::empty())).collect() }
    }

    fn empty() -> Histogram<u64> {
        Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
    }

    fn record(&self, us: u64) {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        thread_local! {
            static SHARD: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
        }
        let shard = SHARD.with(|s| *s as usize) % self.shards.len();
        let _ = self.shards[shard].lock().unwrap_or_else(|p| p.into_inner()).record(us.min(600_000_000));
    }

    fn merged(&self) -> Histogram<u64> {
        let mut all = Self::empty();
        for shard in self.shards.iter() {
            all.add(&*shard.lock().unwrap_or_else(|p| p.into_inner())).expect("histograms with the same bounds");
        }
        all
    }
}

/// Starts a consumer on a fresh queue that records publish-to-handle latency; returns it with its sink.
async fn start_sink(engine: &Engine, target: u64) -> Result<(Bus, Arc<Sink>, String)> {
    let queue = format!("bench-{}", uuid_suffix());
    let sink = Arc::new(Sink { handled: AtomicU64::new(0), target, done: Notify::new(), latency: Latencies::new() });
    let s = sink.clone();
    let bus = Bus::builder(queue.clone())
        .engine_instance(engine.clone())
        .prefetch(1024)
        .concurrency(64)
        .retry(Retry::none())
        .consume(move |_m: BenchMessage, ctx: Context| {
            let s = s.clone();
            async move {
                let us = (chrono_now_micros() - ctx.envelope().time.timestamp_micros()).max(1) as u64;
                s.latency.record(us);
                if s.handled.fetch_add(1, Ordering::Relaxed) + 1 == s.target {
                    s.done.notify_one();
                }
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await?;
    Ok((bus, sink, queue))
}

fn chrono_now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

fn uuid_suffix() -> String {
    format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()))
}

/// Publishes `messages` messages of `payload_size` bytes from `publishers` concurrent tasks and waits until all are
/// handled. `on_progress` is called about every 1% with the number handled so far.
pub async fn bus_throughput(
    scenario: &str,
    engine: &Engine,
    messages: u64,
    publishers: usize,
    payload_size: usize,
    on_progress: impl Fn(u64) + Send + Sync + 'static,
) -> Result<Figures> {
    let (consumer, sink, queue) = start_sink(engine, messages).await?;
    let producer =
        Bus::builder(format!("bench-producer-{}", uuid_suffix())).engine_instance(engine.clone()).start().await?;
    let body = payload(payload_size);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..publishers.max(1) {
        let (producer, next, body) = (producer.clone(), next.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= messages {
                    return Ok::<(), courier_core::Error>(());
                }
                producer.publish(BenchMessage { seq, payload: body.clone() }).await?;
            }
        }));
    }
    let progress = {
        let sink = sink.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                on_progress(sink.handled.load(Ordering::Relaxed));
            }
        })
    };
    for t in tasks {
        t.await.map_err(|e| courier_core::Error::engine(format!("publisher panicked: {e}")))??;
    }
    let notified = sink.done.notified();
    if sink.handled.load(Ordering::Relaxed) < messages {
        notified.await;
    }
    let elapsed = start.elapsed();
    progress.abort();
    consumer.shutdown().await;
    producer.shutdown().await;
    remove_queue(engine, &queue).await;
    let latency = sink.latency.merged();
    Ok(Figures::new(scenario, messages, elapsed, Some(&latency)))
}

/// The same publish-to-handle run as [`bus_throughput`] on the engine's transport alone, with no bus: each message
/// is built as the bus builds it ([`Envelope::for_message`](courier_core::Envelope::for_message), JSON body) and
/// published from `publishers` concurrent tasks; one loop takes batches of up to 1,024, decodes each envelope and
/// body, records the latency and acks, as a raw client's loop does. Next to [`bus_throughput`] it shows what the
/// bus's runtime (handler tasks, middleware, retries, metrics) costs on top of the transport.
pub async fn transport_throughput(
    scenario: &str,
    engine: &Engine,
    messages: u64,
    publishers: usize,
    payload_size: usize,
) -> Result<Figures> {
    use courier_core::{Envelope, SubscriptionOptions};
    let queue = format!("bench-transport-{}", uuid_suffix());
    let transport = engine.transport.clone();
    transport.declare_queue(&queue).await?;
    transport.bind(&queue, BenchMessage::NAME).await?;
    let options = SubscriptionOptions { prefetch: 1024, ..SubscriptionOptions::default() };
    let mut subscription = transport.subscribe(&queue, options).await?;
    let consumer = tokio::spawn(async move {
        let (mut latency, mut handled) = (Latencies::empty(), 0u64);
        while handled < messages {
            for mut delivery in subscription.next_batch(1024).await? {
                let envelope = Envelope::from_raw(delivery.take_message())?;
                std::hint::black_box(envelope.decode::<BenchMessage>()?.seq);
                let us = (chrono_now_micros() - envelope.time.timestamp_micros()).max(1) as u64;
                let _ = latency.record(us.min(600_000_000));
                delivery.ack().await?;
                handled += 1;
            }
        }
        Ok::<_, courier_core::Error>(latency)
    });
    let body = payload(payload_size);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..publishers.max(1) {
        let (transport, next, body) = (transport.clone(), next.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= messages {
                    return Ok::<(), courier_core::Error>(());
                }
                let message = BenchMessage { seq, payload: body.clone() };
                transport.publish(Envelope::for_message("bench-producer", &message)?.into_raw(), None).await?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| courier_core::Error::engine(format!("publisher panicked: {e}")))??;
    }
    let latency = consumer.await.map_err(|e| courier_core::Error::engine(format!("consumer panicked: {e}")))??;
    let elapsed = start.elapsed();
    transport.flush().await?;
    remove_queue(engine, &queue).await;
    Ok(Figures::new(scenario, messages, elapsed, Some(&latency)))
}

/// Offers `rate` messages per second for `seconds`, each publish started on schedule (up to 1,024 in flight), and
/// measures publish-to-handle latency.
pub async fn bus_latency_at_rate(
    scenario: &str,
    engine: &Engine,
    rate: u64,
    seconds: f64,
    payload_size: usize,
) -> Result<Figures> {
    let messages = (rate as f64 * seconds) as u64;
    let (consumer, sink, queue) = start_sink(engine, messages).await?;
    let producer =
        Bus::builder(format!("bench-producer-{}", uuid_suffix())).engine_instance(engine.clone()).start().await?;
    let body = payload(payload_size);
    let in_flight = Arc::new(Semaphore::new(1024));
    let start = Instant::now();
    for seq in 0..messages {
        let due = start + Duration::from_secs_f64(seq as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let permit = in_flight.clone().acquire_owned().await.expect("semaphore open");
        let (producer, payload) = (producer.clone(), body.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = producer.publish(BenchMessage { seq, payload }).await {
                eprintln!("publish failed: {e}");
            }
        });
    }
    let notified = sink.done.notified();
    if sink.handled.load(Ordering::Relaxed) < messages {
        tokio::time::timeout(Duration::from_secs(60), notified)
            .await
            .map_err(|_| courier_core::Error::timeout("messages were not all handled within 60 s"))?;
    }
    let elapsed = start.elapsed();
    consumer.shutdown().await;
    producer.shutdown().await;
    remove_queue(engine, &queue).await;
    let latency = sink.latency.merged();
    Ok(Figures::new(scenario, messages, elapsed, Some(&latency)))
}

/// The baseline: the same rows (queue, id, headers, 256-byte body) inserted `batch` per transaction and then
/// taken and deleted `batch` per transaction with plain SQLite (WAL, synchronous=FULL), no bus, one thread.
pub fn raw_sqlite_baseline(
    path: &std::path::Path,
    messages: u64,
    batch: u64,
    payload_size: usize,
) -> rusqlite::Result<Figures> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS raw_messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL,
           message_id TEXT NOT NULL, headers TEXT NOT NULL, body BLOB NOT NULL, visible_at INTEGER NOT NULL);
         CREATE INDEX IF NOT EXISTS raw_by_queue ON raw_messages (queue, visible_at, seq);",
    )?;
    let body = payload(payload_size);
    let headers = r#"{"id":"0190f5a2-7c1e-7d4b-9a1e-2b3c4d5e6f70","source":"bench","specversion":"1.0","type":"courier.bench.message.v1"}"#;
    let start = Instant::now();
    let mut inserted = 0;
    while inserted < messages {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO raw_messages (queue, message_id, headers, body, visible_at) VALUES ('raw', ?1, ?2, ?3, 0)",
            )?;
            for i in inserted..(inserted + batch).min(messages) {
                stmt.execute((i.to_string(), headers, body.as_bytes()))?;
            }
        }
        tx.commit()?;
        inserted = (inserted + batch).min(messages);
    }
    let mut removed = 0;
    while removed < messages {
        let tx = conn.transaction()?;
        let n = {
            let mut take = tx.prepare_cached(
                "SELECT seq, headers, body FROM raw_messages WHERE queue = 'raw' AND visible_at <= 1 ORDER BY visible_at, seq LIMIT ?1",
            )?;
            let rows: Vec<i64> = take
                .query_map([batch as i64], |r| {
                    let _: String = r.get(1)?;
                    let _: Vec<u8> = r.get(2)?;
                    r.get(0)
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut delete = tx.prepare_cached("DELETE FROM raw_messages WHERE seq = ?1")?;
            for seq in &rows {
                delete.execute([seq])?;
            }
            rows.len() as u64
        };
        tx.commit()?;
        if n == 0 {
            break;
        }
        removed += n;
    }
    Ok(Figures::new("raw SQLite insert+delete, 100/commit (baseline)", messages, start.elapsed(), None))
}

/// CPU time spent during one scenario, per message: by this process (client, bus and handlers) and by the engine's
/// server processes on this machine, found by name (`redis-server`, `nats-server`, `beam.smp`, `postgres`).
///
/// Read from `/proc` (Linux; elsewhere the figures stay empty), in clock ticks of 10 ms, so a scenario should run
/// for a second or more. On a machine where client and server share the cores, CPU per message says more than
/// messages per second: it does not move with what else the machine is doing. A server process that exits during
/// the scenario (a PostgreSQL backend closed by a pool) is not counted.
///
/// ```
/// let meter = courier_bench::CpuMeter::start(Some("no-such-server"));
/// let figures = courier_bench::Figures { messages: 1000, ..Default::default() };
/// let figures = meter.finish(figures);
/// assert!(figures.server_cpu_us.is_none()); // no process has that name
/// assert_eq!(figures.client_cpu_us.is_some(), cfg!(target_os = "linux"));
/// ```
#[derive(Debug)]
pub struct CpuMeter {
    server: Option<String>,
    client_start: Option<u64>,
    server_start: Option<u64>,
}

impl CpuMeter {
    /// Starts measuring; `server` names the engine's server processes (matched against `/proc/<pid>/comm`).
    pub fn start(server: Option<&str>) -> Self {
        let server = server.map(str::to_owned);
        Self { client_start: process_ticks("self"), server_start: server.as_deref().and_then(server_ticks), server }
    }

    /// Runs one scenario under a meter: `figures` with its CPU columns filled in.
    pub async fn measure(server: Option<&str>, scenario: impl std::future::Future<Output = Figures>) -> Figures {
        let meter = Self::start(server);
        let figures = scenario.await;
        meter.finish(figures)
    }

    /// Stops measuring and fills in `figures`' CPU columns, per message of `figures.messages`.
    pub fn finish(self, mut figures: Figures) -> Figures {
        let per_message = |start: Option<u64>, end: Option<u64>| {
            let (start, end) = (start?, end?);
            let micros = end.saturating_sub(start) as f64 * 1_000_000.0 / TICKS_PER_SECOND;
            Some(micros / figures.messages.max(1) as f64)
        };
        figures.client_cpu_us = per_message(self.client_start, process_ticks("self"));
        figures.server_cpu_us = per_message(self.server_start, self.server.as_deref().and_then(server_ticks));
        figures
    }
}

/// `sysconf(_SC_CLK_TCK)` on Linux: 100 on every mainstream architecture.
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU ticks of one process (`self` or a pid), threads that exited included.
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

/// CPU ticks of every process whose command name is `name`.
fn server_ticks(name: &str) -> Option<u64> {
    let mut total = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name();
        let Some(pid) = pid.to_str().filter(|p| p.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end() == name
            && let Some(ticks) = process_ticks(pid)
        {
            total = Some(total.unwrap_or(0) + ticks);
        }
    }
    total
}

/// Resident memory of this process now (Linux), in bytes.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Consumer-side cost alone: `messages` are queued first (through the transport, no consumer running), then a
/// consumer is started and timed until it has handled them all.
pub async fn bus_drain(scenario: &str, engine: &Engine, messages: u64, payload_size: usize) -> Result<Figures> {
    let queue = format!("bench-drain-{}", uuid_suffix());
    let body = payload(payload_size);
    let template = courier_core::Envelope::for_message("bench", &BenchMessage { seq: 0, payload: body })?;
    for seq in 0..messages {
        let mut envelope = template.clone();
        envelope.id = format!("{seq:016x}-{}", template.id);
        engine.transport.send(&queue, envelope.into_raw(), None).await?;
    }
    let handled = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let (h, d) = (handled.clone(), done.clone());
    let start = Instant::now();
    let bus = Bus::builder(queue.clone())
        .engine_instance(engine.clone())
        .prefetch(1024)
        .concurrency(64)
        .retry(Retry::none())
        .consume(move |_m: BenchMessage, _ctx: Context| {
            let (h, d) = (h.clone(), d.clone());
            async move {
                if h.fetch_add(1, Ordering::Relaxed) + 1 == messages {
                    d.notify_one();
                }
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await?;
    let notified = done.notified();
    if handled.load(Ordering::Relaxed) < messages {
        notified.await;
    }
    let elapsed = start.elapsed();
    bus.shutdown().await;
    remove_queue(engine, &queue).await;
    Ok(Figures::new(scenario, messages, elapsed, None))
}

/// Deletes a scenario's queue, and with it its binding to [`BenchMessage`]. A queue left behind stays subscribed (a
/// durable subscriber that is offline), so every later scenario in the process would publish each message to it too,
/// and measure two or three copies a message against a baseline that writes one.
async fn remove_queue(engine: &Engine, queue: &str) {
    if let Err(e) = engine.transport.delete_queue(queue).await {
        eprintln!("could not delete the bench queue '{queue}': {e}; later scenarios may publish to it too");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[0.9, 0.7, 0.8]), Some(0.8));
        assert_eq!(median(&[0.9, 0.7, 0.8, 0.6]), Some(0.75));
    }

    #[test]
    fn each_round_starts_one_scenario_later_and_keeps_only_those_asked_for() {
        let all = Plan { only: Vec::new(), rounds: 5, messages: 1 };
        let orders: Vec<Vec<&str>> = (0..5).map(|r| all.order(r)).collect();
        assert_eq!(orders[0], ["raw", "contract", "courier", "alone"]);
        assert_eq!(orders[1], ["contract", "courier", "alone", "raw"]);
        assert_eq!(orders[3], ["alone", "raw", "contract", "courier"]);
        assert_eq!(orders[4], orders[0]);
        let some = Plan { only: vec!["courier".into(), "contract".into()], rounds: 2, messages: 1 };
        assert_eq!(some.order(0), ["contract", "courier"]);
        assert_eq!(some.order(1), ["courier", "contract"]);
        assert_eq!(some.order(2), ["contract", "courier"]);
        assert!(some.rate_order(0).is_empty());
        assert_eq!(all.rate_order(0), ["raw-rate", "contract-rate", "courier-rate"]);
        assert_eq!(all.rate_order(1), ["contract-rate", "courier-rate", "raw-rate"]);
        assert_eq!(all.rate_order(2), ["courier-rate", "raw-rate", "contract-rate"]);
        assert_eq!(all.rate_order(3), ["courier-rate", "contract-rate", "raw-rate"]);
        let orders: std::collections::HashSet<Vec<&str>> = (0..6).map(|r| all.rate_order(r)).collect();
        assert_eq!(orders.len(), 6, "six rounds run every order once");
    }

    #[test]
    fn ratios_pair_rows_of_the_same_round() {
        let row = |per_second: f64| Figures { per_second, ..Default::default() };
        let mut table = Table::new();
        for (courier, raw) in [(80.0, 100.0), (45.0, 50.0), (70.0, 100.0)] {
            table.add("raw", row(raw));
            table.add("courier", row(courier));
        }
        let median = table.throughput_ratio("Courier / raw", "courier", "raw").unwrap();
        assert!((median - 0.8).abs() < 1e-9, "rounds 0.8, 0.9, 0.7 have the median 0.8, not {median}");
        assert_eq!(table.throughput_ratio("missing", "courier", "contract"), None);
    }
}
