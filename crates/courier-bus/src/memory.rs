//! The in-memory transport: for tests and single-process use. Nothing survives the process.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use courier_core::{
    Acker, Admin, Annotations, DeadLetter, DeadLetterFilter, Delivery, Engine, EngineFactory, Error, QueueStats,
    RawMessage, Result, Subscription, SubscriptionOptions, Transport, now_millis, strip_failure_annotations,
};
use tokio::sync::Notify;

/// An in-process broker: queues in memory, with fan-out bindings, delayed delivery, redelivery and dead letters.
///
/// `memory://` URLs name a process-wide instance (`memory://` is the default one, `memory://orders` another), so
/// several buses in one process talk through it; [`MemoryTransport::new`] makes a private one (what tests want).
///
/// ```
/// # use courier_bus::MemoryTransport;
/// let engine = MemoryTransport::new().into_engine();
/// # let _ = engine;
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryTransport {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    queues: BTreeMap<String, Queue>,
    bindings: HashMap<String, BTreeSet<String>>,
    dead: BTreeMap<u64, DeadLetter>,
}

#[derive(Debug, Default)]
struct Queue {
    ready: VecDeque<Stored>,
    delayed: BTreeMap<(i64, u64), Stored>,
    in_flight: HashMap<u64, Stored>,
    notify: Arc<Notify>,
}

#[derive(Debug)]
struct Stored {
    seq: u64,
    message: RawMessage,
    deliveries: u32,
}

impl State {
    fn queue(&mut self, name: &str) -> &mut Queue {
        self.queues.entry(name.to_owned()).or_default()
    }

    fn enqueue(&mut self, queue: &str, message: RawMessage, deliver_at: Option<DateTime<Utc>>) {
        self.next_seq += 1;
        let stored = Stored { seq: self.next_seq, message, deliveries: 0 };
        let q = self.queue(queue);
        match deliver_at.map(|t| t.timestamp_millis()).filter(|t| *t > now_millis()) {
            Some(at) => {
                q.delayed.insert((at, stored.seq), stored);
            }
            None => q.ready.push_back(stored),
        }
        q.notify.notify_waiters();
    }
}

impl MemoryTransport {
    /// A private broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide broker with this name (`memory://name`).
    pub fn named(name: &str) -> Self {
        static NAMED: OnceLock<Mutex<HashMap<String, MemoryTransport>>> = OnceLock::new();
        let mut map = NAMED.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_owned()).or_default().clone()
    }

    /// This broker as an [`Engine`].
    pub fn into_engine(self) -> Engine {
        Engine::new(Arc::new(self))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    async fn declare_queue(&self, queue: &str) -> Result<()> {
        self.lock().queue(queue);
        Ok(())
    }

    async fn bind(&self, queue: &str, message_type: &str) -> Result<()> {
        let mut state = self.lock();
        state.queue(queue);
        state.bindings.entry(message_type.to_owned()).or_default().insert(queue.to_owned());
        Ok(())
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        let mut state = self.lock();
        state.queues.remove(queue);
        for queues in state.bindings.values_mut() {
            queues.remove(queue);
        }
        Ok(())
    }

    async fn publish(&self, message: RawMessage, deliver_at: Option<DateTime<Utc>>) -> Result<()> {
        let mut state = self.lock();
        let message_type = message.message_type().unwrap_or_default().to_owned();
        let targets: Vec<String> = state.bindings.get(&message_type).into_iter().flatten().cloned().collect();
        if let Some((last, others)) = targets.split_last() {
            for queue in others {
                state.enqueue(queue, message.clone(), deliver_at);
            }
            state.enqueue(last, message, deliver_at);
        }
        Ok(())
    }

    async fn send(&self, queue: &str, message: RawMessage, deliver_at: Option<DateTime<Utc>>) -> Result<()> {
        self.lock().enqueue(queue, message, deliver_at);
        Ok(())
    }

    async fn subscribe(&self, queue: &str, _options: SubscriptionOptions) -> Result<Box<dyn Subscription>> {
        self.lock().queue(queue);
        Ok(Box::new(MemorySubscription { transport: self.clone(), queue: Arc::from(queue) }))
    }
}

#[derive(Debug)]
struct MemorySubscription {
    transport: MemoryTransport,
    queue: Arc<str>,
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>> {
        loop {
            let notify = match self.transport.lock().queues.get(&*self.queue) {
                Some(q) => q.notify.clone(),
                None => return Err(Error::closed(format!("queue '{}' was deleted", self.queue))),
            };
            // Register for wake-ups before looking, so a message enqueued in between is not missed.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = {
                let mut state = self.transport.lock();
                let Some(q) = state.queues.get_mut(&*self.queue) else {
                    return Err(Error::closed(format!("queue '{}' was deleted", self.queue)));
                };
                let now = now_millis();
                while let Some(entry) = q.delayed.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    q.ready.push_back(entry.remove());
                }
                let mut batch = Vec::new();
                while batch.len() < max.max(1) {
                    let Some(mut stored) = q.ready.pop_front() else { break };
                    stored.deliveries += 1;
                    let acker =
                        MemoryAcker { transport: self.transport.clone(), queue: self.queue.clone(), seq: stored.seq };
                    batch.push(Delivery::new(
                        self.queue.clone(),
                        stored.message.clone(),
                        stored.deliveries,
                        Box::new(acker),
                    ));
                    q.in_flight.insert(stored.seq, stored);
                }
                if !batch.is_empty() {
                    return Ok(batch);
                }
                q.delayed.keys().next().map(|(at, _)| Duration::from_millis((at - now).max(1) as u64))
            };
            let _ = tokio::time::timeout(wait.unwrap_or(Duration::from_secs(1)), notified).await;
        }
    }
}

#[derive(Debug)]
struct MemoryAcker {
    transport: MemoryTransport,
    queue: Arc<str>,
    seq: u64,
}

impl MemoryAcker {
    fn settle(&self, f: impl FnOnce(&mut State, Stored)) {
        let mut state = self.transport.lock();
        let taken = state.queues.get_mut(&*self.queue).and_then(|q| q.in_flight.remove(&self.seq));
        if let Some(stored) = taken {
            f(&mut state, stored);
        }
    }

    fn release_now(&self) {
        self.settle(|state, mut stored| {
            stored.deliveries = stored.deliveries.saturating_sub(1);
            let q = state.queue(&self.queue);
            q.ready.push_front(stored);
            q.notify.notify_waiters();
        });
    }
}

fn annotate(message: &mut RawMessage, annotations: Annotations) {
    message.headers.extend(annotations);
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(&self) -> Result<()> {
        self.settle(|_, _| {});
        Ok(())
    }

    async fn retry(&self, delay: Duration, annotations: Annotations) -> Result<()> {
        self.settle(|state, mut stored| {
            annotate(&mut stored.message, annotations);
            let at = now_millis() + delay.as_millis() as i64;
            let q = state.queue(&self.queue);
            q.delayed.insert((at, stored.seq), stored);
            q.notify.notify_waiters();
        });
        Ok(())
    }

    async fn dead_letter(&self, annotations: Annotations) -> Result<()> {
        self.settle(|state, mut stored| {
            annotate(&mut stored.message, annotations);
            let entry = DeadLetter {
                entry_id: stored.seq.to_string(),
                queue: self.queue.to_string(),
                dead_lettered_at: Utc::now(),
                message: stored.message,
            };
            state.dead.insert(stored.seq, entry);
        });
        Ok(())
    }

    async fn release(&self) -> Result<()> {
        self.release_now();
        Ok(())
    }

    fn release_on_drop(&self) {
        self.release_now();
    }
}

#[async_trait]
impl Admin for MemoryTransport {
    async fn queues(&self) -> Result<Vec<QueueStats>> {
        let state = self.lock();
        Ok(state
            .queues
            .iter()
            .map(|(name, q)| QueueStats {
                name: name.clone(),
                ready: q.ready.len() as u64,
                in_flight: q.in_flight.len() as u64,
                delayed: q.delayed.len() as u64,
                dead_lettered: state.dead.values().filter(|d| d.queue == *name).count() as u64,
            })
            .collect())
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        let state = self.lock();
        let limit = filter.limit.unwrap_or(usize::MAX);
        Ok(state.dead.values().filter(|d| filter.matches(d)).take(limit).cloned().collect())
    }

    async fn replay_dead_letter(&self, entry_id: &str) -> Result<()> {
        let mut state = self.lock();
        let seq: u64 = entry_id.parse().map_err(|_| Error::not_found(format!("no dead letter '{entry_id}'")))?;
        let entry = state.dead.remove(&seq).ok_or_else(|| Error::not_found(format!("no dead letter '{entry_id}'")))?;
        let mut message = entry.message;
        strip_failure_annotations(&mut message.headers);
        state.enqueue(&entry.queue, message, None);
        Ok(())
    }

    async fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64> {
        let mut state = self.lock();
        let before = state.dead.len();
        state.dead.retain(|_, d| !filter.matches(d));
        Ok((before - state.dead.len()) as u64)
    }
}

/// Connects `memory://` and `memory://name` URLs.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryEngineFactory;

#[async_trait]
impl EngineFactory for MemoryEngineFactory {
    fn schemes(&self) -> &'static [&'static str] {
        &["memory"]
    }

    async fn connect(&self, url: &str) -> Result<Engine> {
        let name = url.strip_prefix("memory://").unwrap_or_default();
        let name = if name.is_empty() { "default" } else { name };
        Ok(MemoryTransport::named(name).into_engine())
    }
}
