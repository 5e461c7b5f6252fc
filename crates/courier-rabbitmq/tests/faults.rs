//! Faults against the real broker: connections closed by the broker under load, and a consumer process that dies
//! mid-handler. Each test uses its own namespace and connection name, closes only its own connections
//! (`rabbitmqctl close_connection`), and deletes its namespace at the end.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_bus::{Bus, Context, HandlerError};
use courier_core::{Json, Message};
use courier_rabbitmq::{RabbitMqOptions, RabbitMqTransport};
use courier_testkit::services::RABBITMQ;
use courier_testkit::wait_until;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Numbered {
    n: u64,
}

impl Message for Numbered {
    const NAME: &'static str = "courier.rabbitmq.faults.numbered.v1";
    type Codec = Json;
}

fn unique(what: &str) -> String {
    format!("{what}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

fn options(namespace: &str, connection_name: &str) -> RabbitMqOptions {
    let mut options = RabbitMqOptions::from_url(&RABBITMQ.url()).expect("a valid COURIER_TEST_AMQP_URL");
    options.namespace = namespace.to_owned();
    options.connection_name = connection_name.to_owned();
    options
}

/// Closes the broker connections whose client-provided name is `connection_name` (ours only); returns how many.
async fn close_connections(connection_name: &str) -> usize {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(["list_connections", "-q", "name", "pid", "client_properties"])
        .output()
        .await
        .expect("run rabbitmqctl list_connections");
    let text = String::from_utf8_lossy(&out.stdout);
    let pids: Vec<String> = text
        .lines()
        .filter(|l| l.contains(connection_name))
        .filter_map(|l| l.split('\t').nth(1).map(str::to_owned))
        .collect();
    for pid in &pids {
        let closed = tokio::process::Command::new("rabbitmqctl")
            .args(["close_connection", pid, "courier fault test"])
            .output()
            .await
            .expect("run rabbitmqctl close_connection");
        assert!(closed.status.success(), "rabbitmqctl close_connection {pid} failed");
    }
    pids.len()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// Under load, the broker closes this test's connection twice: every publish that returned Ok is consumed, and
/// the consumer resumes (the transport reconnects with backoff, re-declares topology and consumes again).
#[test]
fn confirmed_publishes_survive_connection_loss() {
    if !RABBITMQ.require() {
        return;
    }
    runtime().block_on(async {
        const MESSAGES: u64 = 3_000;
        let (namespace, connection_name) = (unique("ft-drop"), unique("courier-fault-drop"));
        let transport = RabbitMqTransport::connect(options(&namespace, &connection_name)).await.expect("connect");
        let engine = transport.clone().into_engine();
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let handler = {
            let seen = seen.clone();
            move |m: Numbered, _ctx: Context| {
                seen.lock().unwrap().insert(m.n);
                std::future::ready(Ok::<(), HandlerError>(()))
            }
        };
        let consumer =
            Bus::builder("faults-consumer").engine_instance(engine.clone()).consume(handler).start().await.unwrap();
        let producer = Bus::builder("faults-producer").engine_instance(engine.clone()).start().await.unwrap();

        let confirmed = Arc::new(Mutex::new(BTreeSet::new()));
        let publishing = {
            let (producer, confirmed) = (producer.clone(), confirmed.clone());
            tokio::spawn(async move {
                futures::stream::iter(0..MESSAGES)
                    .for_each_concurrent(32, |n| {
                        let (producer, confirmed) = (producer.clone(), confirmed.clone());
                        async move {
                            if producer.publish(Numbered { n }).await.is_ok() {
                                confirmed.lock().unwrap().insert(n);
                            }
                        }
                    })
                    .await;
            })
        };
        let mut closed = 0;
        for at in [MESSAGES / 4, MESSAGES / 2] {
            let reached = wait_until(Duration::from_secs(60), || confirmed.lock().unwrap().len() as u64 >= at).await;
            assert!(reached.is_ok(), "publishing stalled before {at} confirms");
            closed += close_connections(&connection_name).await;
        }
        assert!(closed >= 2, "expected to close this test's connection twice, closed {closed}");
        publishing.await.unwrap();
        let confirmed = confirmed.lock().unwrap().clone();
        assert!(confirmed.len() as u64 > MESSAGES / 2, "most publishes should succeed: {}", confirmed.len());
        let all_consumed =
            wait_until(Duration::from_secs(60), || confirmed.is_subset(&seen.lock().unwrap())).await.is_ok();
        let missing: Vec<_> = confirmed.difference(&seen.lock().unwrap()).take(10).copied().collect();
        assert!(all_consumed, "confirmed publishes were lost after the connection dropped; first missing: {missing:?}");

        // The consumer resumed: a message published now is handled.
        producer.publish(Numbered { n: MESSAGES + 1 }).await.expect("publish after reconnecting");
        let resumed = wait_until(Duration::from_secs(30), || seen.lock().unwrap().contains(&(MESSAGES + 1))).await;
        assert!(resumed.is_ok(), "the consumer did not resume after reconnecting");
        consumer.shutdown().await;
        producer.shutdown().await;
        transport.delete_namespace().await.expect("delete the test namespace");
        transport.close().await;
    });
}

/// A consumer whose process dies (its runtime and connection dropped) in the middle of a handler: the broker
/// redelivers the message to the next consumer, flagged as not first (`attempt` stays 1: classic queues do not
/// count such redeliveries).
#[test]
fn message_of_a_consumer_dropped_mid_handler_is_redelivered() {
    if !RABBITMQ.require() {
        return;
    }
    let namespace = unique("ft-crash");
    let queue = "crash-endpoint";
    // The dying consumer, on its own runtime (a process of its own, in effect).
    let doomed = runtime();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<u64>();
    doomed.block_on(async {
        let transport =
            RabbitMqTransport::connect(options(&namespace, &unique("courier-fault-crash-a"))).await.expect("connect");
        let hang = move |m: Numbered, _ctx: Context| {
            let started = started_tx.clone();
            async move {
                let _ = started.send(m.n);
                std::future::pending::<()>().await;
                Ok::<(), HandlerError>(())
            }
        };
        let bus = Bus::builder(queue).engine_instance(transport.into_engine()).consume(hang).start().await.unwrap();
        bus.send(queue, Numbered { n: 42 }).await.expect("send");
        std::mem::forget(bus);
    });
    assert_eq!(started_rx.recv_timeout(Duration::from_secs(10)), Ok(42), "the first consumer should start");
    doomed.shutdown_background();

    runtime().block_on(async {
        let transport =
            RabbitMqTransport::connect(options(&namespace, &unique("courier-fault-crash-b"))).await.expect("connect");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler = {
            let seen = seen.clone();
            move |m: Numbered, ctx: Context| {
                seen.lock().unwrap().push((m.n, ctx.attempt()));
                std::future::ready(Ok::<(), HandlerError>(()))
            }
        };
        let bus = Bus::builder(queue)
            .engine_instance(transport.clone().into_engine())
            .consume(handler)
            .start()
            .await
            .unwrap();
        let redelivered = wait_until(Duration::from_secs(30), || !seen.lock().unwrap().is_empty()).await;
        assert!(redelivered.is_ok(), "the message held by the dead consumer was not redelivered");
        assert_eq!(seen.lock().unwrap()[0], (42, 1));
        bus.shutdown().await;
        transport.delete_namespace().await.expect("delete the test namespace");
        transport.close().await;
    });
}
