//! The cost of the resilience pipeline on real HTTP calls, side by side in one run, on loopback against a tiny
//! axum echo server in the same process:
//!
//! - `reqwest`: the raw reqwest client (the floor);
//! - `bare`: [`HttpClient`] with no layers;
//! - `full`: [`HttpClient`] with every layer: deadline, budgeted retry, circuit breaker, attempt timeout,
//!   bulkhead, rate limit;
//! - `full+hedge`: the same plus hedging at the observed p99 (a timer per call).
//!
//! Three measures per client, rounds interleaved so machine noise hits all alike: requests/s with 16 callers in a
//! closed loop, the process's CPU time per request in that phase, and p50/p99 latency of one caller at a time.
//! Run it with `cargo bench -p courier-http --bench pipeline`; `COURIER_BENCH_SECS` (default 2) sets each phase's
//! length, `COURIER_BENCH_ROUNDS` (default 3) the rounds and `COURIER_BENCH_CALLERS` (default 16) the concurrent
//! callers; `COURIER_BENCH_ONLY=full` (a comma-separated list of client names) runs only those clients, for
//! profiling; the one-layer clients `deadline`, `retry`, `breaker`, `attempt`, `bulkhead` and `ratelimit` run
//! only when named there.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use courier_http::client::{
    BulkheadConfig, CircuitBreakerConfig, HedgeDelay, HttpClient, RateLimitConfig, RetryPolicy,
};
use hdrhistogram::Histogram;

/// A request is built on one worker thread and its buffers are often freed on the other: glibc's allocator
/// serialises that on its arena locks, which measured about a third of the CPU time per request here. mimalloc
/// does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Concurrent callers in the throughput phase (`COURIER_BENCH_CALLERS`, default 16).
fn concurrent_callers() -> usize {
    std::env::var("COURIER_BENCH_CALLERS").ok().and_then(|v| v.parse().ok()).filter(|v| *v > 0).unwrap_or(16)
}

#[derive(Clone)]
enum Caller {
    Reqwest(reqwest::Client, String),
    Courier(HttpClient),
}

impl Caller {
    async fn call(&self) {
        match self {
            Caller::Reqwest(client, url) => {
                let response = client.get(url).send().await.expect("the echo server answers");
                assert!(response.status().is_success());
                response.bytes().await.expect("a body");
            }
            Caller::Courier(client) => {
                let response = client.get("/ping").send().await.expect("the echo server answers");
                assert_eq!(response.status(), 200);
            }
        }
    }
}

/// A client with every layer: deadline, budgeted retry, circuit breaker, attempt timeout, bulkhead and rate
/// limit; with `hedge`, also hedging at the observed p99.
fn protected(url: &str, hedge: bool) -> HttpClient {
    let mut builder = HttpClient::builder(url)
        .name(if hedge { "full+hedge" } else { "full" })
        .deadline(Duration::from_secs(2))
        .retry(RetryPolicy::budgeted())
        .circuit_breaker(CircuitBreakerConfig::failure_rate(0.5))
        .attempt_timeout(Duration::from_secs(1))
        .bulkhead(BulkheadConfig::new(1024))
        .rate_limit(RateLimitConfig::per_second(1e9));
    if hedge {
        builder = builder.hedge(HedgeDelay::percentile(0.99, Duration::from_millis(50)));
    }
    builder.build().expect("a client with every layer")
}

fn seconds_from_env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).filter(|v| *v > 0).unwrap_or(default)
}

/// CPU time this process's threads have run so far, in nanoseconds, from `/proc/self/task/*/schedstat` (the
/// scheduler's own clock: time stolen by the hypervisor or spent by other processes is not in it); `None` where
/// there is no such file.
fn process_cpu_ns() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        // A thread that ended since the directory was read is skipped.
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else { continue };
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// One throughput phase: requests per second, and CPU time (client and server, both in this process) per request.
struct Phase {
    rate: f64,
    cpu_us: Option<f64>,
}

/// Requests per second with `concurrent_callers()` callers for `length`.
async fn throughput(caller: &Caller, length: Duration) -> Phase {
    let stop = Arc::new(AtomicBool::new(false));
    let cpu_before = process_cpu_ns();
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrent_callers())
        .map(|_| {
            let (caller, stop) = (caller.clone(), stop.clone());
            tokio::spawn(async move {
                let mut done = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    caller.call().await;
                    done += 1;
                }
                done
            })
        })
        .collect();
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for worker in workers {
        total += worker.await.expect("a caller finished");
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let cpu_us = cpu_before.zip(process_cpu_ns()).map(|(before, after)| (after - before) as f64 / 1e3 / total as f64);
    Phase { rate, cpu_us }
}

/// One caller at a time for `length`: the latency of each call, in microseconds. The caller runs as a task on the
/// runtime's workers, like the callers of the throughput phase: on the `block_on` thread every wake-up would be a
/// cross-thread unpark, which measured about 70 us of a 100 us call.
async fn latency(caller: &Caller, length: Duration, into: &mut Histogram<u64>) {
    let caller = caller.clone();
    let measured = tokio::spawn(async move {
        let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("a histogram");
        let until = Instant::now() + length;
        while Instant::now() < until {
            let started = Instant::now();
            caller.call().await;
            latencies.record(started.elapsed().as_micros() as u64).expect("latency within the histogram's range");
        }
        latencies
    });
    into.add(measured.await.expect("the caller finished")).expect("histograms with the same bounds");
}

struct Results {
    name: &'static str,
    rates: Vec<f64>,
    /// CPU microseconds per request, per round.
    cpu: Vec<f64>,
    latency: Histogram<u64>,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn main() {
    let length = Duration::from_secs(seconds_from_env("COURIER_BENCH_SECS", 2));
    let rounds = seconds_from_env("COURIER_BENCH_ROUNDS", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("the bound address"));
        let echo = Router::new()
            .route("/ping", get(|| async { r#"{"ok":true}"# }))
            .route("/echo", post(|body: axum::body::Bytes| async move { body }));
        tokio::spawn(async move { axum::serve(listener, echo).await });

        let bare = HttpClient::builder(&url).name("bare").build().expect("a bare client");
        let full = protected(&url, false);
        let hedged = protected(&url, true);
        let raw = reqwest::Client::builder().build().expect("a reqwest client");
        let only = std::env::var("COURIER_BENCH_ONLY").unwrap_or_default();
        let one = |name: &'static str| HttpClient::builder(&url).name(name);
        let single = |client: Result<HttpClient, _>| Caller::Courier(client.expect("a client with one layer"));
        // (name, client, run by default): the one-layer clients run only when COURIER_BENCH_ONLY names them.
        let callers: Vec<(&'static str, Caller)> = [
            ("reqwest", Caller::Reqwest(raw, format!("{url}/ping")), true),
            ("bare", Caller::Courier(bare), true),
            ("full", Caller::Courier(full), true),
            ("full+hedge", Caller::Courier(hedged), true),
            ("deadline", single(one("deadline").deadline(Duration::from_secs(2)).build()), false),
            ("retry", single(one("retry").retry(RetryPolicy::budgeted()).build()), false),
            ("breaker", single(one("breaker").circuit_breaker(CircuitBreakerConfig::failure_rate(0.5)).build()), false),
            ("attempt", single(one("attempt").attempt_timeout(Duration::from_secs(1)).build()), false),
            ("bulkhead", single(one("bulkhead").bulkhead(BulkheadConfig::new(1024)).build()), false),
            ("ratelimit", single(one("ratelimit").rate_limit(RateLimitConfig::per_second(1e9)).build()), false),
            (
                "timeouts",
                single(
                    one("timeouts").deadline(Duration::from_secs(2)).attempt_timeout(Duration::from_secs(1)).build(),
                ),
                false,
            ),
            (
                "no-retry",
                single(
                    one("no-retry")
                        .deadline(Duration::from_secs(2))
                        .circuit_breaker(CircuitBreakerConfig::failure_rate(0.5))
                        .attempt_timeout(Duration::from_secs(1))
                        .bulkhead(BulkheadConfig::new(1024))
                        .rate_limit(RateLimitConfig::per_second(1e9))
                        .build(),
                ),
                false,
            ),
            (
                "no-timeouts",
                single(
                    one("no-timeouts")
                        .retry(RetryPolicy::budgeted())
                        .circuit_breaker(CircuitBreakerConfig::failure_rate(0.5))
                        .bulkhead(BulkheadConfig::new(1024))
                        .rate_limit(RateLimitConfig::per_second(1e9))
                        .build(),
                ),
                false,
            ),
        ]
        .into_iter()
        .filter(
            |(name, _, default)| {
                if only.is_empty() { *default } else { only.split(',').any(|o| o.trim() == *name) }
            },
        )
        .map(|(name, caller, _)| (name, caller))
        .collect();
        let mut results: Vec<Results> = callers
            .iter()
            .map(|(name, _)| Results {
                name,
                rates: Vec::new(),
                cpu: Vec::new(),
                latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("a histogram"),
            })
            .collect();
        // Warm up connections and the hedge's latency estimate.
        for (_, caller) in &callers {
            throughput(caller, Duration::from_millis(300)).await;
        }
        for round in 1..=rounds {
            for ((name, caller), result) in callers.iter().zip(&mut results) {
                eprintln!(
                    "round {round}/{rounds}: {name}: {} callers for {length:?}, then one caller",
                    concurrent_callers()
                );
                let phase = throughput(caller, length).await;
                result.rates.push(phase.rate);
                result.cpu.extend(phase.cpu_us);
                latency(caller, length, &mut result.latency).await;
            }
        }

        println!();
        println!(
            "| client | requests/s ({} callers, median of {rounds}) | CPU per request | p50 | p99 (one caller) |",
            concurrent_callers()
        );
        println!("|---|---:|---:|---:|---:|");
        for r in &results {
            let cpu = if r.cpu.is_empty() { "-".to_owned() } else { format!("{:.1} us", median(&r.cpu)) };
            println!(
                "| {} | {:.0} | {cpu} | {} us | {} us |",
                r.name,
                median(&r.rates),
                r.latency.value_at_quantile(0.5),
                r.latency.value_at_quantile(0.99)
            );
        }
        let Some(bare) = results.iter().find(|r| r.name == "bare") else { return };
        println!();
        for other in results.iter().filter(|r| r.name != "bare" && r.name != "reqwest") {
            // Each round measures the clients one right after the other, so the ratio within a round is what the
            // machine's drift disturbs least: the loss is the median of the rounds' ratios.
            let ratios: Vec<f64> = other.rates.iter().zip(&bare.rates).map(|(o, b)| o / b).collect();
            let loss = 100.0 * (1.0 - median(&ratios));
            // On a saturated machine throughput is the cores over the CPU time per request: the same loss seen
            // from the scheduler's clock, which leaves out what the hypervisor and other processes took.
            let cpu_ratios: Vec<f64> = other.cpu.iter().zip(&bare.cpu).map(|(o, b)| b / o).collect();
            let cpu_loss = if cpu_ratios.is_empty() {
                String::new()
            } else {
                format!(", {:.1}% capacity loss (from CPU per request)", 100.0 * (1.0 - median(&cpu_ratios)))
            };
            let added_p50 = other.latency.value_at_quantile(0.5) as i64 - bare.latency.value_at_quantile(0.5) as i64;
            let added_p99 = other.latency.value_at_quantile(0.99) as i64 - bare.latency.value_at_quantile(0.99) as i64;
            let name = if other.name == "full" { "full pipeline" } else { other.name };
            println!(
                "{name} vs no layers: {loss:.1}% throughput loss (median of the rounds' ratios){cpu_loss}, {added_p50} \
                 us added p50, {added_p99} us added p99"
            );
        }
    });
}
