//! The contract an engine implements: [`Transport`] moves messages, [`Admin`] inspects and repairs queues.
//!
//! # Delivery contract
//!
//! - **Queues.** A queue holds messages for one service endpoint; consumers of one queue compete (each message goes
//!   to one of them). Every queue `q` has a dead-letter queue, reported as `q.dlq`.
//! - **Publish** copies a message to every queue [bound](Transport::bind) to its type (fan-out); with no bound queue
//!   it goes nowhere, as on any pub/sub broker. **Send** puts it on one named queue. Both return only once the
//!   engine has accepted the message durably (for durable engines): a returned publish survives a crash.
//! - **At least once.** A [`Delivery`] is held by one consumer until it is settled exactly once:
//!   [`ack`](Delivery::ack) (done, remove it), [`retry`](Delivery::retry) (redeliver after a delay, counting one more
//!   delivery), [`dead_letter`](Delivery::dead_letter) (move it to the DLQ with failure annotations) or
//!   [`release`](Delivery::release) (put it back untouched, e.g. at shutdown). A delivery dropped unsettled is
//!   released; a delivery whose consumer dies is redelivered when the engine notices (visibility timeout, broken
//!   connection). So handlers must tolerate duplicates; the inbox makes their effects exactly-once.
//! - **Ordering** is first-in first-out per queue for engines that say so, but retries and competing consumers
//!   reorder; nothing stronger is promised here.
//! - **Thread safety.** A transport is shared (`Arc<dyn Transport>`) by every publisher and consumer of a process.
//!   A [`Subscription`] is owned by one consumer loop.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::envelope::{RawMessage, attr, dead_letter_attr};
use crate::{Error, Result};

/// Header values set on a message when it is retried or dead-lettered.
pub type Annotations = Vec<(String, String)>;

/// How a consumer takes messages from a queue.
#[derive(Debug, Clone)]
pub struct SubscriptionOptions {
    /// The most messages held unsettled at once by this subscription (handed to handlers and not yet settled; an
    /// engine that sends acknowledgements in the background may briefly hold more, until they are sent).
    pub prefetch: usize,
    /// How long a taken message stays invisible to others before the engine assumes its consumer died and
    /// redelivers it. Engines that detect dead consumers by connection ignore it.
    pub visibility_timeout: Duration,
}

impl Default for SubscriptionOptions {
    fn default() -> Self {
        Self { prefetch: 64, visibility_timeout: Duration::from_secs(30) }
    }
}

/// Moves messages. Implemented once per engine; chosen at run time by URL through an
/// [`EngineRegistry`](crate::EngineRegistry).
///
/// See the [module docs](self) for the delivery contract every implementation honours; the conformance suite in
/// `courier-testkit` checks it.
#[async_trait]
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// Creates `queue` (and its dead-letter queue) if it does not exist. Idempotent.
    async fn declare_queue(&self, queue: &str) -> Result<()>;

    /// Routes messages published with `message_type` to `queue` (declaring the queue). Idempotent.
    async fn bind(&self, queue: &str, message_type: &str) -> Result<()>;

    /// Deletes a queue and its messages (used for temporary reply queues).
    async fn delete_queue(&self, queue: &str) -> Result<()>;

    /// Copies the message to every queue bound to its `type`, visible from `deliver_at` (now if `None`).
    async fn publish(&self, message: RawMessage, deliver_at: Option<DateTime<Utc>>) -> Result<()>;

    /// Puts the message on one queue, visible from `deliver_at` (now if `None`).
    async fn send(&self, queue: &str, message: RawMessage, deliver_at: Option<DateTime<Utc>>) -> Result<()>;

    /// Starts taking messages from `queue`.
    async fn subscribe(&self, queue: &str, options: SubscriptionOptions) -> Result<Box<dyn Subscription>>;

    /// Waits until every acknowledgement handed to this transport has reached the engine (or failed, which leaves
    /// the message to be redelivered). An engine that sends acknowledgements in the background, so that
    /// [`Acker::ack`] returns once one is queued, implements it; the bus calls it at shutdown, once its handlers are
    /// done, so a process that exits right after does not leave handled messages to be delivered again. The
    /// default has nothing to wait for.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// A stream of deliveries from one queue, owned by one consumer loop.
#[async_trait]
pub trait Subscription: Send + fmt::Debug {
    /// Waits until at least one message is available and returns between 1 and `max` of them.
    ///
    /// Cancel-safe: if the returned future is dropped, no message is lost (a message taken but not returned is
    /// released or redelivered after the visibility timeout).
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>>;

    /// Stops taking messages, before the subscription is dropped: an engine that pushes messages ahead of
    /// `next_batch` (a pull request in flight) puts back what is still arriving, so it is not left waiting for its
    /// visibility timeout. The default does nothing.
    async fn close(&mut self) {}
}

/// Settles one delivery with the engine. Implemented by engines; users call the methods on [`Delivery`].
#[async_trait]
pub trait Acker: Send + Sync + fmt::Debug {
    /// The message was handled: remove it. May return once the acknowledgement is queued to be sent with others;
    /// [`Transport::flush`] then waits for it.
    async fn ack(&self) -> Result<()>;
    /// Redeliver after `delay`, with the annotations set as headers.
    async fn retry(&self, delay: Duration, annotations: Annotations) -> Result<()>;
    /// Move to the dead-letter queue with the annotations set as headers.
    async fn dead_letter(&self, annotations: Annotations) -> Result<()>;
    /// Put back untouched for another consumer (not counted as a failed attempt).
    async fn release(&self) -> Result<()>;
    /// Called when a delivery is dropped unsettled. Must not block; best effort (the visibility timeout or a closed
    /// connection redelivers the message anyway).
    fn release_on_drop(&self);
}

/// One message taken from a queue, to be settled exactly once.
#[derive(Debug)]
pub struct Delivery {
    queue: Arc<str>,
    message: RawMessage,
    delivery_count: u32,
    acker: Option<Box<dyn Acker>>,
}

impl Delivery {
    /// Builds a delivery (for engine implementations). `delivery_count` starts at 1. An engine passes its
    /// subscription's `Arc<str>` queue name, so no delivery copies the name.
    pub fn new(queue: impl Into<Arc<str>>, message: RawMessage, delivery_count: u32, acker: Box<dyn Acker>) -> Self {
        Self { queue: queue.into(), message, delivery_count, acker: Some(acker) }
    }

    /// The queue it came from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The message.
    pub fn message(&self) -> &RawMessage {
        &self.message
    }

    /// Takes the message out, leaving an empty one (the delivery can still be settled).
    pub fn take_message(&mut self) -> RawMessage {
        std::mem::take(&mut self.message)
    }

    /// How many times this message has been delivered, this time included (1 on first delivery).
    pub fn delivery_count(&self) -> u32 {
        self.delivery_count
    }

    fn acker(&mut self) -> Result<Box<dyn Acker>> {
        self.acker.take().ok_or_else(|| Error::closed("this delivery was already settled"))
    }

    /// Done: remove the message.
    pub async fn ack(mut self) -> Result<()> {
        self.acker()?.ack().await
    }

    /// Redeliver after `delay`, setting `annotations` as headers.
    pub async fn retry(mut self, delay: Duration, annotations: Annotations) -> Result<()> {
        self.acker()?.retry(delay, annotations).await
    }

    /// Move to the dead-letter queue, setting `annotations` as headers.
    pub async fn dead_letter(mut self, annotations: Annotations) -> Result<()> {
        self.acker()?.dead_letter(annotations).await
    }

    /// Put back untouched.
    pub async fn release(mut self) -> Result<()> {
        self.acker()?.release().await
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(acker) = self.acker.take() {
            acker.release_on_drop();
        }
    }
}

/// Depth of one queue, as `courier queues` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    /// The queue name.
    pub name: String,
    /// Messages ready to be taken now.
    pub ready: u64,
    /// Messages taken and not yet settled.
    pub in_flight: u64,
    /// Messages waiting for their delivery time (scheduled or delayed redelivery).
    pub delayed: u64,
    /// Messages in the queue's dead-letter queue.
    pub dead_lettered: u64,
}

/// A message in a dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The engine's id for this dead-letter entry (used to show, replay, purge).
    pub entry_id: String,
    /// The queue the message was dead-lettered from (where a replay returns it).
    pub queue: String,
    /// When it was dead-lettered.
    pub dead_lettered_at: DateTime<Utc>,
    /// The message with its failure annotations.
    pub message: RawMessage,
}

impl DeadLetter {
    fn header(&self, name: &str) -> &str {
        self.message.header(name).unwrap_or("")
    }
    /// Why it was dead-lettered (`handler-failed`, `undecodable`, `no-handler`, `expired`).
    pub fn reason(&self) -> &str {
        self.header(dead_letter_attr::REASON)
    }
    /// The last error's text.
    pub fn error(&self) -> &str {
        self.header(dead_letter_attr::ERROR)
    }
    /// The failure fingerprint (see [`failure_fingerprint`](crate::failure_fingerprint)).
    pub fn fingerprint(&self) -> &str {
        self.header(dead_letter_attr::FINGERPRINT)
    }
    /// The failing handler.
    pub fn handler(&self) -> &str {
        self.header(dead_letter_attr::HANDLER)
    }
    /// Delivery attempts made.
    pub fn attempts(&self) -> u32 {
        self.header(dead_letter_attr::ATTEMPTS).parse().unwrap_or(0)
    }
    /// The message type, if the message had one.
    pub fn message_type(&self) -> &str {
        self.header(attr::TYPE)
    }
    /// The first failure time, if recorded.
    pub fn first_failure(&self) -> Option<DateTime<Utc>> {
        parse_time(self.header(dead_letter_attr::FIRST_FAILURE))
    }
    /// The last failure time, if recorded.
    pub fn last_failure(&self) -> Option<DateTime<Utc>> {
        parse_time(self.header(dead_letter_attr::LAST_FAILURE))
    }
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
}

/// Which dead letters an [`Admin`] call concerns. The default matches all.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Only from this queue.
    pub queue: Option<String>,
    /// Only with this failure fingerprint.
    pub fingerprint: Option<String>,
    /// Only these entry ids.
    pub entry_ids: Vec<String>,
    /// At most this many (oldest first).
    pub limit: Option<usize>,
}

impl DeadLetterFilter {
    /// Whether an entry matches (engines may use it to filter in memory).
    pub fn matches(&self, dl: &DeadLetter) -> bool {
        self.queue.as_ref().is_none_or(|q| *q == dl.queue)
            && self.fingerprint.as_ref().is_none_or(|f| f == dl.fingerprint())
            && (self.entry_ids.is_empty() || self.entry_ids.contains(&dl.entry_id))
    }
}

/// Inspects and repairs queues: what `courier queues` and `courier dlq` use.
#[async_trait]
pub trait Admin: Send + Sync + fmt::Debug + 'static {
    /// Every queue with its depth, sorted by name.
    async fn queues(&self) -> Result<Vec<QueueStats>>;
    /// Dead letters matching the filter, oldest first.
    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>>;
    /// Returns one dead letter to its queue, ready now, with its attempt count reset and failure annotations
    /// removed. Fails with [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) if it is gone.
    async fn replay_dead_letter(&self, entry_id: &str) -> Result<()>;
    /// Deletes the matching dead letters; returns how many.
    async fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64>;
}

/// Removes the failure annotations from headers, for a replay that starts afresh.
pub fn strip_failure_annotations(headers: &mut crate::Headers) {
    for key in dead_letter_attr::ALL {
        headers.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Keeps the engine traits object-safe: this fails to compile if one stops being usable as `dyn`.
    #[allow(dead_code)]
    fn object_safe(_: &dyn Transport, _: &dyn Subscription, _: &dyn Acker, _: &dyn Admin) {}
}
