//! Failures: delayed redelivery, dead-lettering with its annotations and replay, undecodable messages.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use courier_bus::{Context, HandlerError, Outcome, Retry};
use courier_core::{Engine, Envelope, Message, RawMessage, attr, dead_letter_attr as dl};
use tokio::time::Instant;

use crate::TestHarness;
use crate::conformance::WAIT;
use crate::conformance::messages::{Job, Unknown};
use crate::conformance::support::{
    Seen, assert_at_least, assert_drained, cleanup, dead_letters, ok, record, run_id, unique,
};

/// A handler failing its first two deliveries under `Retry::none().then_backoff(3, 200ms)` sees attempts 1, 2 and
/// 3, each redelivery no sooner than the jittered minimum of its backoff (100 ms, then 200 ms), and then succeeds.
pub async fn delayed_redelivery(engine: Engine) {
    const BASE: Duration = Duration::from_millis(200);
    const JITTER: f64 = 0.5;
    let run = run_id();
    let harness = TestHarness::with_engine(engine.clone());
    let queue = unique("redelivery");
    let calls: Arc<Seen<(u32, Instant)>> = Seen::new();
    let handler = {
        let (calls, run) = (calls.clone(), run.clone());
        move |job: Job, ctx: Context| {
            let (calls, run) = (calls.clone(), run.clone());
            async move {
                if job.run != run {
                    return Ok(());
                }
                calls.push((ctx.attempt(), Instant::now()));
                if ctx.attempt() < 3 {
                    return Err(HandlerError::transient(format!("not yet (attempt {})", ctx.attempt())));
                }
                Ok(())
            }
        }
    };
    let policy = Retry::none().then_backoff(3, BASE).jitter(JITTER);
    ok("starting the consumer", harness.bus(queue.clone(), |b| b.consume(handler).retry(policy.clone())).await);
    ok("sending", harness.send(&queue, Job { run: run.clone(), n: 1 }).await);

    ok("waiting", harness.wait_consumed::<Job>(1, WAIT).await);
    let calls = calls.snapshot();
    let attempts: Vec<u32> = calls.iter().map(|(a, _)| *a).collect();
    assert_eq!(
        attempts,
        [1, 2, 3],
        "the handler should see attempts 1, 2, 3 (one call per delivery, no immediate retries)"
    );
    for (n, pair) in calls.windows(2).enumerate() {
        let redelivery = n as u32 + 1;
        let minimum = policy.backoff(redelivery).mul_f64(1.0 - JITTER);
        assert_at_least(&format!("redelivery {redelivery}"), pair[1].1 - pair[0].1, minimum);
    }
    let redelivered = harness.faulted().iter().filter(|c| matches!(c.outcome, Outcome::Redelivered { .. })).count();
    assert_eq!(redelivered, 2, "two deliveries should be reported failed and redelivered");
    harness.shutdown().await;
    assert_drained(&engine, &queue).await;
    cleanup(&engine, &[&queue]).await;
}

/// Under `Retry::immediate(1).then_backoff(2, 50ms)` a handler that always fails runs twice per delivery for three
/// deliveries; the message then lands in the dead-letter queue with reason, error, handler, attempts, fingerprint
/// and first/last failure times. `replay_dead_letter` returns it to its queue with its attempts reset and its
/// failure annotations gone, and the now-fixed handler handles it at attempt 1.
pub async fn dead_letter_after_max_attempts(engine: Engine) {
    const ERROR: &str = "payment service unavailable";
    let run = run_id();
    let harness = TestHarness::with_engine(engine.clone());
    let queue = unique("dlq");
    let broken = Arc::new(AtomicBool::new(true));
    // (attempt, message id, whether failure annotations were present)
    let calls: Arc<Seen<(u32, String, bool)>> = Seen::new();
    let handler = {
        let (calls, run, broken) = (calls.clone(), run.clone(), broken.clone());
        move |job: Job, ctx: Context| {
            let (calls, run, broken) = (calls.clone(), run.clone(), broken.clone());
            async move {
                if job.run != run {
                    return Ok(());
                }
                let annotated = ctx.header(dl::REASON).is_some() || ctx.header(dl::FIRST_FAILURE).is_some();
                calls.push((ctx.attempt(), ctx.message_id().to_owned(), annotated));
                if broken.load(Ordering::SeqCst) {
                    return Err(HandlerError::transient(format!("{ERROR} (call {})", calls.len())));
                }
                Ok(())
            }
        }
    };
    let policy = Retry::immediate(1).then_backoff(2, Duration::from_millis(50));
    ok("starting the consumer", harness.bus(queue.clone(), |b| b.consume(handler).retry(policy)).await);
    ok("sending", harness.send(&queue, Job { run: run.clone(), n: 7 }).await);

    let reported = ok("waiting", harness.wait_dead_lettered::<Job>(1, WAIT).await);
    assert_eq!(reported[0].reason, "handler-failed");
    let attempts: Vec<u32> = calls.snapshot().iter().map(|c| c.0).collect();
    assert_eq!(attempts, [1, 1, 2, 2, 3, 3], "each of 3 deliveries should run the handler twice (1 immediate retry)");
    let message_id = calls.snapshot()[0].1.clone();

    let dead = dead_letters(&engine, &queue, 1).await;
    assert_eq!(dead.len(), 1, "exactly one dead letter expected: {dead:#?}");
    let entry = &dead[0];
    assert_eq!(entry.queue, queue, "the dead letter records its queue");
    assert_eq!(entry.message.id(), Some(message_id.as_str()), "the dead letter is the message sent");
    assert_eq!(entry.message_type(), Job::NAME);
    assert_eq!(entry.reason(), "handler-failed");
    assert!(
        entry.error().contains(ERROR),
        "the error header should carry the handler's error, got '{}'",
        entry.error()
    );
    assert_eq!(entry.attempts(), 3, "attempts header: {:?}", entry.message.header(dl::ATTEMPTS));
    assert!(!entry.handler().is_empty(), "the failing handler should be named");
    assert!(!entry.fingerprint().is_empty(), "the failure fingerprint should be set");
    let (first, last) = (entry.first_failure(), entry.last_failure());
    let (Some(first), Some(last)) = (first, last) else {
        panic!("first and last failure times should be RFC 3339 headers: {:?}", entry.message.headers);
    };
    assert!(first < last, "the first failure ({first}) should precede the last ({last}) across redeliveries");
    let decoded: Job =
        ok("decoding the dead letter", ok("reading", Envelope::from_raw(entry.message.clone())).decode());
    assert_eq!(decoded, Job { run: run.clone(), n: 7 }, "the dead letter keeps the body");

    broken.store(false, Ordering::SeqCst);
    ok("replaying", engine.admin.replay_dead_letter(&entry.entry_id).await);
    ok("waiting for the replay", harness.wait_consumed::<Job>(1, WAIT).await);
    let last_call = calls.snapshot().last().cloned().expect("calls were recorded");
    assert_eq!(last_call.0, 1, "a replayed message starts again at attempt 1");
    assert_eq!(last_call.1, message_id, "the replay is the same message");
    assert!(!last_call.2, "a replayed message carries no failure annotations");
    let remaining = ok("listing", engine.admin.dead_letters(&dlq_filter(&queue)).await);
    assert!(remaining.is_empty(), "a replayed dead letter leaves the dead-letter queue: {remaining:#?}");
    harness.shutdown().await;
    assert_drained(&engine, &queue).await;
    cleanup(&engine, &[&queue]).await;
}

fn dlq_filter(queue: &str) -> courier_core::DeadLetterFilter {
    courier_core::DeadLetterFilter { queue: Some(queue.to_owned()), ..Default::default() }
}

/// A message with bad headers, one whose body is not valid JSON for its type, and one of a type nobody handles
/// are each dead-lettered, with reasons `undecodable`, `undecodable` and `no-handler`; the consumer keeps
/// handling good messages before and after.
pub async fn undecodable_messages_are_dead_lettered(engine: Engine) {
    let run = run_id();
    let harness = TestHarness::with_engine(engine.clone());
    let queue = unique("poison");
    let seen = Seen::new();
    let handler = record(&run, &seen, |j: &Job, _| j.n);
    ok("starting the consumer", harness.bus(queue.clone(), |b| b.consume(handler)).await);
    ok("sending", harness.send(&queue, Job { run: run.clone(), n: 1 }).await);
    seen.wait_for(1, "good message before the bad ones").await;

    let bad_headers = RawMessage {
        headers: courier_core::Headers::from([
            (attr::SPECVERSION, "1.0"),
            (attr::TYPE, Job::NAME),
            (attr::TIME, "yesterday"),
        ]),
        body: Bytes::from_static(b"{}"),
    };
    let mut bad_body = ok("encoding", Envelope::for_message("conformance", &Job { run: run.clone(), n: 2 }));
    bad_body.data = Bytes::from_static(b"{\"run\": not json");
    let bad_body_id = bad_body.id.clone();
    let unknown = ok("encoding", Envelope::for_message("conformance", &Unknown { run: run.clone() }));
    let unknown_id = unknown.id.clone();
    for raw in [bad_headers, bad_body.into_raw(), unknown.into_raw()] {
        ok("sending a raw message", engine.transport.send(&queue, raw, None).await);
    }

    let dead = dead_letters(&engine, &queue, 3).await;
    let reason_of = |id: &str| dead.iter().find(|d| d.message.id() == Some(id)).map(|d| d.reason().to_owned());
    assert_eq!(reason_of(&bad_body_id).as_deref(), Some("undecodable"), "a bad body: {dead:#?}");
    assert_eq!(reason_of(&unknown_id).as_deref(), Some("no-handler"), "an unknown type: {dead:#?}");
    let headerless: Vec<_> = dead.iter().filter(|d| d.message.id().is_none()).collect();
    assert_eq!(headerless.len(), 1, "the message without an id should be dead-lettered: {dead:#?}");
    assert_eq!(headerless[0].reason(), "undecodable");
    for d in &dead {
        assert!(!d.error().is_empty(), "every dead letter says what went wrong: {d:#?}");
        assert_eq!(d.attempts(), 1, "bad input is not retried: {d:#?}");
    }

    ok("sending", harness.send(&queue, Job { run: run.clone(), n: 3 }).await);
    let handled = seen.wait_for(2, "good messages, the consumer still working after bad ones").await;
    assert_eq!(handled, [1, 3]);
    harness.shutdown().await;
    assert_drained(&engine, &queue).await;
    cleanup(&engine, &[&queue]).await;
}
