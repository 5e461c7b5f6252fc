//! Hooks to watch what a bus publishes and consumes (used by the test kit and the demo's statistics).

use std::time::Duration;

use courier_core::Envelope;

/// What happened to one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The handler succeeded; the message was acknowledged.
    Handled,
    /// The handler failed; the message will be redelivered after `delay`.
    Redelivered {
        /// The wait before redelivery.
        delay: Duration,
        /// The failure.
        error: String,
    },
    /// The message went to the dead-letter queue.
    DeadLettered {
        /// `handler-failed`, `undecodable`, `no-handler` or `expired`.
        reason: String,
        /// The failure.
        error: String,
    },
    /// The consumer shut down before handling it; it was put back.
    Released,
}

/// One delivery seen by a consumer.
#[derive(Debug, Clone)]
pub struct Consumed {
    /// The queue.
    pub queue: String,
    /// The delivery attempt (1 on first delivery).
    pub attempt: u32,
    /// The envelope, if the message was a valid one.
    pub envelope: Option<Envelope>,
    /// What happened.
    pub outcome: Outcome,
}

/// Watches a bus. Methods run inline on the publishing or consuming task: keep them quick.
pub trait BusObserver: Send + Sync + std::fmt::Debug + 'static {
    /// A message was published (`queue` is `None`) or sent to `queue`, and the transport accepted it.
    fn published(&self, _envelope: &Envelope, _queue: Option<&str>) {}
    /// A delivery was settled.
    fn consumed(&self, _event: &Consumed) {}
}
