//! Publishing runs the publish script by its SHA1 with a hand-built `EVALSHA`: a server that lost its scripts (a
//! restart, `SCRIPT FLUSH`) gets the script loaded again, and nothing published is lost or goes elsewhere.

mod common;

use courier_core::{Envelope, Json, Message, SubscriptionOptions};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_survive_a_script_flush_and_reach_only_bound_queues() {
    if !REDIS.require() {
        return;
    }
    let engine = common::engine("publish-flush").await;
    let transport = &engine.transport;
    transport.declare_queue("notes").await.unwrap();
    transport.bind("notes", Note::NAME).await.unwrap();
    transport.declare_queue("others").await.unwrap();
    transport.bind("others", Other::NAME).await.unwrap();

    let publish_round = |from: u32| {
        let transport = transport.clone();
        async move {
            // Concurrent publishes of both types, so one batch carries several bindings.
            let publishes = (from..from + 50).map(|n| {
                let transport = transport.clone();
                async move {
                    let raw = if n % 2 == 0 {
                        Envelope::for_message("test", &Note { n }).unwrap().into_raw()
                    } else {
                        Envelope::for_message("test", &Other { n }).unwrap().into_raw()
                    };
                    transport.publish(raw, None).await.unwrap();
                }
            });
            futures::future::join_all(publishes).await;
        }
    };
    publish_round(0).await;
    let client = redis::Client::open(REDIS.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut admin).await.unwrap();
    publish_round(50).await;

    for (queue, message_type, parity) in [("notes", Note::NAME, 0), ("others", Other::NAME, 1)] {
        let mut subscription = transport.subscribe(queue, SubscriptionOptions::default()).await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 50 {
            for mut delivery in subscription.next_batch(100).await.unwrap() {
                let envelope = Envelope::from_raw(delivery.take_message()).unwrap();
                assert_eq!(envelope.message_type, message_type, "queue '{queue}' got a message it is not bound to");
                let n: u32 = serde_json::from_slice::<serde_json::Value>(&envelope.data).unwrap()["n"]
                    .as_u64()
                    .unwrap()
                    .try_into()
                    .unwrap();
                seen.push(n);
                delivery.ack().await.unwrap();
            }
        }
        seen.sort_unstable();
        let expected: Vec<u32> = (0..100).filter(|n| n % 2 == parity).collect();
        assert_eq!(seen, expected, "queue '{queue}' should hold each of its messages once, before and after the flush");
    }
    engine.transport.flush().await.unwrap();
}
