//! What the cases share: unique names, handler-side records to wait on, queue checks and clean-up.

use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_bus::{Context, Handler, HandlerError};
use courier_core::{DeadLetter, DeadLetterFilter, Delivery, Engine, Message, QueueStats, Subscription};
use tokio::sync::watch;
use tokio::time::Instant;

use super::WAIT;
use super::messages::Tagged;
use crate::wait_until_async;

/// A fresh id for one run of a case.
pub(crate) fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A queue or service name no other run uses: `ct-<what>-<16 hex>`.
pub(crate) fn unique(what: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("ct-{what}-{}", &id[..16])
}

/// Awaits `future` for at most [`WAIT`], panicking with `what` if it does not finish.
pub(crate) async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what} did not finish within {WAIT:?}"),
    }
}

/// Unwraps an engine or bus result, panicking with `what` and the error.
pub(crate) fn ok<T, E: std::fmt::Display>(what: &str, result: Result<T, E>) -> T {
    result.unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

/// Things a handler saw, in order; a test waits on it without polling.
#[derive(Debug)]
pub(crate) struct Seen<T> {
    items: Mutex<Vec<T>>,
    len: watch::Sender<usize>,
}

impl<T: Clone> Seen<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self { items: Mutex::new(Vec::new()), len: watch::Sender::new(0) })
    }

    pub(crate) fn push(&self, item: T) {
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        items.push(item);
        let len = items.len();
        drop(items);
        self.len.send_replace(len);
    }

    pub(crate) fn snapshot(&self) -> Vec<T> {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn len(&self) -> usize {
        *self.len.borrow()
    }

    /// Waits until at least `n` items were seen, for at most [`WAIT`]; panics saying what was seen otherwise.
    pub(crate) async fn wait_for(&self, n: usize, what: &str) -> Vec<T> {
        let mut rx = self.len.subscribe();
        if tokio::time::timeout(WAIT, rx.wait_for(|len| *len >= n)).await.is_err() {
            panic!("expected {n} {what} within {WAIT:?}, saw {}", self.len());
        }
        self.snapshot()
    }
}

/// A handler that records `map(message, ctx)` for messages of this run, ignores others, and succeeds.
pub(crate) fn record<M, T>(run: &str, seen: &Arc<Seen<T>>, map: fn(&M, &Context) -> T) -> impl Handler<M>
where
    M: Message + Tagged,
    T: Clone + Send + 'static,
{
    let (run, seen) = (run.to_owned(), seen.clone());
    move |message: M, ctx: Context| {
        if message.run() == run {
            seen.push(map(&message, &ctx));
        }
        std::future::ready(Ok::<(), HandlerError>(()))
    }
}

/// Takes exactly `n` deliveries from `subscription`, checking that no batch exceeds what was asked.
pub(crate) async fn take(subscription: &mut Box<dyn Subscription>, n: usize) -> Vec<Delivery> {
    let deadline = Instant::now() + WAIT;
    let mut taken = Vec::new();
    while taken.len() < n {
        let want = n - taken.len();
        match tokio::time::timeout_at(deadline, subscription.next_batch(want)).await {
            Ok(Ok(batch)) => {
                assert!(!batch.is_empty(), "next_batch({want}) returned an empty batch; it must wait for a message");
                assert!(batch.len() <= want, "next_batch({want}) returned {} deliveries", batch.len());
                taken.extend(batch);
            }
            Ok(Err(e)) => panic!("next_batch failed: {e}"),
            Err(_) => panic!("expected {n} deliveries within {WAIT:?}, got {}", taken.len()),
        }
    }
    taken
}

/// The stats of `queue`, or empty stats if the engine does not list it.
pub(crate) async fn queue_stats(engine: &Engine, queue: &str) -> QueueStats {
    let queues = ok("listing queues", engine.admin.queues().await);
    queues
        .into_iter()
        .find(|q| q.name == queue)
        .unwrap_or_else(|| QueueStats { name: queue.to_owned(), ..Default::default() })
}

/// Waits until `queue` holds nothing ready, in flight or delayed: every message was settled for good.
pub(crate) async fn assert_drained(engine: &Engine, queue: &str) {
    let drained = wait_until_async(WAIT, || async {
        let stats = queue_stats(engine, queue).await;
        stats.ready == 0 && stats.in_flight == 0 && stats.delayed == 0
    })
    .await;
    if drained.is_err() {
        let stats = queue_stats(engine, queue).await;
        panic!("queue '{queue}' should be empty once everything was handled, but it has {stats:?}");
    }
}

/// Waits until `queue`'s dead-letter queue holds at least `n` entries; returns them.
pub(crate) async fn dead_letters(engine: &Engine, queue: &str, n: usize) -> Vec<DeadLetter> {
    let filter = DeadLetterFilter { queue: Some(queue.to_owned()), ..Default::default() };
    let found = wait_until_async(WAIT, || async {
        ok("listing dead letters", engine.admin.dead_letters(&filter).await).len() >= n
    })
    .await;
    let entries = ok("listing dead letters", engine.admin.dead_letters(&filter).await);
    if found.is_err() {
        panic!("expected {n} dead letters from '{queue}' within {WAIT:?}, found {}: {entries:#?}", entries.len());
    }
    entries
}

/// Removes what a case left behind: the queues' dead letters, then the queues (and their bindings).
/// Best effort: a failure here is not the engine's conformance problem.
pub(crate) async fn cleanup(engine: &Engine, queues: &[&str]) {
    for queue in queues {
        let filter = DeadLetterFilter { queue: Some((*queue).to_owned()), ..Default::default() };
        let _ = tokio::time::timeout(WAIT, engine.admin.purge_dead_letters(&filter)).await;
        let _ = tokio::time::timeout(WAIT, engine.transport.delete_queue(queue)).await;
    }
}

/// Asserts `actual >= minimum - tolerance`, explaining the numbers.
pub(crate) fn assert_at_least(what: &str, actual: Duration, minimum: Duration) {
    let floor = minimum.saturating_sub(super::CLOCK_TOLERANCE);
    assert!(
        actual >= floor,
        "{what} took {actual:?}, expected at least {minimum:?} (less {:?} clock tolerance)",
        super::CLOCK_TOLERANCE
    );
}

/// Sorts a copy, for comparing sets of numbers in assertions.
pub(crate) fn sorted<T: Ord + Clone + Debug>(items: &[T]) -> Vec<T> {
    let mut items = items.to_vec();
    items.sort();
    items
}
