//! Faults: a consumer that dies mid-handler, connections cut under load, and what a bad or unreachable URL says.
//!
//! The shared NATS server is never stopped or restarted (other engineers' tests use it): a dead consumer is a
//! Tokio runtime shut down under it (its connection closes, nothing is settled), and a network failure is a TCP
//! proxy in front of the server cutting every connection (NATS 2.9 has no `kick`).

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_bus::{Bus, Context, HandlerError};
use courier_core::{EngineFactory, Envelope, ErrorKind, Json, Message, SubscriptionOptions, Transport};
use courier_nats::NatsEngineFactory;
use courier_testkit::services::NATS;
use serde::{Deserialize, Serialize};
use support::{CuttingProxy, NamespaceGuard, connect, connect_to, unique_namespace};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Work {
    n: u64,
}

impl Message for Work {
    const NAME: &'static str = "courier.test.nats.work.v1";
    type Codec = Json;
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// A consumer bus whose process dies while its handler runs (its runtime is shut down: connection closed, nothing
/// settled) has its message redelivered to another consumer after the visibility timeout, counted as a second
/// delivery.
#[test]
fn message_of_a_consumer_dying_mid_handler_is_redelivered_after_ack_wait() {
    if !NATS.require() {
        return;
    }
    const VISIBILITY: Duration = Duration::from_secs(2);
    let namespace = unique_namespace("crash");
    let _guard = NamespaceGuard(namespace.clone());
    let queue = "crash-queue".to_owned();

    let dying = runtime();
    let taken_at = dying.block_on(async {
        let engine = connect(&namespace).await.into_engine();
        let (started, mut started_rx) = tokio::sync::mpsc::channel::<Instant>(1);
        let handler = move |_: Work, _: Context| {
            let started = started.clone();
            async move {
                let _ = started.send(Instant::now()).await;
                std::future::pending::<()>().await;
                Ok::<(), HandlerError>(())
            }
        };
        let bus = Bus::builder(queue.clone())
            .engine_instance(engine.clone())
            .visibility_timeout(VISIBILITY)
            .consume(handler)
            .start()
            .await
            .expect("start the consumer bus");
        bus.send(&queue, Work { n: 1 }).await.expect("send");
        let taken_at = tokio::time::timeout(Duration::from_secs(10), started_rx.recv())
            .await
            .expect("the handler should start")
            .expect("started");
        std::mem::forget(bus); // the process dies: no graceful shutdown
        taken_at
    });
    dying.shutdown_background();

    let survivor = runtime();
    survivor.block_on(async {
        let transport = connect(&namespace).await;
        let options = SubscriptionOptions { prefetch: 1, visibility_timeout: VISIBILITY };
        let mut subscription = transport.subscribe(&queue, options).await.expect("subscribe");
        let batch = tokio::time::timeout(Duration::from_secs(10), subscription.next_batch(1))
            .await
            .expect("the message should be redelivered within 10 s")
            .expect("next_batch");
        let waited = taken_at.elapsed();
        let delivery = batch.into_iter().next().expect("one delivery");
        assert_eq!(delivery.message().message_type(), Some(Work::NAME));
        assert_eq!(delivery.delivery_count(), 2, "the dead consumer's delivery counts");
        assert!(
            waited >= VISIBILITY - Duration::from_millis(100),
            "redelivered after {waited:?}, before the visibility timeout of {VISIBILITY:?}"
        );
        delivery.ack().await.expect("ack");
    });
}

/// Publisher and consumer both reach the server through a proxy that cuts every connection twice while 3,000
/// messages are sent and consumed: every send that returned Ok is consumed (duplicates allowed, losses not).
#[test]
fn connections_cut_under_load_lose_no_acknowledged_publish() {
    if !NATS.require() {
        return;
    }
    const MESSAGES: u64 = 3_000;
    let namespace = unique_namespace("cut");
    let _guard = NamespaceGuard(namespace.clone());
    runtime().block_on(async {
        let proxy = CuttingProxy::start().await;
        let publisher = connect_to(&proxy.url, &namespace).await;
        let consumer = connect_to(&proxy.url, &namespace).await;
        let queue = "cut-queue";
        consumer.declare_queue(queue).await.expect("declare");

        let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
        let next = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let mut publishers = Vec::new();
        for _ in 0..32 {
            let (publisher, acked, next, failures) = (publisher.clone(), acked.clone(), next.clone(), failures.clone());
            publishers.push(tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= MESSAGES {
                        return;
                    }
                    let raw = Envelope::for_message("faults", &Work { n }).expect("encode").into_raw();
                    let id = raw.id().expect("id").to_owned();
                    for attempt in 0.. {
                        match publisher.send(queue, raw.clone(), None).await {
                            Ok(()) => {
                                acked.lock().unwrap().insert(id);
                                break;
                            }
                            Err(e) => {
                                failures.fetch_add(1, Ordering::Relaxed);
                                assert!(attempt < 200, "send kept failing: {e}");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                }
            }));
        }

        let received: Arc<Mutex<Vec<String>>> = Arc::default();
        let taking = {
            let received = received.clone();
            let options = SubscriptionOptions { prefetch: 256, visibility_timeout: Duration::from_secs(3) };
            let mut subscription = consumer.subscribe(queue, options).await.expect("subscribe");
            tokio::spawn(async move {
                loop {
                    match subscription.next_batch(256).await {
                        Ok(batch) => {
                            for delivery in batch {
                                received.lock().unwrap().push(delivery.message().id().unwrap_or("").to_owned());
                                let _ = delivery.ack().await;
                            }
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        };

        let mut cuts = 0;
        for fraction in [3, 2] {
            let wait_until = MESSAGES / fraction;
            while (acked.lock().unwrap().len() as u64) < wait_until {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            cuts += proxy.cut();
        }
        for p in publishers {
            p.await.expect("publisher");
        }
        let acked = acked.lock().unwrap().clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let seen: HashSet<String> = received.lock().unwrap().iter().cloned().collect();
            let missing = acked.difference(&seen).count();
            if missing == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{missing} acknowledged publishes were never consumed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        taking.abort();
        let total = received.lock().unwrap().len();
        eprintln!(
            "cut {cuts} connections; {} sends acknowledged, {} send errors retried, {total} deliveries ({} duplicates)",
            acked.len(),
            failures.load(Ordering::Relaxed),
            total - acked.len()
        );
        assert_eq!(acked.len() as u64, MESSAGES);
        assert!(cuts >= 2, "the proxy should have cut the connections");
        proxy.kill();
    });
}

/// A malformed URL is a configuration error naming it; an unreachable server a connection error naming the URL
/// and saying what to start. (No server needed.)
#[test]
fn bad_and_unreachable_urls_say_what_to_do() {
    runtime().block_on(async {
        for url in ["nats://", "nats://host:notaport", "nats://127.0.0.1:4222?flavour=mint"] {
            let e = NatsEngineFactory.connect(url).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{e}");
            assert!(e.to_string().contains(url), "{e}");
        }
        let url = "nats://127.0.0.1:1";
        let e = NatsEngineFactory.connect(url).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
        assert!(e.to_string().contains(url) && e.to_string().contains("nats-server"), "{e}");
    });
}
