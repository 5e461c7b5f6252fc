//! The observer a [`TestHarness`](crate::TestHarness) attaches to each of its buses.

use std::sync::{Mutex, MutexGuard};

use courier_bus::{BusObserver, Consumed, Outcome};
use courier_core::{Envelope, Message};
use tokio::sync::watch;

/// Records everything its buses publish and settle, and announces each change so waiters wake at once.
#[derive(Debug)]
pub(crate) struct Recorder {
    log: Mutex<Log>,
    version: watch::Sender<u64>,
}

/// What a recorder has seen, in order.
#[derive(Debug, Default)]
pub(crate) struct Log {
    /// Envelopes published or sent, once the transport accepted them.
    pub(crate) published: Vec<Envelope>,
    /// Settled deliveries.
    pub(crate) consumed: Vec<Consumed>,
}

impl Recorder {
    pub(crate) fn new() -> Self {
        Self { log: Mutex::new(Log::default()), version: watch::Sender::new(0) }
    }

    pub(crate) fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver that wakes on every change recorded after it is created (or last marked seen).
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn record(&self, f: impl FnOnce(&mut Log)) {
        f(&mut self.log());
        self.version.send_modify(|v| *v += 1);
    }
}

impl BusObserver for Recorder {
    fn published(&self, envelope: &Envelope, _queue: Option<&str>) {
        self.record(|log| log.published.push(envelope.clone()));
    }

    fn consumed(&self, event: &Consumed) {
        self.record(|log| log.consumed.push(event.clone()));
    }
}

/// Whether a settled delivery carried a message of type `M`.
pub(crate) fn is_type<M: Message>(event: &Consumed) -> bool {
    event.envelope.as_ref().is_some_and(|e| e.message_type == M::NAME)
}

impl Log {
    /// The published messages of type `M` that decode.
    pub(crate) fn published<M: Message>(&self) -> Vec<M> {
        self.published.iter().filter(|e| e.message_type == M::NAME).filter_map(|e| e.decode().ok()).collect()
    }

    /// The settled deliveries of type `M` whose outcome matches.
    pub(crate) fn consumed_where<M: Message>(&self, outcome: impl Fn(&Outcome) -> bool) -> Vec<&Consumed> {
        self.consumed.iter().filter(|c| is_type::<M>(c) && outcome(&c.outcome)).collect()
    }

    /// A one-line account of what happened to messages of type `M`, for error messages.
    pub(crate) fn summary<M: Message>(&self) -> String {
        let count = |f: fn(&Outcome) -> bool| self.consumed_where::<M>(f).len();
        let handled = count(|o| matches!(o, Outcome::Handled));
        let redelivered = count(|o| matches!(o, Outcome::Redelivered { .. }));
        let dead = count(|o| matches!(o, Outcome::DeadLettered { .. }));
        let released = self.consumed.iter().filter(|c| c.outcome == Outcome::Released).count();
        let published = self.published.iter().filter(|e| e.message_type == M::NAME).count();
        let mut text = format!(
            "'{}': {published} published or sent, {handled} handled, {redelivered} failed and redelivered, \
             {dead} dead-lettered; {released} released at shutdown (any type)",
            M::NAME
        );
        let last_failure = self.consumed.iter().rev().filter(|c| is_type::<M>(c)).find_map(|c| match &c.outcome {
            Outcome::Redelivered { error, .. } => Some(error.clone()),
            Outcome::DeadLettered { reason, error } => Some(format!("{reason}: {error}")),
            _ => None,
        });
        if let Some(error) = last_failure {
            text.push_str(&format!("; last failure: {error}"));
        }
        text
    }
}
