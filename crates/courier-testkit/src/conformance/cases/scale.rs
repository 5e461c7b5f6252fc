//! Competing consumers at scale: none lost, none handled twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use courier_bus::{Context, HandlerError};
use courier_core::Engine;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::watch;

use crate::TestHarness;
use crate::conformance::WAIT;
use crate::conformance::messages::Counted;
use crate::conformance::support::{assert_drained, cleanup, ok, run_id, unique, within};

/// How many sends are in flight at once (lets durable engines commit in groups).
const SEND_CONCURRENCY: usize = 64;

/// What the consumers saw, shared by their handlers.
#[derive(Debug)]
struct Tally {
    /// Handlings per message sequence number.
    counts: Vec<AtomicU32>,
    /// Handlings per consumer.
    per_consumer: Vec<AtomicUsize>,
    /// How many distinct messages were handled.
    distinct: watch::Sender<usize>,
}

/// [`exactly_once_at_scale`] with 4 consumers and 1,000 messages: the size [`conformance_tests!`] runs.
///
/// [`conformance_tests!`]: crate::conformance_tests
pub async fn exactly_once_at_scale_small(engine: Engine) {
    exactly_once_at_scale(engine, 4, 1_000).await;
}

/// `consumers` buses compete for `messages` messages on one queue, with handlers that keep no inbox and count
/// each message id: every message is handled exactly once and none is lost. Fails if no further message is
/// handled for [`WAIT`], however long the whole run takes.
pub async fn exactly_once_at_scale(engine: Engine, consumers: usize, messages: usize) {
    assert!(consumers > 0 && messages > 0, "exactly_once_at_scale needs at least one consumer and one message");
    let run = run_id();
    let harness = TestHarness::with_engine(engine.clone());
    let queue = unique("scale");
    let tally = Arc::new(Tally {
        counts: (0..messages).map(|_| AtomicU32::new(0)).collect(),
        per_consumer: (0..consumers).map(|_| AtomicUsize::new(0)).collect(),
        distinct: watch::Sender::new(0),
    });
    for consumer in 0..consumers {
        let (tally, run) = (tally.clone(), run.clone());
        let handler = move |message: Counted, _ctx: Context| {
            let Some(count) = tally.counts.get(message.seq as usize).filter(|_| message.run == run) else {
                return std::future::ready(Ok::<(), HandlerError>(()));
            };
            if count.fetch_add(1, Ordering::SeqCst) == 0 {
                tally.distinct.send_modify(|n| *n += 1);
            }
            tally.per_consumer[consumer].fetch_add(1, Ordering::Relaxed);
            std::future::ready(Ok(()))
        };
        ok("starting a consumer", harness.bus(queue.clone(), |b| b.consume(handler)).await);
    }

    let sender = ok("starting the sender", harness.bus(unique("scale-sender"), |b| b).await);
    let sends = futures::stream::iter(0..messages as u64).map(|seq| {
        let (sender, queue, run) = (&sender, &queue, &run);
        async move { within("a send", sender.send(queue, Counted { run: run.clone(), seq })).await }
    });
    ok("sending", sends.buffer_unordered(SEND_CONCURRENCY).try_collect::<()>().await);

    let mut distinct = tally.distinct.subscribe();
    loop {
        let seen = *distinct.borrow_and_update();
        if seen >= messages {
            break;
        }
        if tokio::time::timeout(WAIT, distinct.changed()).await.is_err() {
            panic!("{seen} of {messages} messages handled, then none for {WAIT:?}: messages are stuck or lost");
        }
    }
    harness.shutdown().await;

    let handled_by: Vec<usize> = tally.per_consumer.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let wrong: Vec<(usize, u32)> = tally
        .counts
        .iter()
        .enumerate()
        .map(|(seq, c)| (seq, c.load(Ordering::SeqCst)))
        .filter(|(_, c)| *c != 1)
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {messages} messages were not handled exactly once; first (seq, times handled): {:?}; \
         handled per consumer: {handled_by:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    assert_eq!(handled_by.iter().sum::<usize>(), messages, "handlings per consumer: {handled_by:?}");
    assert_drained(&engine, &queue).await;
    cleanup(&engine, &[&queue]).await;
}
