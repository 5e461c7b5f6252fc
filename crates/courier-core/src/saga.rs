//! The store side of sagas: persisted state machine instances with optimistic concurrency.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::{OutboxDestination, RawMessage, Result};

/// One saga instance as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SagaRecord {
    /// The saga (state machine) name, e.g. `order-fulfilment`.
    pub saga: String,
    /// The correlation id of this instance.
    pub id: String,
    /// The state, as JSON.
    pub state: String,
    /// A short status label (the state machine's current state).
    pub status: String,
    /// Whether it reached a terminal state.
    pub finished: bool,
    /// Incremented by every saved change; a save names the version it read (optimistic concurrency).
    pub version: i64,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// One step in an instance's history.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SagaTransition {
    /// The message that caused it.
    pub message_id: String,
    /// Its type.
    pub message_type: String,
    /// Status before.
    pub from_status: String,
    /// Status after.
    pub to_status: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// A message a transition sends, stored with the new state in one transaction (an outbox).
#[derive(Debug, Clone)]
pub struct SagaOutgoing {
    /// Publish or send.
    pub destination: OutboxDestination,
    /// The message.
    pub message: RawMessage,
    /// Deliver no sooner than this (timeouts).
    pub deliver_at: Option<DateTime<Utc>>,
}

/// What a save did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveOutcome {
    /// Saved; the outgoing messages are committed.
    Saved,
    /// Someone else changed the instance since it was read: load it again and re-run the transition.
    Conflict,
    /// This message was already applied to this instance (a duplicate); nothing changed.
    Duplicate,
}

/// Where saga instances live (SQLite, PostgreSQL).
///
/// Contract: [`save`](SagaStore::save) is atomic: the new state (only if the stored version still equals
/// `expected_version`; 0 means "must not exist yet"), the history step (unique per instance and message id, so a
/// duplicate is detected) and the outgoing messages commit together or not at all.
#[async_trait]
pub trait SagaStore: Send + Sync + std::fmt::Debug + 'static {
    /// Loads an instance.
    async fn load(&self, saga: &str, id: &str) -> Result<Option<SagaRecord>>;
    /// Saves a transition (see the trait docs).
    async fn save(
        &self,
        record: &SagaRecord,
        expected_version: i64,
        transition: &SagaTransition,
        outgoing: Vec<SagaOutgoing>,
    ) -> Result<SaveOutcome>;
    /// Instances, most recently changed first; all sagas if `saga` is `None`.
    async fn list(&self, saga: Option<&str>, limit: usize) -> Result<Vec<SagaRecord>>;
    /// An instance's history, oldest first.
    async fn history(&self, saga: &str, id: &str) -> Result<Vec<SagaTransition>>;
}
