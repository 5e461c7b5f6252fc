//! One policy for calls and consumers: a bus gated by a circuit breaker stops consuming while the breaker is open
//! (messages wait in the queue, none is dead-lettered) and resumes when it closes or half-opens. On the embedded
//! SQLite transport, in a temp file.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use courier_bus::{Bus, Context, HandlerError, Retry};
use courier_core::{Engine, Json, Message, QueueStats};
use courier_resilience::circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, CircuitState, Window,
};
use courier_sqlite::{SqliteOptions, SqliteTransport};
use serde::{Deserialize, Serialize};
use tower::{ServiceBuilder, ServiceExt, service_fn};

#[derive(Debug, Serialize, Deserialize)]
struct Charge {
    n: u32,
}

impl Message for Charge {
    const NAME: &'static str = "resilience-test.charge.v1";
    type Codec = Json;
}

async fn engine(dir: &tempfile::TempDir) -> Engine {
    SqliteTransport::open(dir.path().join("courier.db"), SqliteOptions::default()).await.unwrap().into_engine()
}

async fn stats(engine: &Engine, queue: &str) -> QueueStats {
    let queues = engine.admin.queues().await.unwrap();
    queues.into_iter().find(|q| q.name == queue).unwrap_or_else(|| panic!("no queue {queue}"))
}

async fn wait_until(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_open_breaker_pauses_consuming_until_closed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let breaker = CircuitBreaker::new("billing-dep", CircuitBreakerConfig::default());
    breaker.force_open();

    let handled = Arc::new(AtomicU32::new(0));
    let h = handled.clone();
    let billing = Bus::builder("billing")
        .engine_instance(engine.clone())
        .gate(Arc::new(breaker.clone()))
        .consume(move |_: Charge, _ctx: Context| {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    let orders = Bus::builder("orders").engine_instance(engine.clone()).start().await.unwrap();
    for n in 0..10 {
        orders.publish(Charge { n }).await.unwrap();
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(handled.load(Ordering::SeqCst), 0, "nothing is handled while the breaker is open");
    let s = stats(&engine, "billing").await;
    assert_eq!((s.ready, s.in_flight, s.dead_lettered), (10, 0, 0), "the messages wait in the queue: {s:?}");

    breaker.reset();
    wait_until("all are handled", Duration::from_secs(20), async || handled.load(Ordering::SeqCst) == 10).await;
    let s = stats(&engine, "billing").await;
    assert_eq!(s.dead_lettered, 0);
    billing.shutdown().await;
    orders.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opened_by_a_failing_dependency_stops_consuming_instead_of_dead_lettering() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let config = CircuitBreakerConfig::failure_rate(0.5)
        .window(Window::Count(4))
        .minimum_calls(4)
        .open_for(Duration::from_secs(2))
        .half_open_calls(1);
    let breaker = CircuitBreaker::new("payments", config);

    // The dependency: a tower service that fails while `failing`, called through the breaker.
    let failing = Arc::new(AtomicBool::new(true));
    let dependency_calls = Arc::new(AtomicU32::new(0));
    let (f, c) = (failing.clone(), dependency_calls.clone());
    let payments =
        ServiceBuilder::new().layer(CircuitBreakerLayer::new(breaker.clone())).service(service_fn(move |n: u32| {
            c.fetch_add(1, Ordering::SeqCst);
            let fail = f.load(Ordering::SeqCst);
            async move { if fail { Err(std::io::Error::other("payments down")) } else { Ok(n) } }
        }));

    let handled = Arc::new(AtomicU32::new(0));
    let h = handled.clone();
    let billing = Bus::builder("billing")
        .engine_instance(engine.clone())
        .prefetch(1)
        .concurrency(1)
        .retry(Retry::none().then_backoff(5, Duration::from_millis(50)))
        .gate(Arc::new(breaker.clone()))
        .consume(move |charge: Charge, _ctx: Context| {
            let (h, payments) = (h.clone(), payments.clone());
            async move {
                payments.oneshot(charge.n).await.map_err(HandlerError::transient)?;
                h.fetch_add(1, Ordering::SeqCst);
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    let orders = Bus::builder("orders").engine_instance(engine.clone()).start().await.unwrap();
    for n in 0..10 {
        orders.publish(Charge { n }).await.unwrap();
    }

    let mut states = breaker.subscribe();
    tokio::time::timeout(Duration::from_secs(20), states.wait_for(|s| *s == CircuitState::Open))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(breaker.state(), CircuitState::Open);
    assert_eq!(dependency_calls.load(Ordering::SeqCst), 4, "no call reaches the dependency while open");
    assert_eq!(handled.load(Ordering::SeqCst), 0);
    let s = stats(&engine, "billing").await;
    assert_eq!(s.dead_lettered, 0, "no message burned its retries into the DLQ: {s:?}");
    assert_eq!(s.ready + s.delayed + s.in_flight, 10, "all wait in the queue: {s:?}");

    // The dependency recovers; after the open duration the gate half-opens the breaker, a trial call succeeds,
    // the breaker closes and every message is handled.
    failing.store(false, Ordering::SeqCst);
    wait_until("all are handled", Duration::from_secs(30), async || handled.load(Ordering::SeqCst) == 10).await;
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(stats(&engine, "billing").await.dead_lettered, 0);
    billing.shutdown().await;
    orders.shutdown().await;
}
