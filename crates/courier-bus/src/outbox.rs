//! The outbox relay: delivers messages committed to an [`OutboxStore`] to the transport.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use courier_core::{OutboxDestination, OutboxRecord, OutboxStore, Result, attr};
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Bus;

/// Delivers committed outbox messages to the bus's transport, in order per partition key (messages without a key
/// keep their commit order among themselves), with keys delivered concurrently.
///
/// - Wakes when the store says new messages were committed, and polls as a fallback.
/// - Batches: fetches up to `batch_size` records, delivers them, marks them sent in one write.
/// - Several instances may run: only the holder of the store's lease delivers; the others stand by.
/// - When the database or the broker is down it backs off (up to 5 s) and logs once per failure streak, instead of
///   spinning.
/// - Deletes delivered records after the retention period, and exports its lag as the gauges
///   `courier_outbox_unsent` and `courier_outbox_oldest_unsent_seconds`.
///
/// ```no_run
/// # async fn demo(bus: courier_bus::Bus, store: impl courier_core::OutboxStore) {
/// use courier_bus::OutboxRelay;
/// let relay = OutboxRelay::new(store, bus).start();
/// // ...
/// relay.shutdown().await;
/// # }
/// ```
#[derive(Debug)]
pub struct OutboxRelay {
    store: Arc<dyn OutboxStore>,
    bus: Bus,
    relay_id: String,
    batch_size: usize,
    concurrency: usize,
    poll_interval: Duration,
    lease_ttl: Duration,
    retention: Duration,
}

impl OutboxRelay {
    /// A relay from `store` to `bus`'s transport. Defaults: batches of 256, 64 partition keys in flight, polling
    /// every 250 ms, a 10 s lease, sent records kept 1 hour.
    pub fn new(store: impl OutboxStore, bus: Bus) -> Self {
        Self {
            store: Arc::new(store),
            bus,
            relay_id: uuid::Uuid::now_v7().to_string(),
            batch_size: 256,
            concurrency: 64,
            poll_interval: Duration::from_millis(250),
            lease_ttl: Duration::from_secs(10),
            retention: Duration::from_secs(3600),
        }
    }

    /// Records fetched and marked per round trip.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Partition keys delivered at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How often to look for new records when no wake-up arrives.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How long the relay lease lasts without renewal (a standby takes over after this when a relay dies).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// How long delivered records are kept before deletion.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Starts relaying in a background task.
    pub fn start(self) -> RelayHandle {
        let shutdown = CancellationToken::new();
        let delivered = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(self, shutdown.clone(), delivered.clone()));
        RelayHandle { shutdown, task, delivered }
    }
}

/// A running relay.
#[derive(Debug)]
pub struct RelayHandle {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    delivered: Arc<AtomicU64>,
}

impl RelayHandle {
    /// Messages delivered by this relay so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Stops after the batch in hand and gives up the lease.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

async fn run(relay: OutboxRelay, shutdown: CancellationToken, delivered: Arc<AtomicU64>) {
    let mut failures = 0u32;
    let mut last_housekeeping = Instant::now() - Duration::from_secs(3600);
    while !shutdown.is_cancelled() {
        if last_housekeeping.elapsed() >= Duration::from_secs(1) {
            last_housekeeping = Instant::now();
            housekeeping(&relay).await;
        }
        let step = relay_once(&relay, &delivered).await;
        let wait = match step {
            Ok(Step::Delivered) => {
                failures = 0;
                continue;
            }
            Ok(Step::Idle) => {
                failures = 0;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = relay.store.wait_for_new(relay.poll_interval) => {}
                }
                continue;
            }
            Ok(Step::Standby) => relay.lease_ttl / 3,
            Err(e) => {
                failures += 1;
                let wait =
                    Duration::from_millis(100u64.saturating_mul(1 << failures.min(6))).min(Duration::from_secs(5));
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures, retry_in = ?wait, "outbox relay cannot deliver; backing off");
                }
                wait
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    if let Err(e) = relay.store.release_lease(&relay.relay_id).await {
        tracing::debug!(error = %e, "could not release the outbox lease; it expires on its own");
    }
}

enum Step {
    Delivered,
    Idle,
    Standby,
}

async fn relay_once(relay: &OutboxRelay, delivered: &AtomicU64) -> Result<Step> {
    if !relay.store.acquire_lease(&relay.relay_id, relay.lease_ttl).await? {
        return Ok(Step::Standby);
    }
    let batch = relay.store.fetch_unsent(relay.batch_size).await?;
    if batch.is_empty() {
        return Ok(Step::Idle);
    }
    // One ordered group per partition key (keyless messages form one group); groups go concurrently.
    let mut groups: Vec<Vec<OutboxRecord>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for record in batch {
        let key = record.message.header(attr::PARTITIONKEY).unwrap_or_default().to_owned();
        let i = *index.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[i].push(record);
    }
    let transport = relay.bus.transport().clone();
    let results: Vec<(Vec<i64>, Option<courier_core::Error>)> = futures::stream::iter(groups)
        .map(|group| {
            let transport = transport.clone();
            async move {
                let mut sent = Vec::with_capacity(group.len());
                for record in group {
                    let result = match &record.destination {
                        OutboxDestination::Publish => transport.publish(record.message, record.deliver_at).await,
                        OutboxDestination::Send(queue) => {
                            transport.send(queue, record.message, record.deliver_at).await
                        }
                    };
                    if let Err(e) = result {
                        return (sent, Some(e));
                    }
                    sent.push(record.seq);
                }
                (sent, None)
            }
        })
        .buffer_unordered(relay.concurrency)
        .collect()
        .await;
    let mut sent: Vec<i64> = Vec::new();
    let mut failure = None;
    for (seqs, error) in results {
        sent.extend(seqs);
        failure = failure.or(error);
    }
    sent.sort_unstable();
    if !sent.is_empty() {
        relay.store.mark_sent(&sent).await?;
        delivered.fetch_add(sent.len() as u64, Ordering::Relaxed);
        metrics::counter!("courier_outbox_delivered_total").increment(sent.len() as u64);
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(Step::Delivered),
    }
}

async fn housekeeping(relay: &OutboxRelay) {
    match relay.store.lag().await {
        Ok(lag) => {
            metrics::gauge!("courier_outbox_unsent").set(lag.unsent as f64);
            metrics::gauge!("courier_outbox_oldest_unsent_seconds")
                .set(lag.oldest_unsent.map_or(0.0, |d| d.as_secs_f64()));
        }
        Err(e) => tracing::debug!(error = %e, "could not read the outbox lag"),
    }
    if let Err(e) = relay.store.purge_sent(relay.retention).await {
        tracing::debug!(error = %e, "could not purge delivered outbox records");
    }
}
