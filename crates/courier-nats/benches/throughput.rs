//! Publish-to-handle through Courier on NATS JetStream, next to a raw `async-nats` client doing the same work
//! (acknowledged JetStream publish, pull consume, explicit ack) in the same run, and the raw client doing the work
//! Courier's contract asks of any client (each message carries its metadata, id, type, source, time and trace
//! context, as headers, and a JSON body; the consumer reads both).
//!
//! Run: `cargo bench -p courier-nats --bench throughput` (needs nats-server with `-js` on 127.0.0.1:4222 or
//! `COURIER_TEST_NATS_URL`; about a minute). `COURIER_BENCH_MESSAGES` sets the throughput run's size (100,000),
//! `COURIER_BENCH_ROUNDS` the rounds, `COURIER_BENCH_ONLY` the scenarios (see [`courier_bench::Plan`]): `raw`,
//! `contract`, `courier`, `alone`, `rate`.
//! Prints a Markdown table and the Courier/raw ratios. Works in a namespace of its own, deleted at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use courier_bench::{
    BenchMessage, CpuMeter, Figures, Plan, RateBaseline, Table, bus_throughput, courier_scenario, latency_rounds,
    payload,
};

const SERVER: Option<&str> = Some("nats-server");
use courier_nats::{NatsOptions, NatsTransport, async_nats};
use courier_testkit::services::NATS;
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

/// Courier allocates small objects on one thread and frees them on another (a message is built by a publisher
/// and dropped by a consumer task): glibc's allocator serialises that on its arena locks, which measured about
/// half of the client's CPU time per message on 2 cores. mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PAYLOAD: usize = 256;
const IN_FLIGHT: usize = 256;
const RATE: u64 = 5_000;
const RATE_SECONDS: f64 = 4.0;

fn now_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// What the raw client puts in each message.
#[derive(Clone, Copy, PartialEq)]
enum Work {
    /// A 256-byte body starting with the send time.
    Plain,
    /// Courier's contract: the metadata as headers (what Courier sends: id, type, source, time, traceparent) and a
    /// JSON body of 256 bytes of payload; the consumer reads the headers, parses the time and decodes the body.
    Contract,
}

/// Courier's metadata as NATS headers, the way a hand-written client would send them.
fn contract_headers(seq: u64) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("id", uuid::Uuid::now_v7().to_string().as_str());
    headers.insert("type", "courier.bench.message.v1");
    headers.insert("source", "bench-producer");
    headers.insert("time", chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true).as_str());
    headers.insert("traceparent", format!("00-{}-{:016x}-01", uuid::Uuid::new_v4().simple(), seq + 1).as_str());
    headers
}

/// The send time of a message, read as its `work` writes it.
fn sent_micros(work: Work, m: &jetstream::Message) -> u64 {
    match work {
        Work::Plain => std::str::from_utf8(&m.payload[..20]).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0),
        Work::Contract => {
            let headers = m.headers.as_ref().expect("headers");
            for name in ["id", "type", "source", "traceparent"] {
                std::hint::black_box(headers.get(name).map(|v| v.as_str().len()));
            }
            let message: BenchMessage = serde_json::from_slice(&m.payload).expect("a JSON body");
            std::hint::black_box(message.seq);
            headers
                .get("time")
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t.as_str()).ok())
                .map_or(0, |t| t.timestamp_micros() as u64)
        }
    }
}

/// The raw baseline: `messages` 256-byte messages published with `in_flight` acknowledged publishes outstanding
/// (or at `rate` per second), consumed from a durable pull consumer with explicit acks; publish-to-handle latency
/// from the send time each message carries.
async fn raw(
    scenario: &str,
    client: async_nats::Client,
    stream_name: &str,
    messages: u64,
    rate: Option<u64>,
    work: Work,
) -> Figures {
    let js = jetstream::new(client);
    let subject = format!("{stream_name}.raw");
    let stream = js
        .get_or_create_stream(stream::Config {
            name: stream_name.to_owned(),
            subjects: vec![format!("{stream_name}.>")],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .expect("raw stream");
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await
        .expect("raw consumer");
    let handled = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap()));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let consuming = {
        let (handled, latency) = (handled.clone(), latency.clone());
        let mut messages_stream = consumer.stream().max_messages_per_batch(1024).messages().await.expect("messages");
        tokio::spawn(async move {
            let mut done_tx = Some(done_tx);
            while let Some(Ok(m)) = messages_stream.next().await {
                let sent = sent_micros(work, &m);
                let _ = latency.lock().unwrap().record((now_micros().saturating_sub(sent)).clamp(1, 600_000_000));
                let _ = m.ack().await;
                if handled.fetch_add(1, Ordering::Relaxed) + 1 == messages
                    && let Some(tx) = done_tx.take()
                {
                    let _ = tx.send(());
                }
            }
        })
    };
    let filler = payload(PAYLOAD - 20);
    let in_flight = Arc::new(Semaphore::new(if rate.is_some() { 1024 } else { IN_FLIGHT }));
    let start = Instant::now();
    for seq in 0..messages {
        if let Some(rate) = rate {
            tokio::time::sleep_until((start + Duration::from_secs_f64(seq as f64 / rate as f64)).into()).await;
        }
        let permit = in_flight.clone().acquire_owned().await.unwrap();
        let ack = match work {
            Work::Plain => js.publish(subject.clone(), format!("{:>20}{filler}", now_micros()).into()).await,
            Work::Contract => {
                let body = serde_json::to_vec(&BenchMessage { seq, payload: payload(PAYLOAD) }).expect("JSON body");
                js.publish_with_headers(subject.clone(), contract_headers(seq), body.into()).await
            }
        }
        .expect("publish");
        tokio::spawn(async move {
            let _permit = permit;
            ack.await.expect("pub ack");
        });
    }
    tokio::time::timeout(Duration::from_secs(120), done_rx).await.expect("raw run finished").ok();
    let elapsed = start.elapsed();
    consuming.abort();
    let _ = js.delete_stream(stream_name).await;
    let h = latency.lock().unwrap().clone();
    Figures {
        scenario: scenario.to_owned(),
        messages,
        seconds: elapsed.as_secs_f64(),
        per_second: messages as f64 / elapsed.as_secs_f64(),
        p50_us: Some(h.value_at_quantile(0.5)),
        p99_us: Some(h.value_at_quantile(0.99)),
        max_us: Some(h.max()),
        ..Default::default()
    }
}

fn main() {
    if !NATS.require() {
        return;
    }
    let plan = Plan::from_env();
    let messages = plan.messages;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let namespace = format!("courier_bench_{id}");
        let (servers, options) = NatsOptions::from_url(&NATS.url()).expect("NATS URL");
        let transport =
            NatsTransport::connect(&servers, options.namespace(namespace.clone())).await.expect("connect to NATS");
        let engine = transport.clone().into_engine();
        let client = transport.client().clone();

        // Warm-up, not reported.
        let _ = raw("warm-up", client.clone(), &format!("courier_bench_raw_w{id}"), 10_000, None, Work::Plain).await;
        let _ = bus_throughput("warm-up", &engine, 10_000, IN_FLIGHT, PAYLOAD, |_| {}).await;

        let mut table = Table::new();
        let names = ("Courier on NATS, 256 in flight", "Courier's NATS transport alone, no bus");
        for round in 0..plan.rounds {
            let stream = |name: &str| format!("courier_bench_{name}{round}_{id}");
            for key in plan.order(round) {
                match key {
                    "raw" => {
                        let name = stream("raw");
                        let run =
                            raw("raw async-nats, 256 in flight", client.clone(), &name, messages, None, Work::Plain);
                        table.add("raw", CpuMeter::measure(SERVER, run).await);
                    }
                    "contract" => {
                        let scenario = "raw async-nats, 256 in flight, the contract's work (metadata headers, JSON)";
                        let name = stream("rawc");
                        let run = raw(scenario, client.clone(), &name, messages, None, Work::Contract);
                        table.add("contract", CpuMeter::measure(SERVER, run).await);
                    }
                    key => {
                        courier_scenario(key, &mut table, SERVER, &engine, names, messages, IN_FLIGHT, PAYLOAD).await
                    }
                }
            }
        }
        let rate_messages = (RATE as f64 * RATE_SECONDS) as u64;
        let (raw_scenario, scenario) =
            (format!("raw async-nats at {RATE} msg/s"), format!("Courier on NATS at {RATE} msg/s"));
        let contract_scenario = format!("raw async-nats at {RATE} msg/s, the contract's work");
        latency_rounds(&plan, &mut table, &engine, &scenario, RATE, RATE_SECONDS, PAYLOAD, |round, baseline| {
            let (scenario, work, name) = match baseline {
                RateBaseline::Plain => (&raw_scenario, Work::Plain, format!("courier_bench_rawr{round}_{id}")),
                RateBaseline::Contract => {
                    (&contract_scenario, Work::Contract, format!("courier_bench_rawcr{round}_{id}"))
                }
            };
            let client = client.clone();
            async move { raw(scenario, client, &name, rate_messages, Some(RATE), work).await }
        })
        .await;

        println!();
        table.print();
        println!();
        table.print_engine_ratios(RATE);
        if let Err(e) = transport.delete_namespace().await {
            eprintln!("could not delete the bench namespace '{namespace}': {e}");
        }
    });
}
