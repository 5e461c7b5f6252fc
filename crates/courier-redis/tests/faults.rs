//! Faults against a real Redis: connections killed under load, and a consumer process that dies mid-handler.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_bus::{Bus, Context, HandlerError};
use courier_core::{Json, Message};
use courier_testkit::services::REDIS;
use courier_testkit::wait_until;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tick {
    seq: u64,
}

impl Message for Tick {
    const NAME: &'static str = "courier.redis.test.tick.v1";
    type Codec = Json;
}

/// Kills (`CLIENT KILL ID`) every connection whose name starts with `name`; returns how many.
async fn kill_connections(admin: &mut redis::aio::MultiplexedConnection, name: &str) -> usize {
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(admin).await.expect("CLIENT LIST");
    let ids: Vec<String> = list
        .lines()
        .filter(|line| line.split(' ').any(|f| f.strip_prefix("name=").is_some_and(|n| n.starts_with(name))))
        .filter_map(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")).map(str::to_owned))
        .collect();
    for id in &ids {
        let _: redis::RedisResult<i64> = redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query_async(admin).await;
    }
    ids.len()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// While messages are sent and consumed, the transport's connections are killed five times: every publish that
/// returned `Ok` is consumed afterwards, and the consumer keeps working once the kills stop.
#[test]
fn killed_connections_lose_no_acknowledged_message() {
    if !REDIS.require() {
        return;
    }
    let prefix = runtime().block_on(async {
        let transport = common::transport("faults-kill").await;
        let prefix = transport.prefix().to_owned();
        let name = transport.connection_name().to_owned();
        let engine = transport.into_engine();
        let queue = "kill-consumer";
        let seen: Arc<Mutex<HashSet<u64>>> = Arc::default();
        let handler = {
            let seen = seen.clone();
            move |tick: Tick, _ctx: Context| {
                seen.lock().unwrap().insert(tick.seq);
                std::future::ready(Ok::<(), HandlerError>(()))
            }
        };
        let consumer = Bus::builder(queue).engine_instance(engine.clone()).consume(handler).start().await.unwrap();
        let producer = Bus::builder("kill-producer").engine_instance(engine.clone()).start().await.unwrap();

        let client = redis::Client::open(REDIS.url()).unwrap();
        let mut admin = client.get_multiplexed_async_connection().await.unwrap();
        let killer = tokio::spawn(async move {
            let mut killed = 0;
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                killed += kill_connections(&mut admin, &name).await;
            }
            killed
        });

        // Publish without pause until the kills are over, 32 publishes in flight.
        let results: Vec<(u64, bool)> = futures::stream::iter(0u64..)
            .take_while(|_| std::future::ready(!killer.is_finished()))
            .map(|seq| {
                let producer = producer.clone();
                async move {
                    let ok = producer.publish(Tick { seq }).await.is_ok();
                    if !ok {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    (seq, ok)
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        let messages = results.len() as u64;
        let killed = killer.await.unwrap();
        assert!(killed >= 2, "the test should have killed connections, killed {killed}");
        let acknowledged: HashSet<u64> = results.iter().filter(|(_, ok)| *ok).map(|(s, _)| *s).collect();
        let failed = messages as usize - acknowledged.len();

        // After the kills: more publishes work and are consumed.
        for seq in messages..messages + 100 {
            producer.publish(Tick { seq }).await.expect("publish after the kills");
        }
        let all_there = wait_until(Duration::from_secs(30), || {
            let seen = seen.lock().unwrap();
            acknowledged.iter().all(|s| seen.contains(s)) && (messages..messages + 100).all(|s| seen.contains(&s))
        })
        .await;
        let missing: Vec<u64> = {
            let seen = seen.lock().unwrap();
            let mut m: Vec<u64> = acknowledged.iter().filter(|s| !seen.contains(s)).copied().collect();
            m.sort();
            m
        };
        eprintln!("killed {killed} connections; {failed} of {messages} publishes failed; missing {}", missing.len());
        assert!(all_there.is_ok(), "acknowledged publishes never consumed: {:?}", &missing[..missing.len().min(20)]);
        producer.shutdown().await;
        consumer.shutdown().await;
        prefix
    });
    // Once the runtime and every task that could still write are gone.
    common::delete_keys(&prefix);
}

/// A consumer whose process dies mid-handler (its runtime is torn down: no release, no lease renewal) leaves
/// its message pending; another consumer claims it after the visibility timeout and sees it as attempt 2.
#[test]
fn message_of_a_dead_consumer_is_redelivered() {
    if !REDIS.require() {
        return;
    }
    let main = runtime();
    let transport = main.block_on(common::transport("faults-dead"));
    let prefix = transport.prefix().to_owned();
    let queue = "dead-consumer";
    const VISIBILITY: Duration = Duration::from_secs(2);

    // The doomed consumer, on its own runtime and connections.
    let doomed = runtime();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    doomed.block_on(async {
        // Its own transport on the test's prefix, as another process would have.
        let own = courier_redis::RedisTransport::connect(
            &REDIS.url(),
            courier_redis::RedisOptions::default().with_prefix(prefix.clone()),
        )
        .await
        .unwrap();
        let handler = move |_tick: Tick, _ctx: Context| {
            let started = started_tx.clone();
            async move {
                let _ = started.send(());
                tokio::time::sleep(Duration::from_secs(600)).await;
                Ok::<(), HandlerError>(())
            }
        };
        Bus::builder(queue)
            .engine_instance(own.into_engine())
            .visibility_timeout(VISIBILITY)
            .consume(handler)
            .start()
            .await
            .unwrap();
    });
    let engine = transport.into_engine();
    main.block_on(async {
        let producer = Bus::builder("dead-producer").engine_instance(engine.clone()).start().await.unwrap();
        producer.send(queue, Tick { seq: 1 }).await.unwrap();
        producer.shutdown().await;
    });
    started_rx.recv_timeout(Duration::from_secs(10)).expect("the doomed handler should start");
    doomed.shutdown_background(); // the process "dies": nothing is released

    let attempts: Arc<Mutex<Vec<u32>>> = Arc::default();
    main.block_on(async {
        let handler = {
            let attempts = attempts.clone();
            move |_tick: Tick, ctx: Context| {
                attempts.lock().unwrap().push(ctx.attempt());
                std::future::ready(Ok::<(), HandlerError>(()))
            }
        };
        let start = tokio::time::Instant::now();
        let survivor = Bus::builder(queue)
            .engine_instance(engine.clone())
            .visibility_timeout(VISIBILITY)
            .consume(handler)
            .start()
            .await
            .unwrap();
        let redelivered = wait_until(Duration::from_secs(15), || !attempts.lock().unwrap().is_empty()).await;
        assert!(redelivered.is_ok(), "the dead consumer's message was not redelivered");
        assert!(start.elapsed() >= VISIBILITY / 2, "redelivered before the dead consumer's lease could expire");
        survivor.shutdown().await;
    });
    assert_eq!(*attempts.lock().unwrap(), [2], "the crash redelivery counts as the second attempt");
    drop(engine);
    assert!(common::delete_keys(&prefix) > 0, "the test's keys should exist until cleaned up");
}
