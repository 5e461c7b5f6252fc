//! The store side of the transactional outbox: messages written in the same database transaction as the service's
//! own changes, waiting for the relay to hand them to the transport.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::{RawMessage, Result};

/// Where an outbox message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxDestination {
    /// Published: fan-out to every subscribing queue.
    Publish,
    /// Sent to one queue.
    Send(String),
}

/// One committed message waiting in the outbox.
#[derive(Debug, Clone)]
pub struct OutboxRecord {
    /// Position in the outbox: the relay delivers in this order (per partition key).
    pub seq: i64,
    /// Publish or send.
    pub destination: OutboxDestination,
    /// The message (CloudEvents headers and body).
    pub message: RawMessage,
    /// Deliver no sooner than this.
    pub deliver_at: Option<DateTime<Utc>>,
    /// When it was committed.
    pub created_at: DateTime<Utc>,
}

/// How far behind the relay is.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OutboxLag {
    /// Committed messages not yet delivered.
    pub unsent: u64,
    /// Age of the oldest one.
    pub oldest_unsent: Option<Duration>,
}

/// A database table of outgoing messages, implemented per database (SQLite, PostgreSQL).
///
/// Contract: [`fetch_unsent`](OutboxStore::fetch_unsent) returns committed, unsent records in commit order;
/// [`mark_sent`](OutboxStore::mark_sent) is idempotent. Only the relay holding the lease
/// ([`acquire_lease`](OutboxStore::acquire_lease)) delivers, so several relay instances can run for availability
/// without delivering one message twice in normal operation (a relay that dies mid-batch leaves its undelivered
/// records for the next leaseholder; records it delivered but did not mark are delivered again, which the
/// consumers' inbox absorbs).
#[async_trait]
pub trait OutboxStore: Send + Sync + std::fmt::Debug + 'static {
    /// Takes or renews the relay lease for `relay_id` for `ttl`; `false` if another live relay holds it.
    async fn acquire_lease(&self, relay_id: &str, ttl: Duration) -> Result<bool>;
    /// Gives the lease up (at shutdown), so a standby relay takes over at once.
    async fn release_lease(&self, relay_id: &str) -> Result<()>;
    /// Up to `limit` unsent records, oldest first.
    async fn fetch_unsent(&self, limit: usize) -> Result<Vec<OutboxRecord>>;
    /// Marks records delivered.
    async fn mark_sent(&self, seqs: &[i64]) -> Result<()>;
    /// Deletes records delivered more than `older_than` ago; returns how many.
    async fn purge_sent(&self, older_than: Duration) -> Result<u64>;
    /// The relay's lag.
    async fn lag(&self) -> Result<OutboxLag>;
    /// Waits until new records may be there (a commit in this process, a database notification) or `timeout`.
    async fn wait_for_new(&self, timeout: Duration);
}
