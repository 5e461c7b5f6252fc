//! Scheduled delivery.

use std::time::Duration;

use chrono::Utc;
use courier_bus::Bus;
use courier_core::Engine;
use tokio::time::Instant;

use crate::TestHarness;
use crate::conformance::messages::ScheduledEvent;
use crate::conformance::support::{Seen, assert_at_least, assert_drained, cleanup, ok, record, run_id, unique};

const DELAY: Duration = Duration::from_millis(300);

/// How a case schedules its message.
enum Via {
    Publish,
    Send,
}

async fn scheduled(engine: Engine, via: Via) {
    let run = run_id();
    let harness = TestHarness::with_engine(engine.clone());
    let queue = unique("scheduled");
    let seen = Seen::new();
    let handler = record(&run, &seen, |_: &ScheduledEvent, _| Instant::now());
    ok("starting the consumer", harness.bus(queue.clone(), |b| b.consume(handler)).await);
    let sender: Bus = ok("starting the sender", harness.bus(unique("scheduler"), |b| b).await);

    // Read the test's clock before the engine's deadline is computed, so the measured wait is never overstated.
    let start = Instant::now();
    let at = Utc::now() + DELAY;
    let message = ScheduledEvent { run: run.clone() };
    match via {
        Via::Publish => ok("scheduling a publish", sender.schedule(message, at).await),
        Via::Send => ok("scheduling a send", sender.schedule_send(&queue, message, at).await),
    }
    let handled = seen.wait_for(1, "scheduled message").await;
    assert_at_least("delivery of a message scheduled 300 ms ahead", handled[0] - start, DELAY);
    harness.shutdown().await;
    assert_eq!(seen.len(), 1, "the scheduled message should be handled once");
    assert_drained(&engine, &queue).await;
    cleanup(&engine, &[&queue]).await;
}

/// `bus.schedule(event, now + 300ms)` is not handled before its time (less clock tolerance) and is handled after.
pub async fn scheduled_publish(engine: Engine) {
    scheduled(engine, Via::Publish).await;
}

/// `bus.schedule_send(endpoint, command, now + 300ms)` is not handled before its time and is handled after.
pub async fn scheduled_send(engine: Engine) {
    scheduled(engine, Via::Send).await;
}
