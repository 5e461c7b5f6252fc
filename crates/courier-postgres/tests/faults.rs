//! Faults: the transport's connections killed under load (`pg_terminate_backend`), and a consumer process killed
//! with SIGKILL in the middle of a handler. Each test uses a schema of its own and drops it at the end; skipped
//! with one line when PostgreSQL is unreachable (failed when `CI=true`).
//!
//! The killed consumer is this test binary re-run with `--ignored --exact <child test>` and an environment
//! variable saying what to do; run on their own those child tests do nothing.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_bus::{Bus, Context, HandlerError};
use courier_core::{Json, Message};
use courier_testkit::services::POSTGRES;
use serde::{Deserialize, Serialize};

use common::{SchemaGuard, eventually, execute, transport, unique};

#[derive(Debug, Serialize, Deserialize)]
struct Numbered {
    n: u64,
}

impl Message for Numbered {
    const NAME: &'static str = "faults.numbered.v1";
    type Codec = Json;
}

const CHILD_ENV: &str = "COURIER_PG_FAULTS_CHILD";

/// Terminates every backend of `app`; returns how many.
async fn kill_connections(app: &str) -> u64 {
    let statement = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{app}' AND pid <> \
         pg_backend_pid()"
    );
    execute(&statement).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_publish_is_consumed_when_connections_are_killed_under_load() {
    if !POSTGRES.require() {
        return;
    }
    let schema = unique("courier_test");
    let _guard = SchemaGuard(schema.clone());
    let app = unique("courier_faults");
    let engine = transport(&schema, &app).await.into_engine();
    let queue = unique("faults");

    let handled = Arc::new(Mutex::new(HashSet::new()));
    let consumer = {
        let handled = handled.clone();
        Bus::builder(queue.clone())
            .engine_instance(engine.clone())
            .visibility_timeout(Duration::from_secs(2))
            .consume(move |m: Numbered, _ctx: Context| {
                handled.lock().unwrap().insert(m.n);
                std::future::ready(Ok::<(), HandlerError>(()))
            })
            .start()
            .await
            .expect("start the consumer")
    };
    let producer =
        Bus::builder(unique("faults_producer")).engine_instance(engine.clone()).start().await.expect("producer");

    // Publishers run until told to stop; a publish that fails is retried (it may then arrive twice, never zero
    // times); a publish that returned Ok is recorded as acknowledged.
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let (next, stop, failures) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let mut publishers = Vec::new();
    for _ in 0..8 {
        let (producer, queue, acknowledged) = (producer.clone(), queue.clone(), acknowledged.clone());
        let (next, stop, failures) = (next.clone(), stop.clone(), failures.clone());
        publishers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                for _ in 0..100 {
                    match producer.send(&queue, Numbered { n }).await {
                        Ok(()) => {
                            acknowledged.lock().unwrap().push(n);
                            break;
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        }));
    }

    let mut killed = 0;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        killed += kill_connections(&app).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.await.expect("publisher task");
    }
    let acknowledged: Vec<u64> = acknowledged.lock().unwrap().clone();
    assert!(killed > 0, "the test killed no connection: is application_name '{app}' set on the transport's?");
    assert!(acknowledged.len() > 100, "too few publishes succeeded: {}", acknowledged.len());

    let all_handled = eventually(Duration::from_secs(30), || {
        let handled = handled.lock().unwrap();
        acknowledged.iter().all(|n| handled.contains(n))
    })
    .await;
    let missing: Vec<u64> = {
        let handled = handled.lock().unwrap();
        acknowledged.iter().filter(|n| !handled.contains(n)).copied().collect()
    };
    assert!(
        all_handled,
        "{} of {} acknowledged publishes were never consumed after {killed} connections were killed; first: {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(10)]
    );

    // No consumer stays dead: messages sent after the kills are consumed too.
    let after: Vec<u64> = (1_000_000..1_000_100).collect();
    for n in &after {
        producer.send(&queue, Numbered { n: *n }).await.expect("send after the kills");
    }
    let consumed_after = eventually(Duration::from_secs(10), || {
        let handled = handled.lock().unwrap();
        after.iter().all(|n| handled.contains(n))
    })
    .await;
    assert!(consumed_after, "messages sent after the connection kills were not consumed: the consumer died");
    eprintln!(
        "killed {killed} connections; {} publishes acknowledged, {} failed attempts retried",
        acknowledged.len(),
        failures.load(Ordering::Relaxed)
    );
    consumer.shutdown().await;
    producer.shutdown().await;
}

const VISIBILITY: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_handler_has_its_message_redelivered_after_the_visibility_timeout() {
    if !POSTGRES.require() {
        return;
    }
    let schema = unique("courier_test");
    let _guard = SchemaGuard(schema.clone());
    let engine = transport(&schema, "courier_faults_parent").await.into_engine();
    let queue = unique("killed");
    engine.transport.declare_queue(&queue).await.expect("declare");
    let sender = Bus::builder(unique("killed_sender")).engine_instance(engine.clone()).start().await.expect("sender");
    sender.send(&queue, Numbered { n: 7 }).await.expect("send");

    let exe = std::env::current_exe().expect("current test binary");
    let mut child = Command::new(exe)
        .args(["--ignored", "--exact", "child_consumer_that_hangs", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, format!("{schema}|{queue}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child consumer");
    let stdout = child.stdout.take().expect("piped stdout");
    let reading = tokio::task::spawn_blocking(move || {
        // libtest prints "test <name> ... " without a newline before the handler's line.
        BufReader::new(stdout).lines().map_while(Result::ok).any(|line| line.contains("started 7"))
    });
    let started = match tokio::time::timeout(Duration::from_secs(60), reading).await {
        Ok(Ok(true)) => Instant::now(),
        _ => {
            let _ = child.kill();
            panic!("the child consumer did not start handling the message");
        }
    };
    child.kill().expect("SIGKILL the child"); // std's kill() sends SIGKILL on Unix
    let _ = child.wait();

    let redelivered = Arc::new(Mutex::new(None));
    let bus = {
        let redelivered = redelivered.clone();
        Bus::builder(queue.clone())
            .engine_instance(engine.clone())
            .consume(move |m: Numbered, ctx: Context| {
                *redelivered.lock().unwrap() = Some((m.n, ctx.attempt(), started.elapsed()));
                std::future::ready(Ok::<(), HandlerError>(()))
            })
            .start()
            .await
            .expect("start the second consumer")
    };
    let arrived = eventually(VISIBILITY + Duration::from_secs(10), || redelivered.lock().unwrap().is_some()).await;
    assert!(arrived, "the message held by the killed consumer was never redelivered");
    let (n, attempt, after) = redelivered.lock().unwrap().expect("redelivered");
    assert_eq!(n, 7);
    assert_eq!(attempt, 2, "the redelivery counts the killed consumer's attempt");
    assert!(
        after + Duration::from_millis(100) >= VISIBILITY,
        "redelivered {after:?} after the first handler started, before the {VISIBILITY:?} visibility timeout"
    );
    bus.shutdown().await;
    sender.shutdown().await;
}

/// Child process: consumes `queue` with a handler that announces the message and never returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_consumer_killed_mid_handler_has_its_message_redelivered_after_the_visibility_timeout"]
async fn child_consumer_that_hangs() {
    let Some((schema, queue)) = std::env::var(CHILD_ENV).ok().and_then(|v| {
        let (s, q) = v.split_once('|')?;
        Some((s.to_owned(), q.to_owned()))
    }) else {
        return;
    };
    let engine = transport(&schema, "courier_faults_child").await.into_engine();
    let _bus = Bus::builder(queue)
        .engine_instance(engine)
        .visibility_timeout(VISIBILITY)
        .consume(|m: Numbered, _ctx: Context| async move {
            println!("started {}", m.n);
            tokio::time::sleep(Duration::from_secs(600)).await;
            Ok::<(), HandlerError>(())
        })
        .start()
        .await
        .expect("start the child consumer");
    tokio::time::sleep(Duration::from_secs(600)).await;
}
