//! A harness for testing services built on the bus: start buses on a private in-memory engine, publish, wait
//! until messages are consumed, and assert on what was published, handled and dead-lettered, with deadlines
//! instead of sleeps.
//!
//! ```
//! use std::time::Duration;
//! use courier_bus::{Context, HandlerError};
//! use courier_core::{Json, Message};
//! use courier_testkit::TestHarness;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct Charge { cents: u64 }
//! impl Message for Charge { const NAME: &'static str = "pay.charge.v1"; type Codec = Json; }
//!
//! async fn charge(c: Charge, _ctx: Context) -> Result<(), HandlerError> {
//!     if c.cents == 0 { return Err(HandlerError::permanent("nothing to charge")); }
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let harness = TestHarness::new();
//! harness.bus("payments", |b| b.consume(charge)).await?;
//! harness.send("payments", Charge { cents: 0 }).await?;
//! let dead = harness.wait_dead_lettered::<Charge>(1, Duration::from_secs(5)).await?;
//! assert_eq!(dead[0].error, "nothing to charge");
//! assert_eq!(dead[0].message, Some(Charge { cents: 0 }));
//! harness.shutdown().await;
//! # Ok(()) }
//! ```

mod recorder;
mod wait;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_bus::{Bus, BusBuilder, Consumed, MemoryTransport, Outcome};
use courier_core::{DeadLetter, DeadLetterFilter, Engine, Envelope, Message, Result};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use self::recorder::{Log, Recorder, is_type};
pub use self::wait::{WaitError, wait_until, wait_until_async};

/// The service name of the handler-less bus behind [`TestHarness::publish`] and [`TestHarness::send`].
pub const HARNESS_SERVICE: &str = "test-harness";

/// Runs buses for a test and records what they publish and consume.
///
/// [`TestHarness::new`] owns a private [`MemoryTransport`], so tests never see each other's messages;
/// [`TestHarness::with_engine`] runs on any engine instead. Every bus started with [`bus`](Self::bus) reports to
/// the harness; the `wait_*` methods wake on each report (no polling) and fail with a [`WaitError`] saying what was
/// expected and what was seen. Call [`shutdown`](Self::shutdown) at the end of the test.
#[derive(Debug)]
pub struct TestHarness {
    engine: Engine,
    recorder: Arc<Recorder>,
    buses: Mutex<Vec<Bus>>,
    client: OnceCell<Bus>,
}

impl Default for TestHarness {
    fn default() -> Self {
        Self::new()
    }
}

/// A message of type `M` that went to the dead-letter queue, as the consumer reported it.
#[derive(Debug, Clone)]
pub struct DeadLettered<M> {
    /// The message, or `None` if its body could not be decoded as `M`.
    pub message: Option<M>,
    /// The envelope as delivered.
    pub envelope: Envelope,
    /// `handler-failed`, `undecodable`, `no-handler` or `expired`.
    pub reason: String,
    /// The last error's text.
    pub error: String,
    /// The delivery attempt that gave up (1 on first delivery).
    pub attempt: u32,
}

impl TestHarness {
    /// A harness on a private in-memory engine.
    pub fn new() -> Self {
        Self::with_engine(MemoryTransport::new().into_engine())
    }

    /// A harness on `engine` (e.g. a durable engine under test). Other users of the engine are not recorded.
    pub fn with_engine(engine: Engine) -> Self {
        Self { engine, recorder: Arc::new(Recorder::new()), buses: Mutex::new(Vec::new()), client: OnceCell::new() }
    }

    /// The engine the buses run on (for [`Admin`](courier_core::Admin) queries or raw transport calls).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Starts a bus for `service` on the harness's engine, reporting to the harness; `configure` adds handlers
    /// and settings (`|b| b.consume(ship).retry(Retry::none())`). The harness shuts it down in
    /// [`shutdown`](Self::shutdown).
    pub async fn bus(
        &self,
        service: impl Into<String>,
        configure: impl FnOnce(BusBuilder) -> BusBuilder,
    ) -> Result<Bus> {
        let builder = Bus::builder(service).engine_instance(self.engine.clone()).observer(self.recorder.clone());
        let bus = configure(builder).start().await?;
        self.buses.lock().unwrap_or_else(|p| p.into_inner()).push(bus.clone());
        Ok(bus)
    }

    /// The harness's own bus (service [`HARNESS_SERVICE`], no handlers), started on first use.
    pub async fn client(&self) -> Result<&Bus> {
        self.client.get_or_try_init(|| self.bus(HARNESS_SERVICE, |b| b)).await
    }

    /// Publishes an event from the harness's own bus.
    pub async fn publish<M: Message>(&self, message: M) -> Result<()> {
        self.client().await?.publish(message).await
    }

    /// Sends a command to `endpoint` from the harness's own bus.
    pub async fn send<M: Message>(&self, endpoint: &str, message: M) -> Result<()> {
        self.client().await?.send(endpoint, message).await
    }

    /// Every message of type `M` published or sent so far by the harness's buses (handlers included), in order.
    pub fn published<M: Message>(&self) -> Vec<M> {
        self.recorder.log().published()
    }

    /// Every envelope published or sent so far by the harness's buses, in order.
    pub fn published_envelopes(&self) -> Vec<Envelope> {
        self.recorder.log().published.clone()
    }

    /// The messages of type `M` handled successfully (and acknowledged) so far, in order.
    pub fn consumed<M: Message>(&self) -> Vec<M> {
        handled::<M>(&self.recorder.log())
    }

    /// Every settled delivery so far, in order.
    pub fn outcomes(&self) -> Vec<Consumed> {
        self.recorder.log().consumed.clone()
    }

    /// The deliveries that failed so far: redelivered after a failure, or dead-lettered.
    pub fn faulted(&self) -> Vec<Consumed> {
        let log = self.recorder.log();
        let failed = |c: &&Consumed| matches!(c.outcome, Outcome::Redelivered { .. } | Outcome::DeadLettered { .. });
        log.consumed.iter().filter(failed).cloned().collect()
    }

    /// The messages of type `M` dead-lettered so far, in order.
    pub fn dead_lettered<M: Message>(&self) -> Vec<DeadLettered<M>> {
        dead_lettered::<M>(&self.recorder.log())
    }

    /// Waits until at least `n` messages of type `M` have been handled and acknowledged; returns all handled so
    /// far.
    pub async fn wait_consumed<M: Message>(&self, n: usize, timeout: Duration) -> Result<Vec<M>, WaitError> {
        let expected = format!("{n} handled '{}' message(s)", M::NAME);
        self.wait_for(timeout, expected, |log| Some(handled::<M>(log)).filter(|v| v.len() >= n), Log::summary::<M>)
            .await
    }

    /// Waits until at least `n` messages of type `M` have been dead-lettered; returns all dead-lettered so far.
    pub async fn wait_dead_lettered<M: Message>(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<DeadLettered<M>>, WaitError> {
        let expected = format!("{n} dead-lettered '{}' message(s)", M::NAME);
        let check = |log: &Log| Some(dead_lettered::<M>(log)).filter(|v| v.len() >= n);
        self.wait_for(timeout, expected, check, Log::summary::<M>).await
    }

    /// Waits until `predicate` holds for the deliveries settled so far (of any type, in order); returns them.
    /// `expected` describes the condition in the error.
    pub async fn wait_outcomes(
        &self,
        timeout: Duration,
        expected: &str,
        mut predicate: impl FnMut(&[Consumed]) -> bool,
    ) -> Result<Vec<Consumed>, WaitError> {
        let check = |log: &Log| predicate(&log.consumed).then(|| log.consumed.clone());
        let seen = |log: &Log| describe_outcomes(&log.consumed);
        self.wait_for(timeout, expected.to_owned(), check, seen).await
    }

    /// The engine's dead letters (from every queue).
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        self.engine.admin.dead_letters(&DeadLetterFilter::default()).await
    }

    /// Shuts down every bus the harness started (in-flight handlers finish first). Idempotent.
    pub async fn shutdown(&self) {
        let buses = std::mem::take(&mut *self.buses.lock().unwrap_or_else(|p| p.into_inner()));
        futures::future::join_all(buses.iter().map(Bus::shutdown)).await;
    }

    /// Checks `check` against the log on every change until it returns a value or `timeout` passes.
    async fn wait_for<T>(
        &self,
        timeout: Duration,
        expected: String,
        mut check: impl FnMut(&Log) -> Option<T>,
        seen: impl Fn(&Log) -> String,
    ) -> Result<T, WaitError> {
        let deadline = Instant::now() + timeout;
        let mut changes = self.recorder.subscribe();
        loop {
            // Mark the current version seen before looking, so a change made after the check wakes us.
            changes.borrow_and_update();
            if let Some(found) = check(&self.recorder.log()) {
                return Ok(found);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(WaitError::new(expected, seen(&self.recorder.log()), timeout)),
            }
        }
    }
}

fn handled<M: Message>(log: &Log) -> Vec<M> {
    log.consumed_where::<M>(|o| *o == Outcome::Handled)
        .into_iter()
        .filter_map(|c| c.envelope.as_ref()?.decode().ok())
        .collect()
}

fn dead_lettered<M: Message>(log: &Log) -> Vec<DeadLettered<M>> {
    log.consumed
        .iter()
        .filter(|c| is_type::<M>(c))
        .filter_map(|c| match (&c.outcome, &c.envelope) {
            (Outcome::DeadLettered { reason, error }, Some(envelope)) => Some(DeadLettered {
                message: envelope.decode().ok(),
                envelope: envelope.clone(),
                reason: reason.clone(),
                error: error.clone(),
                attempt: c.attempt,
            }),
            _ => None,
        })
        .collect()
}

fn describe_outcomes(consumed: &[Consumed]) -> String {
    if consumed.is_empty() {
        return "no settled deliveries".to_owned();
    }
    let items: Vec<String> = consumed
        .iter()
        .map(|c| {
            let message_type = c.envelope.as_ref().map_or("?", |e| e.message_type.as_str());
            let outcome = match &c.outcome {
                Outcome::Handled => "handled".to_owned(),
                Outcome::Redelivered { error, .. } => format!("redelivered ({error})"),
                Outcome::DeadLettered { reason, error } => format!("dead-lettered ({reason}: {error})"),
                Outcome::Released => "released".to_owned(),
            };
            format!("{message_type} on '{}' attempt {}: {outcome}", c.queue, c.attempt)
        })
        .collect();
    format!("{} settled deliveries: [{}]", consumed.len(), items.join("; "))
}
