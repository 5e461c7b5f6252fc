//! Courier's embedded default: a durable transport and an inbox on SQLite, no server needed.
//!
//! - [`SqliteTransport`]: queues, fan-out bindings, delayed delivery, visibility timeouts and dead letters in one
//!   WAL-mode file that several processes on one machine can share. Selected by URL: `sqlite://./data/courier.db`
//!   (settings as query parameters: `synchronous=full|normal`, `poll_ms`, `max_batch`, `busy_timeout_ms`).
//! - [`SqliteInbox`]: idempotent consumers; the message id is recorded in the same transaction as the handler's
//!   writes.
//! - [`SqliteOutbox`]: the transactional outbox; messages published on a database transaction commit with it, and
//!   `courier_bus::OutboxRelay` delivers them.
//! - [`SqliteSagaStore`]: saga instances with optimistic concurrency, their history and their outgoing messages,
//!   committed together in the outbox's database.
//!
//! Why our own code: no crate offers a durable multi-process queue on SQLite with group commit, leases and dead
//! letters; the storage itself is SQLite through `rusqlite` (bundled, so no system library is needed).

mod inbox;
mod notify;
mod options;
mod outbox;
mod saga;
mod schema;
mod transport;
mod writer;

use async_trait::async_trait;
use courier_core::{Engine, EngineFactory, Result};

pub use inbox::SqliteInbox;
pub use options::{SqliteOptions, Synchronous};
pub use outbox::{OutboxTransaction, SqliteOutbox};
pub use rusqlite;
pub use saga::SqliteSagaStore;
pub use transport::SqliteTransport;

/// Connects `sqlite://` URLs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SqliteEngineFactory;

#[async_trait]
impl EngineFactory for SqliteEngineFactory {
    fn schemes(&self) -> &'static [&'static str] {
        &["sqlite"]
    }

    async fn connect(&self, url: &str) -> Result<Engine> {
        let (path, options) = options::parse_url(url)?;
        let transport = SqliteTransport::open(path, options).await.map_err(|e| {
            courier_core::Error::new(e.kind(), format!("cannot use the engine URL '{url}'")).with_source(e)
        })?;
        Ok(transport.into_engine())
    }
}
