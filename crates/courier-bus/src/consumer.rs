//! The consumer runtime: takes deliveries from a queue, runs the middleware stack and handler under the prefetch
//! and concurrency limits, and settles each delivery (ack, delayed redelivery or dead-letter).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use courier_core::{Delivery, Envelope, Subscription, TraceParent, dead_letter_attr as dl, failure_fingerprint};
use futures::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handler::Registered;
use crate::observer::{Consumed, Outcome};
use crate::retry::RetryDecision;
use crate::{Bus, Context, HandlerError, Middleware, Next, Retry};

/// One queue's consumer configuration, fixed at start.
pub(crate) struct Endpoint {
    pub(crate) queue: Arc<str>,
    pub(crate) handlers: Handlers,
    pub(crate) middleware: Vec<Arc<dyn Middleware>>,
    pub(crate) retry: Retry,
    pub(crate) prefetch: usize,
    pub(crate) concurrency: usize,
    pub(crate) shutdown_timeout: Duration,
}

/// An endpoint's handlers by message type, in a vector sorted by type and searched by halves: an endpoint has a
/// handful of types, and hashing a type name (SipHash) cost more than the few comparisons.
pub(crate) struct Handlers(Vec<(String, Registered)>);

impl Handlers {
    pub(crate) fn new(handlers: HashMap<String, Registered>) -> Self {
        let mut handlers: Vec<_> = handlers.into_iter().collect();
        handlers.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
        Self(handlers)
    }

    fn get(&self, message_type: &str) -> Option<&Registered> {
        let found = self.0.binary_search_by(|(handled, _)| handled.as_str().cmp(message_type));
        found.ok().map(|i| &self.0[i].1)
    }
}

/// A gate consumers check before taking messages: while closed, they take nothing (messages wait in the queue).
#[async_trait::async_trait]
pub trait ConsumerGate: Send + Sync + std::fmt::Debug + 'static {
    /// Returns when consumers may take messages.
    async fn wait_open(&self);
}

/// What every handling of one endpoint shares.
struct Shared {
    bus: Bus,
    endpoint: Arc<Endpoint>,
    abort: CancellationToken,
}

/// Runs one endpoint until `shutdown`, then drains in-flight work within the endpoint's shutdown timeout.
pub(crate) async fn run_endpoint(
    bus: Bus,
    endpoint: Arc<Endpoint>,
    mut subscription: Box<dyn Subscription>,
    gates: Vec<Arc<dyn ConsumerGate>>,
    shutdown: CancellationToken,
) {
    let prefetch = Arc::new(Semaphore::new(endpoint.prefetch.max(1)));
    let running = Arc::new(Semaphore::new(endpoint.concurrency.max(1)));
    // A task for each handling that waits, tracked (not joined: nothing comes back from a task) so shutdown can
    // wait for them; `abort` stops handlers still running when the shutdown timeout ends. A `JoinSet` did the same
    // with a lock and a wake of this loop for every task that ended.
    let tasks = TaskTracker::new();
    // What every handling shares, behind one reference count (cloning a `CancellationToken` takes a lock).
    let shared = Arc::new(Shared { bus, endpoint, abort: CancellationToken::new() });
    let (bus, endpoint) = (&shared.bus, &shared.endpoint);
    let mut failures = 0u32;
    // Deliveries still to hand straight to tasks after handlers' first polls ran long (see `INLINE_LIMIT`), and
    // how many first polls in a row did.
    let (mut spawn_next, mut slow_in_a_row) = (0u32, 0u32);
    // Deliveries taken but not started when shutdown came: released only after the subscription is closed, so an
    // engine that releases by publishing a copy cannot hand that copy straight back to this closing subscription.
    let mut unstarted = Vec::new();
    'taking: loop {
        for gate in &gates {
            tokio::select! {
                _ = shutdown.cancelled() => break 'taking,
                _ = gate.wait_open() => {}
            }
        }
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = prefetch.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
        };
        let want = 1 + prefetch.available_permits();
        let batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            batch = subscription.next_batch(want) => batch,
        };
        let batch = match batch {
            Ok(batch) => {
                failures = 0;
                batch
            }
            Err(e) => {
                failures += 1;
                let wait = Duration::from_millis(100u64.saturating_mul(1 << failures.min(6)));
                tracing::warn!(queue = %endpoint.queue, error = %e, retry_in = ?wait, "cannot take messages");
                tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(wait) => {} }
                continue;
            }
        };
        // A gate may have closed while the take was pending (a breaker opened): put the batch back untouched
        // rather than run handlers that would fail and burn retries; the loop then waits for the gate.
        if !gates.iter().all(|gate| gate.wait_open().now_or_never().is_some()) {
            for delivery in batch {
                release(bus, &endpoint.queue, delivery).await;
            }
            continue;
        }
        // The batch's prefetch permits, one a delivery, taken together (the first before the take): a handling that
        // finishes at its first poll leaves its permit for the next delivery of the batch, and what is left goes back
        // when the batch is done, one release (a lock of the semaphore's) instead of one a message; a handling that
        // waits takes its own into its task.
        let mut held = first;
        if let Some(more) = batch.len().checked_sub(1).filter(|&n| n > 0) {
            let more = u32::try_from(more).unwrap_or(u32::MAX);
            if let Ok(more) = prefetch.clone().try_acquire_many_owned(more) {
                held.merge(more);
            }
        }
        // Permits in `held` not spoken for: always `held.num_permits()` once a delivery is done with.
        let mut covered = held.num_permits();
        let mut batch = batch.into_iter();
        // When the last first poll ended, while this loop has not waited since: the next first poll is timed from
        // there, one clock read a handling instead of two (the few steps in between take well under a microsecond).
        let mut mark: Option<Instant> = None;
        while let Some(delivery) = batch.next() {
            match covered.checked_sub(1) {
                Some(left) => covered = left,
                // The transport returned more than asked (and handlers in tasks hold the rest): wait for room rather
                // than exceed prefetch.
                None => {
                    mark = None;
                    match permit_unless_shutdown(&prefetch, &shutdown).await {
                        Some(permit) => held.merge(permit),
                        None => {
                            unstarted.push(delivery);
                            unstarted.extend(batch.by_ref());
                            break 'taking;
                        }
                    }
                }
            }
            // Handlers start in delivery order: the concurrency permit is taken here, before spawning, so with a
            // concurrency of 1 messages are handled strictly one after another in queue order. Taken at once when
            // one is free: waiting on shutdown as well registers with the token, under its lock.
            let free = match shutdown.is_cancelled() {
                false => running.clone().try_acquire_owned().ok(),
                true => None,
            };
            let running = match free {
                Some(permit) => permit,
                None => {
                    mark = None;
                    match permit_unless_shutdown(&running, &shutdown).await {
                        Some(permit) => permit,
                        None => {
                            unstarted.push(delivery);
                            unstarted.extend(batch.by_ref());
                            break 'taking;
                        }
                    }
                }
            };
            let shared = shared.clone();
            let handling = async move {
                let Shared { bus, endpoint, abort } = &*shared;
                // The handler's own panics are caught in `process`; this catches the rest (an observer, a metrics
                // recorder), so that one bad message never stops the consumer loop, whether it is handled here or
                // in a task. The delivery, dropped by the unwinding, is released for redelivery.
                let processed = AssertUnwindSafe(process(bus, endpoint, delivery, running, abort)).catch_unwind();
                if let Err(panic) = processed.await {
                    tracing::error!(
                        queue = %endpoint.queue,
                        panic = %panic_message(panic),
                        "a panic outside the handler stopped this message's handling; it will be redelivered"
                    );
                }
            };
            // A handling that continues as a task takes its delivery's prefetch permit with it.
            let spawn = |handling, held: &mut OwnedSemaphorePermit| {
                let own = held.split(1);
                tasks.spawn(async move {
                    let _held = own;
                    handling.await
                });
            };
            if spawn_next > 0 {
                spawn_next -= 1;
                spawn(Box::pin(handling), &mut held);
                mark = None;
                continue;
            }
            // Polled once here first: a handling that finishes at once (most do, with an engine that acknowledges
            // in the background) costs no task. One that waits continues as a task of its own.
            let mut handling = Box::pin(handling);
            let started = mark.unwrap_or_else(Instant::now);
            let polled = futures::poll!(handling.as_mut());
            let ended = Instant::now();
            mark = Some(ended);
            if ended.duration_since(started) <= INLINE_LIMIT {
                slow_in_a_row = 0;
            } else {
                slow_in_a_row += 1;
                if slow_in_a_row >= SLOW_IN_A_ROW {
                    (slow_in_a_row, spawn_next) = (0, SPAWN_AFTER_SLOW);
                }
            }
            if polled.is_pending() {
                spawn(handling, &mut held);
                // Spawning may wake a parked worker (a system call): not part of the next first poll.
                mark = None;
            } else {
                covered += 1;
            }
        }
    }
    subscription.close().await;
    drop(subscription);
    for delivery in unstarted {
        release(bus, &endpoint.queue, delivery).await;
    }
    tasks.close();
    if tokio::time::timeout(endpoint.shutdown_timeout, tasks.wait()).await.is_err() {
        tracing::warn!(
            queue = %endpoint.queue,
            remaining = tasks.len(),
            "in-flight handlers did not finish within the shutdown timeout; releasing their messages for redelivery"
        );
        shared.abort.cancel();
        // A stopped handler's delivery is dropped, which releases it; what is left is settling with the engine,
        // bounded by the engine's own timeouts. Wait for that a little, not forever.
        if tokio::time::timeout(SETTLE_AFTER_ABORT, tasks.wait()).await.is_err() {
            tracing::warn!(queue = %endpoint.queue, remaining = tasks.len(), "settling still running after shutdown");
        }
    }
}

/// A permit of `semaphore` once one is free, or `None` once shutdown comes first (or the semaphore is closed).
async fn permit_unless_shutdown(
    semaphore: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => None,
        permit = semaphore.clone().acquire_owned() => permit.ok(),
    }
}

/// When the first polls of [`SLOW_IN_A_ROW`] handlings in a row each run longer than this (CPU-bound work before
/// the handler's first wait), the consumer hands the next [`SPAWN_AFTER_SLOW`] deliveries straight to tasks of
/// their own, so such handlers run in parallel on every worker thread instead of one after another on the
/// consumer's loop. A handling that finishes at once (most do: in the Redis bench 99% of first polls take under
/// 2 us) is cheaper run in place than as a task; a single slow poll is usually the thread being preempted.
const INLINE_LIMIT: Duration = Duration::from_micros(10);
/// See [`INLINE_LIMIT`].
const SLOW_IN_A_ROW: u32 = 3;
/// See [`INLINE_LIMIT`].
const SPAWN_AFTER_SLOW: u32 = 1000;

/// How long shutdown waits, after stopping handlers that outran the shutdown timeout, for settles in progress.
const SETTLE_AFTER_ABORT: Duration = Duration::from_secs(5);

async fn release(bus: &Bus, queue: &str, delivery: Delivery) {
    let attempt = delivery.delivery_count();
    if let Err(e) = delivery.release().await {
        tracing::warn!(queue, error = %e, "could not release a message at shutdown; it will be redelivered");
    }
    bus.observe(|| Consumed { queue: queue.to_owned(), attempt, envelope: None, outcome: Outcome::Released });
}

/// Handles one delivery end to end. Never panics on any input: a bad message is dead-lettered with its reason.
/// `running` is the concurrency permit: released as soon as the handler returns, so settling (an engine round
/// trip) does not hold back the next handler; the prefetch permit still bounds unsettled messages (up to the
/// settle being handed to the engine: one that acknowledges in the background holds a few more until it sends).
async fn process(
    bus: &Bus,
    endpoint: &Endpoint,
    mut delivery: Delivery,
    running: OwnedSemaphorePermit,
    abort: &CancellationToken,
) {
    let attempt = delivery.delivery_count();
    let queue: &str = &endpoint.queue;
    let envelope = match Envelope::from_raw(delivery.take_message()) {
        Ok(envelope) => envelope,
        Err(e) => {
            let failure = Failure { reason: "undecodable", kind: "envelope", handler: "-", error: e.to_string() };
            return Box::pin(dead_letter(bus, queue, delivery, None, failure)).await;
        }
    };
    if envelope.expires_at.is_some_and(|at| at < Utc::now()) {
        let failure = Failure { reason: "expired", kind: "expired", handler: "-", error: "message expired".into() };
        return Box::pin(dead_letter(bus, queue, delivery, Some(envelope), failure)).await;
    }
    let Some(registered) = endpoint.handlers.get(&envelope.message_type) else {
        let error = format!(
            "no handler for message type '{}' on queue '{queue}'; register one with .consume(...) or stop sending it here",
            envelope.message_type
        );
        let failure = Failure { reason: "no-handler", kind: "no-handler", handler: "-", error };
        return Box::pin(dead_letter(bus, queue, delivery, Some(envelope), failure)).await;
    };
    let ctx = Context::new(envelope, endpoint.queue.clone(), attempt, bus.clone(), registered.metrics.clone());
    let run = Next::new(&endpoint.middleware, &*registered.handler).run(&ctx);
    // The handler first: one that finishes at its first poll never registers with `abort`.
    let result = tokio::select! {
        biased;
        result = AssertUnwindSafe(run).catch_unwind() => match result {
            Ok(result) => result,
            Err(panic) => Err(HandlerError::transient(panic_message(panic))),
        },
        // Shutdown gave up waiting: dropping the delivery releases it for redelivery.
        _ = abort.cancelled() => return,
    };
    drop(running);
    let envelope = ctx.into_envelope();
    match result {
        Ok(()) => {
            if let Err(e) = delivery.ack().await {
                tracing::warn!(queue, error = %e, "ack failed; the message will be redelivered and must be deduplicated");
            }
            bus.observe(|| Consumed {
                queue: queue.to_owned(),
                attempt,
                envelope: Some(envelope),
                outcome: Outcome::Handled,
            });
        }
        // Boxed: failures are the rarer path, and their state would make every handling's future larger.
        Err(error) => {
            Box::pin(settle_failure(bus, endpoint, delivery, envelope, attempt, error, &registered.name)).await
        }
    }
}

/// Settles a delivery whose handler failed: a redelivery (after the retry policy's delay) or the dead-letter queue.
async fn settle_failure(
    bus: &Bus,
    endpoint: &Endpoint,
    delivery: Delivery,
    envelope: Envelope,
    attempt: u32,
    error: HandlerError,
    handler: &str,
) {
    let queue: &str = &endpoint.queue;
    let trace_id = envelope.traceparent.as_deref().and_then(TraceParent::parse).map(|t| t.trace_id_hex());
    tracing::warn!(
        queue,
        message.id = %envelope.id,
        message.type = %envelope.message_type,
        trace_id = trace_id.as_deref().unwrap_or("-"),
        attempt,
        handler,
        error = %error,
        kind = error.kind().as_str(),
        "handler failed"
    );
    match endpoint.retry.decide(attempt, &error) {
        RetryDecision::Redeliver(delay) => {
            let now = now_rfc3339();
            let first = envelope.extensions.get(dl::FIRST_FAILURE).cloned().unwrap_or_else(|| now.clone());
            let annotations = vec![
                (dl::FIRST_FAILURE.to_owned(), first),
                (dl::LAST_FAILURE.to_owned(), now),
                (dl::LAST_ERROR.to_owned(), truncate(&error.to_string())),
            ];
            metrics::counter!("courier_redelivered_total", "queue" => queue.to_owned()).increment(1);
            if let Err(e) = delivery.retry(delay, annotations).await {
                tracing::warn!(queue, error = %e, "could not schedule the redelivery; the engine will redeliver");
            }
            let outcome = Outcome::Redelivered { delay, error: error.to_string() };
            bus.observe(|| Consumed { queue: queue.to_owned(), attempt, envelope: Some(envelope), outcome });
        }
        RetryDecision::DeadLetter => {
            let reason = if error.kind() == crate::FailureKind::Undecodable { "undecodable" } else { "handler-failed" };
            let failure = Failure { reason, kind: error.kind().as_str(), handler, error: error.to_string() };
            dead_letter(bus, queue, delivery, Some(envelope), failure).await;
        }
    }
}

struct Failure<'a> {
    reason: &'static str,
    kind: &'a str,
    handler: &'a str,
    error: String,
}

/// Dead-letters a delivery. A rare path: `process` boxes it (and `settle_failure`, itself boxed), so it does not
/// bloat every handling task.
async fn dead_letter(bus: &Bus, queue: &str, delivery: Delivery, envelope: Option<Envelope>, failure: Failure<'_>) {
    let attempt = delivery.delivery_count();
    let now = now_rfc3339();
    let first =
        envelope.as_ref().and_then(|e| e.extensions.get(dl::FIRST_FAILURE).cloned()).unwrap_or_else(|| now.clone());
    let error = truncate(&failure.error);
    let annotations = vec![
        (dl::REASON.to_owned(), failure.reason.to_owned()),
        (dl::ERROR.to_owned(), error.clone()),
        (dl::ERROR_KIND.to_owned(), failure.kind.to_owned()),
        (dl::HANDLER.to_owned(), failure.handler.to_owned()),
        (dl::ATTEMPTS.to_owned(), attempt.to_string()),
        (dl::QUEUE.to_owned(), queue.to_owned()),
        (dl::FINGERPRINT.to_owned(), failure_fingerprint(failure.kind, failure.handler, &failure.error)),
        (dl::FIRST_FAILURE.to_owned(), first),
        (dl::LAST_FAILURE.to_owned(), now),
    ];
    tracing::warn!(queue, reason = failure.reason, error = %error, attempt, "message dead-lettered");
    metrics::counter!("courier_dead_lettered_total", "queue" => queue.to_owned(), "reason" => failure.reason)
        .increment(1);
    if let Err(e) = delivery.dead_letter(annotations).await {
        tracing::error!(queue, error = %e, "could not dead-letter the message; the engine will redeliver it");
    }
    if let Some(envelope) = &envelope {
        bus.fault_reply(envelope, &error).await;
    }
    let outcome = Outcome::DeadLettered { reason: failure.reason.to_owned(), error };
    bus.observe(|| Consumed { queue: queue.to_owned(), attempt, envelope, outcome });
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn truncate(s: &str) -> String {
    const MAX: usize = 2000;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned());
    format!("handler panicked: {text}")
}
