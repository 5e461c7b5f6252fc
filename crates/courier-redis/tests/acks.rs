//! Acknowledgements are sent in the background: `ack` returns once one is queued, and `flush` waits until the
//! batchers of dropped subscriptions have sent everything.

mod common;

use courier_core::{Envelope, Json, Message, SubscriptionOptions};
use courier_testkit::services::REDIS;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Note {
    n: u32,
}

impl Message for Note {
    const NAME: &'static str = "courier.redis.test.note.v1";
    type Codec = Json;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_waits_for_queued_acknowledgements() {
    if !REDIS.require() {
        return;
    }
    const MESSAGES: u32 = 2_000;
    let transport = common::transport("acks-flush").await;
    let engine = transport.clone().into_engine();
    let queue = "acks";
    for n in 0..MESSAGES {
        let raw = Envelope::for_message("test", &Note { n }).unwrap().into_raw();
        engine.transport.send(queue, raw, None).await.unwrap();
    }
    // Nothing is draining yet: flush returns at once.
    engine.transport.flush().await.unwrap();

    let mut subscription = engine.transport.subscribe(queue, SubscriptionOptions::default()).await.unwrap();
    let mut acked = 0;
    while acked < MESSAGES {
        let batch = subscription.next_batch(512).await.unwrap();
        for delivery in batch {
            delivery.ack().await.unwrap();
            acked += 1;
        }
    }
    drop(subscription);
    engine.transport.flush().await.unwrap();

    // Once flushed, nothing is held or left in the stream: the queue is empty for any other consumer.
    let stats = engine.admin.queues().await.unwrap();
    let stats = stats.iter().find(|s| s.name == queue).expect("the queue is listed");
    assert_eq!((stats.ready, stats.in_flight), (0, 0), "every acknowledged message is gone after a flush: {stats:?}");
}
