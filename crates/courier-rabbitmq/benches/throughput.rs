//! Publish-to-handle throughput and latency on RabbitMQ: Courier next to raw lapin doing the same work in the
//! same run (256-byte messages, persistent, publisher confirms, manual acks, 256 publishes in flight, prefetch
//! 1024), then p99 latency at 5,000 msg/s for both; and raw lapin doing the work Courier's contract asks of any
//! client (each message carries its metadata, id, type, source, time and trace context, as AMQP properties and
//! headers, and a JSON body; the consumer reads both).
//!
//! Run: `cargo bench -p courier-rabbitmq --bench throughput` (needs the broker at `COURIER_TEST_AMQP_URL`).
//! `COURIER_BENCH_MESSAGES` sets the count (default 100,000), `COURIER_BENCH_ROUNDS` the rounds of the throughput
//! scenarios, `COURIER_BENCH_ONLY` the scenarios (see [`courier_bench::Plan`]): `raw`, `contract`, `courier`,
//! `alone`, `rate`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use courier_bench::{BenchMessage, CpuMeter, Figures, Plan, RateBaseline, Table, courier_scenario, latency_rounds};

const SERVER: Option<&str> = Some("beam.smp");
use courier_rabbitmq::{RabbitMqOptions, RabbitMqTransport};
use courier_testkit::services::RABBITMQ;
use futures::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::{Notify, Semaphore};

/// Courier allocates small objects on one thread and frees them on another (a message is built by a publisher
/// and dropped by a consumer task): glibc's allocator serialises that on its arena locks, which measured about
/// half of the client's CPU time per message on 2 cores. mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PAYLOAD: usize = 256;
const IN_FLIGHT: usize = 256;
const RATE: u64 = 5_000;
const RATE_SECONDS: f64 = 5.0;

fn micros_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// What the raw client puts in each message.
#[derive(Clone, Copy, PartialEq)]
enum Work {
    /// 256 bytes, the send time in the first 8.
    Plain,
    /// Courier's contract: id, type, source as the properties `message_id`, `type`, `app_id`; time and trace
    /// context as headers; a JSON body of 256 bytes of payload. The consumer reads them all.
    Contract,
}

fn contract_message(seq: u64) -> (Vec<u8>, BasicProperties) {
    let text = |s: String| AMQPValue::LongString(LongString::from(s.into_bytes()));
    let mut headers = FieldTable::default();
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    headers.insert("time".into(), text(time));
    headers.insert("traceparent".into(), text(format!("00-{}-{:016x}-01", uuid::Uuid::new_v4().simple(), seq + 1)));
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(uuid::Uuid::now_v7().to_string().into())
        .with_type("courier.bench.message.v1".into())
        .with_app_id("bench-producer".into())
        .with_content_type("application/json".into())
        .with_headers(headers);
    let body = serde_json::to_vec(&BenchMessage { seq, payload: "x".repeat(PAYLOAD) }).expect("a JSON body");
    (body, props)
}

/// The send time of a delivery, read as `work` writes it (for the contract, reading every attribute and the body).
fn sent_micros(work: Work, d: &lapin::message::Delivery) -> u64 {
    match work {
        Work::Plain => u64::from_le_bytes(d.data[..8].try_into().unwrap_or([0; 8])),
        Work::Contract => {
            let p = &d.properties;
            std::hint::black_box((p.message_id().is_some(), p.kind().is_some(), p.app_id().is_some()));
            let message: BenchMessage = serde_json::from_slice(&d.data).expect("a JSON body");
            std::hint::black_box(message.seq);
            let header = |name: &str| match p.headers().as_ref().and_then(|h| h.inner().get(name)) {
                Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                _ => String::new(),
            };
            std::hint::black_box(header("traceparent"));
            chrono::DateTime::parse_from_rfc3339(&header("time")).map_or(0, |t| t.timestamp_micros() as u64)
        }
    }
}

/// Raw lapin: one durable queue, a confirm channel publishing persistent messages, a consumer with prefetch 1024
/// acking each message. `rate`: offer this many per second instead of keeping `IN_FLIGHT` publishes in flight.
async fn raw(url: &str, scenario: &str, messages: u64, rate: Option<u64>, work: Work) -> Figures {
    let connection = Connection::connect(url, ConnectionProperties::default()).await.expect("connect");
    let queue = format!("bench-raw-{}", uuid::Uuid::new_v4().simple());
    let publisher = connection.create_channel().await.expect("channel");
    publisher.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    publisher
        .queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), FieldTable::default())
        .await
        .expect("declare");
    let consuming = connection.create_channel().await.expect("channel");
    consuming.basic_qos(1024, BasicQosOptions::default()).await.expect("qos");
    let mut consumer = consuming
        .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    let handled = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let latency = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap()));
    let consumer_task = {
        let (handled, done, latency) = (handled.clone(), done.clone(), latency.clone());
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let sent = sent_micros(work, &d);
                let _ = latency.lock().unwrap().record(micros_now().saturating_sub(sent).clamp(1, 600_000_000));
                d.ack(BasicAckOptions::default()).await.expect("ack");
                if handled.fetch_add(1, Ordering::Relaxed) + 1 == messages {
                    done.notify_one();
                }
            }
        })
    };
    let publish = |publisher: lapin::Channel, queue: String, seq: u64| async move {
        let (body, props) = match work {
            Work::Plain => {
                let mut body = vec![b'x'; PAYLOAD];
                body[..8].copy_from_slice(&micros_now().to_le_bytes());
                (body, BasicProperties::default().with_delivery_mode(2))
            }
            Work::Contract => contract_message(seq),
        };
        let confirm = publisher
            .basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), &body, props)
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack());
    };
    let start = Instant::now();
    match rate {
        None => {
            futures::stream::iter(0..messages)
                .for_each_concurrent(IN_FLIGHT, |seq| publish(publisher.clone(), queue.clone(), seq))
                .await;
        }
        Some(rate) => {
            let in_flight = Arc::new(Semaphore::new(1024));
            for seq in 0..messages {
                tokio::time::sleep_until((start + Duration::from_secs_f64(seq as f64 / rate as f64)).into()).await;
                let permit = in_flight.clone().acquire_owned().await.expect("open");
                let task = publish(publisher.clone(), queue.clone(), seq);
                tokio::spawn(async move {
                    task.await;
                    drop(permit);
                });
            }
        }
    }
    let notified = done.notified();
    if handled.load(Ordering::Relaxed) < messages {
        notified.await;
    }
    let seconds = start.elapsed().as_secs_f64();
    consumer_task.abort();
    let _ = publisher.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    let _ = connection.close(200, "OK".into()).await;
    let h = latency.lock().unwrap().clone();
    Figures {
        scenario: scenario.to_owned(),
        messages,
        seconds,
        per_second: messages as f64 / seconds,
        p50_us: Some(h.value_at_quantile(0.5)),
        p99_us: Some(h.value_at_quantile(0.99)),
        max_us: Some(h.max()),
        ..Default::default()
    }
}

fn main() {
    if !RABBITMQ.require() {
        return;
    }
    let plan = Plan::from_env();
    let messages = plan.messages;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let url = RABBITMQ.url();
        let mut options = RabbitMqOptions::from_url(&url).expect("valid URL");
        options.namespace = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let transport = RabbitMqTransport::connect(options).await.expect("connect");
        let engine = transport.clone().into_engine();
        let raw_url = transport.options().url.clone();

        let mut table = Table::new();
        let names = ("Courier bus, 256 publishers", "Courier's RabbitMQ transport alone, no bus");
        for round in 0..plan.rounds {
            for key in plan.order(round) {
                match key {
                    "raw" => {
                        let run = raw(&raw_url, "raw lapin, 256 in flight (baseline)", messages, None, Work::Plain);
                        table.add("raw", CpuMeter::measure(SERVER, run).await);
                    }
                    "contract" => {
                        let scenario = "raw lapin, 256 in flight, the contract's work (metadata, JSON)";
                        let run = raw(&raw_url, scenario, messages, None, Work::Contract);
                        table.add("contract", CpuMeter::measure(SERVER, run).await);
                    }
                    key => {
                        courier_scenario(key, &mut table, SERVER, &engine, names, messages, IN_FLIGHT, PAYLOAD).await
                    }
                }
            }
        }
        let rate_messages = (RATE as f64 * RATE_SECONDS) as u64;
        let scenario = "Courier bus at 5,000 msg/s";
        let contract = "raw lapin at 5,000 msg/s, the contract's work";
        latency_rounds(&plan, &mut table, &engine, scenario, RATE, RATE_SECONDS, PAYLOAD, |_, baseline| {
            let (name, work) = match baseline {
                RateBaseline::Plain => ("raw lapin at 5,000 msg/s (baseline)", Work::Plain),
                RateBaseline::Contract => (contract, Work::Contract),
            };
            let raw_url = &raw_url;
            async move { raw(raw_url, name, rate_messages, Some(RATE), work).await }
        })
        .await;

        println!("\nRabbitMQ, {PAYLOAD}-byte persistent messages, publisher confirms, manual acks\n");
        table.print();
        println!();
        table.print_engine_ratios(RATE);
        transport.delete_namespace().await.expect("delete the bench namespace");
        transport.close().await;
    });
}
