//! The suite is not vacuous: an engine that breaks the contract in a known way fails the case that checks it.
//!
//! `Faulty` wraps the in-memory engine and breaks one rule; each test runs the case that should notice.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use courier_bus::MemoryTransport;
use courier_core::{
    Acker, Admin, Annotations, DeadLetter, DeadLetterFilter, Delivery, Engine, QueueStats, RawMessage, Result,
    Subscription, SubscriptionOptions, Transport,
};
use courier_testkit::conformance::{cases, run_case};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Delivers scheduled and delayed messages at once.
    IgnoreDelay,
    /// Stores every published or sent message twice.
    Duplicate,
    /// Puts acked messages back instead of removing them.
    AckIsRelease,
}

#[derive(Debug)]
struct Faulty {
    inner: MemoryTransport,
    fault: Fault,
}

fn faulty(fault: Fault) -> Engine {
    Engine::new(Arc::new(Faulty { inner: MemoryTransport::new(), fault }))
}

impl Faulty {
    fn deliver_at(&self, at: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        if self.fault == Fault::IgnoreDelay { None } else { at }
    }

    fn copies(&self) -> usize {
        if self.fault == Fault::Duplicate { 2 } else { 1 }
    }
}

#[async_trait]
impl Transport for Faulty {
    async fn declare_queue(&self, queue: &str) -> Result<()> {
        self.inner.declare_queue(queue).await
    }
    async fn bind(&self, queue: &str, message_type: &str) -> Result<()> {
        self.inner.bind(queue, message_type).await
    }
    async fn delete_queue(&self, queue: &str) -> Result<()> {
        self.inner.delete_queue(queue).await
    }
    async fn publish(&self, message: RawMessage, deliver_at: Option<DateTime<Utc>>) -> Result<()> {
        for _ in 0..self.copies() {
            self.inner.publish(message.clone(), self.deliver_at(deliver_at)).await?;
        }
        Ok(())
    }
    async fn send(&self, queue: &str, message: RawMessage, deliver_at: Option<DateTime<Utc>>) -> Result<()> {
        for _ in 0..self.copies() {
            self.inner.send(queue, message.clone(), self.deliver_at(deliver_at)).await?;
        }
        Ok(())
    }
    async fn subscribe(&self, queue: &str, options: SubscriptionOptions) -> Result<Box<dyn Subscription>> {
        let inner = self.inner.subscribe(queue, options).await?;
        Ok(Box::new(FaultySubscription { inner, fault: self.fault }))
    }
    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }
}

#[async_trait]
impl Admin for Faulty {
    async fn queues(&self) -> Result<Vec<QueueStats>> {
        self.inner.queues().await
    }
    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        self.inner.dead_letters(filter).await
    }
    async fn replay_dead_letter(&self, entry_id: &str) -> Result<()> {
        self.inner.replay_dead_letter(entry_id).await
    }
    async fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64> {
        self.inner.purge_dead_letters(filter).await
    }
}

#[derive(Debug)]
struct FaultySubscription {
    inner: Box<dyn Subscription>,
    fault: Fault,
}

#[async_trait]
impl Subscription for FaultySubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>> {
        let batch = self.inner.next_batch(max).await?;
        let wrap = |d: Delivery| {
            let (queue, message, count) = (d.queue().to_owned(), d.message().clone(), d.delivery_count());
            let acker = FaultyAcker { inner: Mutex::new(Some(d)), fault: self.fault };
            Delivery::new(queue, message, count, Box::new(acker))
        };
        Ok(batch.into_iter().map(wrap).collect())
    }
}

#[derive(Debug)]
struct FaultyAcker {
    inner: Mutex<Option<Delivery>>,
    fault: Fault,
}

impl FaultyAcker {
    fn take(&self) -> Delivery {
        self.inner.lock().unwrap().take().expect("settled once")
    }
}

#[async_trait]
impl Acker for FaultyAcker {
    async fn ack(&self) -> Result<()> {
        match self.fault {
            Fault::AckIsRelease => self.take().release().await,
            _ => self.take().ack().await,
        }
    }
    async fn retry(&self, delay: Duration, annotations: Annotations) -> Result<()> {
        let delay = if self.fault == Fault::IgnoreDelay { Duration::ZERO } else { delay };
        self.take().retry(delay, annotations).await
    }
    async fn dead_letter(&self, annotations: Annotations) -> Result<()> {
        self.take().dead_letter(annotations).await
    }
    async fn release(&self) -> Result<()> {
        self.take().release().await
    }
    fn release_on_drop(&self) {
        drop(self.inner.lock().unwrap().take());
    }
}

#[test]
#[should_panic(expected = "expected at least 300ms")]
fn ignoring_delivery_times_fails_scheduled_send() {
    run_case(|| async { faulty(Fault::IgnoreDelay) }, cases::scheduled_send);
}

#[test]
#[should_panic(expected = "expected at least 100ms")]
fn ignoring_retry_delays_fails_delayed_redelivery() {
    run_case(|| async { faulty(Fault::IgnoreDelay) }, cases::delayed_redelivery);
}

#[test]
#[should_panic(expected = "should get each event exactly once")]
fn duplicating_messages_fails_fan_out() {
    run_case(|| async { faulty(Fault::Duplicate) }, cases::fan_out);
}

#[test]
#[should_panic(expected = "were not handled exactly once")]
fn duplicating_messages_fails_exactly_once_at_scale() {
    run_case(|| async { faulty(Fault::Duplicate) }, |engine| cases::exactly_once_at_scale(engine, 2, 100));
}

#[test]
#[should_panic(expected = "only the retried message should come back")]
fn acks_that_release_fail_ack_nack_release() {
    run_case(|| async { faulty(Fault::AckIsRelease) }, cases::ack_nack_release);
}
