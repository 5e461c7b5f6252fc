//! Inbox dedupe: a message id already handled by this consumer is skipped.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use courier_core::Result;

use crate::{BoxFuture, Context, HandlerError, Middleware, Next};

/// Where handled message ids are recorded, per consumer.
///
/// The middleware form ([`Inbox`]) checks before and records after the handler; a crash between the handler's
/// effect and the record can still apply an effect twice. For exactly-once effects, record the id in the same
/// database transaction as the handler's writes (see `courier_sqlite::SqliteInbox::once`).
#[async_trait]
pub trait InboxStore: Send + Sync + std::fmt::Debug + 'static {
    /// Whether `message_id` was already handled by `consumer`.
    async fn is_processed(&self, consumer: &str, message_id: &str) -> Result<bool>;
    /// Records that `consumer` handled `message_id`.
    async fn mark_processed(&self, consumer: &str, message_id: &str) -> Result<()>;
}

/// An in-process inbox store, for tests and single-process use.
#[derive(Debug, Default, Clone)]
pub struct MemoryInboxStore {
    seen: Arc<Mutex<HashSet<(String, String)>>>,
}

#[async_trait]
impl InboxStore for MemoryInboxStore {
    async fn is_processed(&self, consumer: &str, message_id: &str) -> Result<bool> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        Ok(seen.contains(&(consumer.to_owned(), message_id.to_owned())))
    }

    async fn mark_processed(&self, consumer: &str, message_id: &str) -> Result<()> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert((consumer.to_owned(), message_id.to_owned()));
        Ok(())
    }
}

/// Skips messages this consumer has already handled (a redelivery after a lost ack, a duplicate publish).
#[derive(Debug, Clone)]
pub struct Inbox {
    store: Arc<dyn InboxStore>,
}

impl Inbox {
    /// Dedupe against `store`.
    pub fn new(store: Arc<dyn InboxStore>) -> Self {
        Self { store }
    }
}

impl Middleware for Inbox {
    fn handle<'a>(&'a self, ctx: &'a Context, next: Next<'a>) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            if self.store.is_processed(ctx.consumer(), ctx.message_id()).await.map_err(HandlerError::transient)? {
                tracing::debug!(message.id = %ctx.message_id(), "duplicate skipped by the inbox");
                metrics::counter!("courier_inbox_duplicates_total", "queue" => ctx.queue().to_owned()).increment(1);
                return Ok(());
            }
            next.run(ctx).await?;
            self.store.mark_processed(ctx.consumer(), ctx.message_id()).await.map_err(HandlerError::transient)
        })
    }
}
