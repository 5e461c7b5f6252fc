//! Routing and settling: fan-out, competing consumers, ack/retry/release/dead-letter.

use std::time::Duration;

use courier_bus::{Context, HandlerError};
use courier_core::{Engine, Envelope, Message, RawMessage, SubscriptionOptions, attr, dead_letter_attr as dl};

use crate::TestHarness;
use crate::conformance::VISIBILITY_TIMEOUT;
use crate::conformance::messages::{FanOutEvent, Job};
use crate::conformance::support::{
    Seen, assert_drained, cleanup, dead_letters, ok, record, run_id, sorted, take, unique,
};

/// A published event reaches every subscribing service's queue, once each; a service that does not subscribe
/// gets nothing.
pub async fn fan_out(engine: Engine) {
    let run = run_id();
    let harness = TestHarness::with_engine(engine.clone());
    let (a, b) = (unique("fanout-a"), unique("fanout-b"));
    let (seen_a, seen_b) = (Seen::new(), Seen::new());
    for (service, seen) in [(&a, &seen_a), (&b, &seen_b)] {
        let handler = record(&run, seen, |e: &FanOutEvent, _| e.n);
        ok("starting a subscriber", harness.bus(service.clone(), |b| b.consume(handler)).await);
    }
    let publisher = ok("starting the publisher", harness.bus(unique("fanout-pub"), |b| b).await);
    for n in 0..3 {
        ok("publishing", publisher.publish(FanOutEvent { run: run.clone(), n }).await);
    }
    seen_a.wait_for(3, "events on the first subscriber's queue").await;
    seen_b.wait_for(3, "events on the second subscriber's queue").await;
    harness.shutdown().await;
    for (service, seen) in [(&a, &seen_a), (&b, &seen_b)] {
        assert_eq!(sorted(&seen.snapshot()), [0, 1, 2], "service '{service}' should get each event exactly once");
        assert_drained(&engine, service).await;
    }
    cleanup(&engine, &[&a, &b]).await;
}

/// Two buses consuming one queue share the messages: each is handled exactly once, and both get some.
pub async fn competing_consumers(engine: Engine) {
    const MESSAGES: u64 = 20;
    let run = run_id();
    let harness = TestHarness::with_engine(engine.clone());
    let queue = unique("competing");
    let seen = Seen::new();
    for instance in 0..2u8 {
        let (seen, run) = (seen.clone(), run.clone());
        // A little work per message, holding the only prefetch slot, so the other instance takes the next one.
        let handler = move |job: Job, _ctx: Context| {
            let (seen, run) = (seen.clone(), run.clone());
            async move {
                if job.run == run {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    seen.push((instance, job.n));
                }
                Ok::<(), HandlerError>(())
            }
        };
        ok("starting a consumer", harness.bus(queue.clone(), |b| b.consume(handler).prefetch(1).concurrency(1)).await);
    }
    for n in 0..MESSAGES {
        ok("sending", harness.send(&queue, Job { run: run.clone(), n }).await);
    }
    seen.wait_for(MESSAGES as usize, "messages handled by the two consumers").await;
    harness.shutdown().await;
    let handled = seen.snapshot();
    let numbers: Vec<u64> = handled.iter().map(|(_, n)| *n).collect();
    assert_eq!(sorted(&numbers), (0..MESSAGES).collect::<Vec<_>>(), "each message should be handled exactly once");
    for instance in 0..2u8 {
        let count = handled.iter().filter(|(i, _)| *i == instance).count();
        assert!(
            count > 0,
            "consumer {instance} handled none of {MESSAGES} messages: consumers of one queue must share"
        );
    }
    assert_drained(&engine, &queue).await;
    cleanup(&engine, &[&queue]).await;
}

fn raw_job(run: &str, n: u64) -> RawMessage {
    ok("encoding", Envelope::for_message("conformance", &Job { run: run.to_owned(), n })).into_raw()
}

/// Through the raw transport: an acked message is gone; a retried (nacked) one comes back with its annotations
/// and its delivery counted; a released one comes back uncounted; a dropped one comes back; a dead-lettered one
/// lands in the dead-letter queue.
pub async fn ack_nack_release(engine: Engine) {
    let run = run_id();
    let queue = unique("ack");
    let transport = &engine.transport;
    ok("declaring the queue", transport.declare_queue(&queue).await);
    let (a, b) = (raw_job(&run, 1), raw_job(&run, 2));
    let (id_a, id_b) = (a.id().unwrap_or_default().to_owned(), b.id().unwrap_or_default().to_owned());
    ok("sending", transport.send(&queue, a, None).await);
    ok("sending", transport.send(&queue, b, None).await);
    let options = SubscriptionOptions { prefetch: 10, visibility_timeout: VISIBILITY_TIMEOUT };
    let mut sub = ok("subscribing", transport.subscribe(&queue, options).await);

    let mut first = take(&mut sub, 2).await;
    first.sort_by_key(|d| d.message().id() != Some(id_a.as_str()));
    let ids: Vec<_> = first.iter().map(|d| d.message().id().unwrap_or_default().to_owned()).collect();
    assert_eq!(ids, [id_a.clone(), id_b.clone()], "the two messages sent should be delivered");
    for d in &first {
        assert_eq!(d.delivery_count(), 1, "a first delivery has delivery_count 1");
        assert_eq!(d.queue(), queue);
        assert_eq!(d.message().message_type(), Some(Job::NAME), "headers should arrive as sent");
    }
    let mut first = first.into_iter();
    let (da, db) = (first.next().unwrap(), first.next().unwrap());
    ok("ack", da.ack().await);
    let annotations = vec![(dl::LAST_ERROR.to_owned(), "boom".to_owned())];
    ok("retry", db.retry(Duration::from_millis(50), annotations).await);

    let again = take(&mut sub, 1).await.remove(0);
    assert_eq!(
        again.message().id(),
        Some(id_b.as_str()),
        "only the retried message should come back, not the acked one"
    );
    assert_eq!(again.delivery_count(), 2, "a retried message's redelivery is counted");
    assert_eq!(again.message().header(dl::LAST_ERROR), Some("boom"), "retry annotations should be set as headers");
    assert_eq!(again.message().header(attr::ID), Some(id_b.as_str()));
    ok("release", again.release().await);

    let released = take(&mut sub, 1).await.remove(0);
    assert_eq!(released.message().id(), Some(id_b.as_str()));
    assert_eq!(released.delivery_count(), 2, "a released message comes back with its delivery count unchanged");
    drop(released);

    // Dropped unsettled: released at once, or redelivered after the visibility timeout.
    let dropped = take(&mut sub, 1).await.remove(0);
    assert_eq!(dropped.message().id(), Some(id_b.as_str()), "a delivery dropped unsettled should come back");
    let annotations = vec![(dl::REASON.to_owned(), "handler-failed".to_owned())];
    ok("dead_letter", dropped.dead_letter(annotations).await);

    let dead = dead_letters(&engine, &queue, 1).await;
    assert_eq!(dead.len(), 1, "one message was dead-lettered: {dead:#?}");
    assert_eq!(dead[0].message.id(), Some(id_b.as_str()));
    assert_eq!(dead[0].queue, queue);
    assert_eq!(dead[0].reason(), "handler-failed");
    assert_eq!(dead[0].message.body, raw_job(&run, 2).body, "the dead letter keeps the body");

    let nothing = tokio::time::timeout(Duration::from_millis(300), sub.next_batch(10)).await;
    if let Ok(batch) = nothing {
        let ids: Vec<_> = ok("next_batch", batch).iter().map(|d| d.message().id().map(str::to_owned)).collect();
        panic!("settled messages came back: {ids:?}");
    }
    drop(sub);
    assert_drained(&engine, &queue).await;
    cleanup(&engine, &[&queue]).await;
}
