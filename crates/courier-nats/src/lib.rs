//! Courier's transport on NATS JetStream: queues, fan-out, delayed delivery and dead letters on a NATS server
//! (2.9 or later, started with `-js`), shared by every service that connects to it.
//!
//! - [`NatsTransport`]: the [`Transport`](courier_core::Transport) and [`Admin`](courier_core::Admin)
//!   (`courier queues`, `courier dlq list|show|replay|purge`).
//! - [`NatsEngineFactory`]: selects it by URL, `nats://127.0.0.1:4222`.
//! - [`NatsOptions`]: its settings.
//!
//! # Layout on the server
//!
//! Everything lives under one **namespace** (`courier` unless set), so several systems or test runs share a
//! server without seeing each other:
//!
//! | what | NATS object |
//! |---|---|
//! | queue `q` | subject `<ns>.q.<q>` in the work-queue stream `<ns>_queues`, read through the durable pull consumer `q_<q>` (explicit ack, `ack_wait` = the visibility timeout) |
//! | messages waiting for their time | subject `<ns>.delay.<q>` in the same stream, moved to `<ns>.q.<q>` when due |
//! | dead letters of `q` (reported as `q.dlq`) | subject `<ns>.dlq.<q>` in the stream `<ns>_dlq` (kept until replayed or purged), annotations as headers |
//! | bodies over the server's `max_payload` (1 MiB by default) | chunks on `<ns>.blob.<id>` in the stream `<ns>_blobs`, kept for [`BLOB_MAX_AGE`]; the message carries the header `Courier-Blob` |
//! | bindings (message type -> queues) | keys `<type>.<q>` of the key-value bucket `<ns>_bindings`, cached in every process and kept current by a watch |
//!
//! Names that NATS forbids in a subject token (`.`, spaces, `*`, `>`) are escaped reversibly (`.` is `=2E`).
//!
//! Each Courier header is a NATS header of the same name (escaped where NATS forbids a byte); `specversion` 1.0 and
//! `datacontenttype` `application/json` are left out and implied on reading, as each header costs the client and
//! the server work on every message.
//!
//! # Delivery guarantees
//!
//! - **Publish and send are acknowledged**: they return once JetStream stored the message (a `PubAck`); with
//!   file storage it survives a server restart. Publish fans out with one acknowledged publish per bound queue.
//!   A publish that fails (timeout during a reconnect) returns an error and may still have been stored: retrying
//!   can duplicate, never lose.
//! - **At least once**, acked explicitly after the handler succeeds. Competing consumers of one queue share its
//!   durable consumer. A message whose consumer dies (process killed, connection lost) comes back after the
//!   queue's visibility timeout (`ack_wait`); live subscriptions extend the deadline of the messages they hold
//!   (`+WPI`) every third of it, so a slow handler is not mistaken for a dead one.
//! - **Retry** republishes the message with its annotations as headers (NATS cannot change a stored message's
//!   headers, and a nak cannot carry them), waits for the ack, then acks the original. **Release** does the same
//!   without counting the delivery: a JetStream nak would count one, and the contract says a release does not.
//!   **Dead-letter** publishes to the dead-letter subject, then acks. So each settle is at least once: a crash
//!   between the publish and the ack leaves a duplicate, never a loss.
//! - **Delivery count** is JetStream's own count for the stored copy plus the deliveries of earlier copies,
//!   carried in the header `Courier-Prior-Deliveries`; a replayed dead letter starts again at 1.
//! - **Delayed delivery** (`deliver_at` in the future, and retries with a delay): the message waits on
//!   `<ns>.delay.<q>`; a scheduler (one shared durable consumer, run by every transport that subscribes or
//!   schedules) naks it with the time left until due, then publishes it to its queue. It is never delivered
//!   before its time; it may be late by a round trip. JetStream 2.9 has no per-message delay, hence this.
//!
//! # Ordering
//!
//! First-in first-out per queue as stored by JetStream, with one consumer and prefetch 1. Prefetch, competing
//! consumers, retries and releases (which go to the back of the queue) reorder; no per-key order is promised.
//!
//! # URL and options
//!
//! `nats://[user:password@]host:port[,nats://host2:port][?setting=value&...]`, settings (see [`NatsOptions`]):
//! `namespace` (default `courier`), `storage` (`file` or `memory`), `replicas` (1), `max_ack_pending` (20000,
//! `-1` for no limit), `connect_timeout_ms` (5000), `request_timeout_ms` (5000), `name` (connection name).
//! A malformed URL is a configuration error naming it; a server that does not answer, or answers without
//! JetStream, is a connection error naming the URL and saying what to start.
//!
//! # Limitations
//!
//! - A binding made in another process reaches this one's cache through the bucket watch, a few milliseconds
//!   later; a publish in that window misses the new queue (a process's own bindings are seen at once).
//! - A subscription pulls up to its prefetch ahead of what the consumer loop asked for, so up to twice the
//!   prefetch may be unsettled per subscription; messages pulled and not handed out are put back when it is
//!   dropped. The queue-wide limit is `max_ack_pending`.
//! - The visibility timeout is the queue's consumer setting: the last subscription to start sets it for all.
//! - `queues()` reports `ready` as the consumer's pending count (a retried message waiting for its delay counts
//!   as `delayed`); only declared queues (with a consumer) are listed.
//! - A body larger than the server's `max_payload` is stored in chunks for [`BLOB_MAX_AGE`] (14 days) and not
//!   deleted when its message is acked; a copy delivered or replayed after that arrives with an empty body (and is
//!   dead-lettered as undecodable).
//! - Listing dead letters reads them one by one: meant for operators, not for millions of entries.
//! - Messages published before a queue is declared stay in the stream until it is; a publish whose type has no
//!   binding goes nowhere, as on any pub/sub broker.

mod admin;
mod bindings;
mod blobs;
mod headers;
mod names;
mod options;
mod scheduler;
mod subscription;
mod transport;

use async_trait::async_trait;
use courier_core::{Engine, EngineFactory, Result};

pub use async_nats;
pub use blobs::BLOB_MAX_AGE;
pub use options::{NatsOptions, Storage};
pub use transport::NatsTransport;

/// Connects `nats://` URLs (see the [crate docs](crate) for the URL's settings).
///
/// ```no_run
/// # async fn demo() -> courier_core::Result<()> {
/// use courier_core::EngineRegistry;
/// let registry = EngineRegistry::new().with(courier_nats::NatsEngineFactory);
/// let engine = registry.connect("nats://127.0.0.1:4222?namespace=shop").await?;
/// # let _ = engine; Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct NatsEngineFactory;

#[async_trait]
impl EngineFactory for NatsEngineFactory {
    fn schemes(&self) -> &'static [&'static str] {
        &["nats"]
    }

    async fn connect(&self, url: &str) -> Result<Engine> {
        let (servers, options) = NatsOptions::from_url(url)?;
        Ok(NatsTransport::connect(&servers, options).await?.into_engine())
    }
}
