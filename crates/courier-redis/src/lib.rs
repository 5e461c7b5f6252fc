//! Courier's transport on Redis Streams.
//!
//! [`RedisTransport`] implements [`Transport`](courier_core::Transport) and [`Admin`](courier_core::Admin) on a
//! Redis server (5.0 or later for streams; 6.2 or later for `XAUTOCLAIM`; tested on 7.0). It is selected by URL:
//! `redis://127.0.0.1:6379` through [`RedisEngineFactory`].
//!
//! # How Courier's model maps onto Redis
//!
//! - Each queue `q` is a stream `<prefix>:q:<q>` with one consumer group, `courier`; each subscription is one
//!   consumer of that group (named after the transport, unique per subscription), so consumers of one queue
//!   compete. `<prefix>:queues` lists the queues.
//! - Publishing fans out: `<prefix>:bind:<type>` is the set of queues bound to a message type. Each transport
//!   reads a type's bindings once and keeps them with the bindings version (`<prefix>:bindver`, changed by the
//!   same script that adds or removes a binding); concurrent publishes are batched, and a batch is one
//!   transaction (`MULTI` ... `EXEC`) of plain `XADD`s to the bound queues and a read of the version, so a publish
//!   reaches all bound queues or none. If the version moved, the bindings are read again and each message is
//!   written to the queues it missed before its publish returns: a queue bound anywhere before a publish starts
//!   receives it. Eight publishing tasks take publishes in turn, each with its own batches and bindings; a batch
//!   holds whatever publishers queued while that task's last batch was on its way (in order, up to 256 messages or
//!   about 4 MiB), so a busy publisher pays one round trip per batch, not per message, and batches of other tasks
//!   are on their way while one forms; a publish that finds its task idle goes at once (with two tasks, a publish
//!   at 5,000 msg/s often waited for its task's round trip in flight, which doubled its latency's tail). Each
//!   publish returns when its batch is applied.
//! - Delayed messages (scheduled sends and publishes, delayed retries) wait in the sorted set `<prefix>:delayed`
//!   scored by due time; every transport runs a pump that moves due messages to their queue's stream with a Lua
//!   script, so several processes can pump one prefix safely.
//! - Dead letters go to the stream `<prefix>:dlq:<q>` (reported as `q.dlq` by `courier queues`). A dead letter's
//!   entry id is `<stream id>@<queue>`, e.g. `1718000000000-0@orders`.
//! - Every change that touches several keys (settle a delivery, dead-letter it, replay it, move a delayed
//!   message) is one Lua script, so it happens entirely or not at all.
//!
//! # Delivery guarantees
//!
//! - **At least once.** A delivery stays in the group's pending list until it is settled. Acknowledging removes it
//!   (`XACK` + `XDEL`, batched and sent in the background: `ack` returns once it is queued, the entry stays held
//!   until its batch is done, and `Transport::flush`, which `Bus::shutdown` calls, waits for what was queued). A
//!   delivery whose consumer dies (process killed, connection lost) is claimed by another consumer of the queue
//!   (`XAUTOCLAIM`) once it has been idle for the visibility timeout; a live
//!   consumer resets the idle time of the messages it holds every third of that timeout, so slow handlers keep
//!   their messages. Duplicates are therefore possible: use the inbox for exactly-once effects.
//! - **Delivery count.** Courier's count travels in the entry (field `n`) and Redis's own delivery count is added
//!   for claimed messages, so a crash redelivery counts as an attempt; [`release`](courier_core::Delivery::release)
//!   does not count one.
//! - **Durability.** A publish or send returns once Redis has applied it *in memory*. Whether it survives a
//!   Redis crash or restart depends on the server's persistence: with `appendonly yes` and
//!   `appendfsync always` (or `everysec`, losing up to a second) acknowledged messages survive; with no
//!   persistence (as on the development machines here: `--save "" --appendonly no`) a Redis restart loses every
//!   queue. A Courier process crash loses nothing either way. Replication is asynchronous: a failover may lose
//!   the last writes unless `WAIT` is used (it is not).
//!
//! # Ordering
//!
//! First-in first-out per queue for first deliveries (stream order). Competing consumers, retries (the message
//! goes to the back of the queue, after its delay) and releases (also to the back) reorder. There is no
//! per-`partitionkey` ordering beyond that.
//!
//! # Options
//!
//! [`RedisOptions`], or in the URL's query:
//! `redis://[user:password@]host:port[/db][?prefix=courier&pump_ms=100&block_ms=1000&timeout_ms=10000]`
//!
//! | parameter | default | meaning |
//! |---|---|---|
//! | `prefix` | `courier` | namespace of every key; transports with different prefixes do not see each other |
//! | `pump_ms` | 100 | how often the delayed-message pump checks for messages other processes scheduled |
//! | `block_ms` | 1000 | longest blocking read before a consumer looks for dead consumers' messages |
//! | `timeout_ms` | 10000 | how long a command waits for Redis's answer |
//!
//! # Connections
//!
//! One multiplexed connection per transport for publishing, settling and admin commands, plus one per
//! subscription for its blocking reads. Each names itself with `CLIENT SETNAME` (see
//! [`RedisTransport::connection_name`]) and reconnects on the next call after it breaks; the call that met the
//! broken connection fails with a connection error (a publish that failed this way may or may not have been
//! applied, as with any broker).
//!
//! # Limitations
//!
//! - Standalone Redis only: the scripts touch keys they compute, which Redis Cluster does not allow. No TLS
//!   (`rediss://`) in this build.
//! - Delayed messages are moved by the client-side pump, so they are due by the clocks of the processes involved
//!   (keep them in sync) and are late by up to `pump_ms` when only another process is running a pump.
//! - Deleting a queue, listing dead letters with a filter, and per-queue delayed clean-up read whole keys: fine
//!   for admin use, not for hot paths.
//! - A subscription's consumer name stays in the group until it holds nothing; names of consumers that died are
//!   removed an hour after their last message was claimed from them.

mod admin;
mod conn;
mod entry;
mod options;
mod scripts;
mod subscription;
mod transport;

use async_trait::async_trait;
use courier_core::{Engine, EngineFactory, Error, Result};

pub use options::RedisOptions;
pub use transport::RedisTransport;

/// Connects `redis://` URLs to a [`RedisTransport`].
///
/// ```no_run
/// # async fn demo() -> courier_core::Result<()> {
/// use courier_core::EngineRegistry;
/// use courier_redis::RedisEngineFactory;
/// let registry = EngineRegistry::new().with(RedisEngineFactory);
/// let engine = registry.connect("redis://127.0.0.1:6379?prefix=shop").await?;
/// # let _ = engine; Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisEngineFactory;

#[async_trait]
impl EngineFactory for RedisEngineFactory {
    fn schemes(&self) -> &'static [&'static str] {
        &["redis"]
    }

    async fn connect(&self, url: &str) -> Result<Engine> {
        let (client_url, options) = options::parse_url(url)?;
        let transport = RedisTransport::connect(&client_url, options).await.map_err(|e| {
            Error::new(e.kind(), format!("cannot use the engine URL '{}'", options::redact(url))).with_source(e)
        })?;
        Ok(transport.into_engine())
    }
}
