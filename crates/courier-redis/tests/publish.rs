//! Publishing with bindings read once and kept: a binding made in another process before a publish starts still
//! receives it, a deleted queue is not brought back by a publish, and each message reaches only the queues bound
//! to its type.

mod common;

use courier_core::{Engine, Envelope, Json, Message, RawMessage, SubscriptionOptions};
use courier_redis::{RedisOptions, RedisTransport};
use courier_testkit::services::REDIS;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Note {
    n: u32,
}

impl Message for Note {
    const NAME: &'static str = "courier.redis.test.publish-note.v1";
    type Codec = Json;
}

#[derive(Debug, Serialize, Deserialize)]
struct Other {
    n: u32,
}

impl Message for Other {
    const NAME: &'static str = "courier.redis.test.publish-other.v1";
    type Codec = Json;
}

fn note(n: u32) -> RawMessage {
    Envelope::for_message("test", &Note { n }).unwrap().into_raw()
}

/// The numbers of the next `count` messages on `queue`, acknowledged.
async fn take(engine: &Engine, queue: &str, count: usize) -> Vec<u32> {
    let mut subscription = engine.transport.subscribe(queue, SubscriptionOptions::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < count {
        for mut delivery in subscription.next_batch(100).await.unwrap() {
            let envelope = Envelope::from_raw(delivery.take_message()).unwrap();
            let body: serde_json::Value = serde_json::from_slice(&envelope.data).unwrap();
            seen.push(body["n"].as_u64().unwrap() as u32);
            delivery.ack().await.unwrap();
        }
    }
    seen.sort_unstable();
    seen
}

/// Two transports on one fresh prefix, as two processes would be; the prefix, to delete its keys at the end.
async fn two_processes(test: &str) -> (String, Engine, Engine) {
    let prefix = common::unique_prefix(test);
    let url = REDIS.url();
    let connect = || RedisTransport::connect(&url, RedisOptions::default().with_prefix(prefix.clone()));
    let (a, b) = (connect().await.unwrap(), connect().await.unwrap());
    (prefix.clone(), a.into_engine(), b.into_engine())
}

async fn ready(engine: &Engine, queue: &str) -> u64 {
    let stats = engine.admin.queues().await.unwrap();
    stats.iter().find(|s| s.name == queue).map_or(0, |s| s.ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_made_elsewhere_are_seen_by_the_next_publish() {
    if !REDIS.require() {
        return;
    }
    // Two processes on one prefix: `a` publishes, `b` changes the bindings.
    let (shared_prefix, a, b) = two_processes("publish-bindings-shared").await;

    b.transport.declare_queue("first").await.unwrap();
    b.transport.bind("first", Note::NAME).await.unwrap();
    a.transport.publish(note(1), None).await.unwrap();
    // `a` has read the bindings ({first}) and keeps them; `b` binds a second queue.
    b.transport.declare_queue("second").await.unwrap();
    b.transport.bind("second", Note::NAME).await.unwrap();
    a.transport.publish(note(2), None).await.unwrap();
    assert_eq!(ready(&a, "first").await, 2, "the first queue gets both messages");
    assert_eq!(ready(&a, "second").await, 1, "the second queue gets the message published after it was bound");
    assert_eq!(take(&a, "second", 1).await, [2]);

    // `b` deletes the first queue: `a`'s next publish neither reaches it nor brings its stream back.
    b.transport.delete_queue("first").await.unwrap();
    a.transport.publish(note(3), None).await.unwrap();
    assert_eq!(take(&a, "second", 1).await, [3]);
    let client = redis::Client::open(REDIS.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let exists: i64 =
        redis::cmd("EXISTS").arg(format!("{shared_prefix}:q:first")).query_async(&mut conn).await.unwrap();
    assert_eq!(exists, 0, "a publish with bindings read before the delete must not recreate the deleted queue");
    a.transport.flush().await.unwrap();
    common::delete_keys(&shared_prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_two_types_reaches_only_the_bound_queues() {
    if !REDIS.require() {
        return;
    }
    let engine = common::engine("publish-types").await;
    let transport = &engine.transport;
    for (queue, message_type) in [("notes", Note::NAME), ("others", Other::NAME)] {
        transport.declare_queue(queue).await.unwrap();
        transport.bind(queue, message_type).await.unwrap();
    }
    // Concurrent publishes of both types, so one batch carries both.
    let publishes = (0..100u32).map(|n| {
        let transport = transport.clone();
        async move {
            let raw =
                if n % 2 == 0 { note(n) } else { Envelope::for_message("test", &Other { n }).unwrap().into_raw() };
            transport.publish(raw, None).await.unwrap();
        }
    });
    futures::future::join_all(publishes).await;
    let evens: Vec<u32> = (0..100).filter(|n| n % 2 == 0).collect();
    let odds: Vec<u32> = (0..100).filter(|n| n % 2 == 1).collect();
    assert_eq!(take(&engine, "notes", 50).await, evens, "each note once, and nothing else");
    assert_eq!(take(&engine, "others", 50).await, odds, "each other message once, and nothing else");
    assert_eq!((ready(&engine, "notes").await, ready(&engine, "others").await), (0, 0));
    engine.transport.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_queue_whose_stream_vanished_is_declared_again_and_gets_the_message() {
    if !REDIS.require() {
        return;
    }
    let transport = common::transport("publish-vanished").await;
    let prefix = transport.prefix().to_owned();
    let engine = transport.into_engine();
    engine.transport.declare_queue("notes").await.unwrap();
    engine.transport.bind("notes", Note::NAME).await.unwrap();
    engine.transport.publish(note(1), None).await.unwrap();
    assert_eq!(take(&engine, "notes", 1).await, [1]);
    // The stream goes without the queue being deleted (by hand here; an eviction does the same).
    let client = redis::Client::open(REDIS.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("DEL").arg(format!("{prefix}:q:notes")).query_async(&mut conn).await.unwrap();
    engine.transport.publish(note(2), None).await.unwrap();
    assert_eq!(take(&engine, "notes", 1).await, [2], "the message published after the stream vanished arrives");
    engine.transport.flush().await.unwrap();
    common::delete_keys(&prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_unbound_and_declared_again_elsewhere_does_not_keep_a_publish() {
    if !REDIS.require() {
        return;
    }
    let (shared_prefix, a, b) = two_processes("publish-unbound").await;
    b.transport.declare_queue("notes").await.unwrap();
    b.transport.bind("notes", Note::NAME).await.unwrap();
    a.transport.publish(note(1), None).await.unwrap();
    assert_eq!(take(&a, "notes", 1).await, [1]);
    // `a` still holds {notes} for the type; `b` deletes the queue and declares it again without the binding.
    b.transport.delete_queue("notes").await.unwrap();
    b.transport.declare_queue("notes").await.unwrap();
    a.transport.publish(note(2), None).await.unwrap();
    assert_eq!(ready(&a, "notes").await, 0, "a queue no longer bound must not keep a message published after");
    let client = redis::Client::open(REDIS.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // The bindings version went missing (a flush of that key): the next publish reads the bindings again.
    b.transport.bind("notes", Note::NAME).await.unwrap();
    let _: i64 = redis::cmd("DEL").arg(format!("{shared_prefix}:bindver")).query_async(&mut conn).await.unwrap();
    a.transport.publish(note(3), None).await.unwrap();
    assert_eq!(take(&a, "notes", 1).await, [3]);
    assert_eq!(ready(&a, "notes").await, 0, "the publish reached the queue once");
    a.transport.flush().await.unwrap();
    common::delete_keys(&shared_prefix);
}

/// Publishes from many tasks at once go in batches: each reaches the queue once, and publishes dropped half-way
/// (their callers gave up) do not stop the publishes after them, alone or in batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_and_abandoned_publishes_each_arrive_once() {
    if !REDIS.require() {
        return;
    }
    const TASKS: u32 = 64;
    const EACH: u32 = 40;
    let (prefix, engine, _) = two_processes("concurrent").await;
    let transport = engine.transport.clone();
    transport.bind("lanes", Note::NAME).await.unwrap();

    let publishers: Vec<_> = (0..TASKS)
        .map(|t| {
            let transport = transport.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    transport.publish(note(t * EACH + i), None).await.unwrap();
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    // Abandoned publishes: each future is polled until it has sent or queued its message, then dropped.
    for n in 0..20 {
        let publish = transport.publish(note(TASKS * EACH + n), None);
        let _ = tokio::time::timeout(std::time::Duration::from_micros(50), publish).await;
    }
    // Publishing still works, alone and in batches.
    let last = TASKS * EACH + 1000;
    let tail: Vec<_> = (0..8u32)
        .map(|i| {
            let transport = transport.clone();
            tokio::spawn(async move { transport.publish(note(last + i), None).await })
        })
        .collect();
    for t in tail {
        tokio::time::timeout(std::time::Duration::from_secs(10), t)
            .await
            .expect("a publish after the abandoned ones never returned")
            .unwrap()
            .unwrap();
    }

    let expected = (TASKS * EACH) as usize;
    let stored = ready(&engine, "lanes").await as usize;
    assert!(stored >= expected + 8 && stored <= expected + 8 + 20, "{stored} messages stored");
    let seen = take(&engine, "lanes", stored).await;
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "a publish was stored twice");
    for n in (0..TASKS * EACH).chain(last..last + 8) {
        assert!(seen.binary_search(&n).is_ok(), "message {n} is missing");
    }
    common::delete_keys(&prefix);
}
