//! Courier: safe synchronous and asynchronous communication for Rust microservices.
//!
//! This is the crate applications import. It re-exports the bus ([`Bus`], [`Context`], [`Retry`], middleware),
//! the core vocabulary ([`Message`], [`Envelope`], [`Transport`], [`Error`]) and the engines compiled in, chosen at
//! run time by URL with [`EngineExt::engine`].
//!
//! ```no_run
//! use courier::prelude::*;
//!
//! #[derive(Debug, Serialize, Deserialize, Message)]
//! #[message(name = "shop.order.placed.v1")]
//! struct OrderPlaced { order_id: Uuid, total_cents: u64 }
//!
//! async fn ship(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
//!     tracing::info!(order = %order.order_id, attempt = ctx.attempt(), "shipping");
//!     Ok(())
//! }
//!
//! #[tokio::main]
//! async fn main() -> courier::Result<()> {
//!     let bus = Bus::builder("shipping")
//!         .engine("sqlite://./data/courier.db")
//!         .consume(ship)
//!         .retry(Retry::immediate(2).then_backoff(5, Duration::from_secs(1)))
//!         .start().await?;
//!     bus.publish(OrderPlaced { order_id: Uuid::now_v7(), total_cents: 4200 }).await?;
//!     bus.run_until_shutdown().await
//! }
//! ```
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `sqlite` | yes | the embedded durable transport (`sqlite://path`), the SQLite inbox, outbox and saga store |
//! | `saga` | yes | typed, persisted sagas (`courier::saga`) |
//! | `resilience` | yes | tower layers for synchronous calls (`courier::resilience`) |
//! | `redis` | no | the Redis Streams transport (`redis://127.0.0.1:6379`) |
//! | `nats` | no | the NATS JetStream transport (`nats://127.0.0.1:4222`) |
//! | `rabbitmq` | no | the RabbitMQ transport (`amqp://guest:guest@127.0.0.1:5672/%2f`) |
//! | `postgres` | no | the PostgreSQL transport (`postgres://user@host/db`) |
//!
//! The in-memory engine (`memory://`) is always there.

pub use courier_bus::{BoxFuture, InboxStore, MemoryInboxStore, Middleware, Next};
pub use courier_bus::{
    Bus, BusBuilder, BusObserver, Consumed, ConsumerGate, Context, FailureKind, Fault, Handler, HandlerError,
    MemoryEngineFactory, MemoryTransport, Outcome, Retry, RetryDecision, middleware,
};
pub use courier_bus::{OutboxRelay, RelayHandle};
pub use courier_core::{
    Admin, Codec, DeadLetter, DeadLetterFilter, Delivery, Engine, EngineFactory, EngineRegistry, Envelope, Error,
    ErrorKind, HeaderName, Headers, Json, Message, MessageRef, QueueStats, RawMessage, Request, Result, Subscription,
    SubscriptionOptions, TraceParent, Transport, attr, dead_letter_attr, failure_fingerprint,
};
pub use courier_core::{
    OutboxDestination, OutboxLag, OutboxRecord, OutboxStore, SagaOutgoing, SagaRecord, SagaStore, SagaTransition,
    SaveOutcome,
};
pub use courier_macros::Message;

/// The embedded durable transport, inbox, outbox and saga store on SQLite.
#[cfg(feature = "sqlite")]
pub use courier_sqlite as sqlite;

/// The Redis Streams transport.
#[cfg(feature = "redis")]
pub use courier_redis as redis;

/// The NATS JetStream transport.
#[cfg(feature = "nats")]
pub use courier_nats as nats;

/// The RabbitMQ transport.
#[cfg(feature = "rabbitmq")]
pub use courier_rabbitmq as rabbitmq;

/// The PostgreSQL transport.
#[cfg(feature = "postgres")]
pub use courier_postgres as postgres;

/// Resilience layers for synchronous calls: deadline, retry with a budget, circuit breaker (shareable with bus
/// consumers as a `ConsumerGate`), bulkhead, rate limit, hedging, load balancing, `ResiliencePipeline`.
#[cfg(feature = "resilience")]
pub use courier_resilience as resilience;

/// Sagas: typed, persisted state machines (`Saga`, `SagaState`, `Actions`).
#[cfg(feature = "saga")]
pub use courier_saga as saga;

/// Every engine compiled into this program, by URL scheme.
pub fn engines() -> EngineRegistry {
    let registry = EngineRegistry::new().with(MemoryEngineFactory);
    #[cfg(feature = "sqlite")]
    let registry = registry.with(courier_sqlite::SqliteEngineFactory);
    #[cfg(feature = "redis")]
    let registry = registry.with(courier_redis::RedisEngineFactory);
    #[cfg(feature = "nats")]
    let registry = registry.with(courier_nats::NatsEngineFactory);
    #[cfg(feature = "rabbitmq")]
    let registry = registry.with(courier_rabbitmq::RabbitMqEngineFactory);
    #[cfg(feature = "postgres")]
    let registry = registry.with(courier_postgres::PostgresEngineFactory);
    registry
}

/// Connects to the engine a URL names (`memory://`, `sqlite://./data/courier.db`, ...).
///
/// A malformed URL, an unknown scheme or an unreachable engine fails with an error that names the URL.
pub async fn connect(url: &str) -> Result<Engine> {
    engines().connect(url).await
}

/// Adds `.engine(url)` to [`BusBuilder`], resolving the URL against every engine compiled in.
pub trait EngineExt {
    /// Uses the engine at `url` (`memory://`, `sqlite://./data/courier.db`, ...).
    fn engine(self, url: impl Into<String>) -> Self;
}

impl EngineExt for BusBuilder {
    fn engine(self, url: impl Into<String>) -> Self {
        self.engine_with(url, engines())
    }
}

/// What most services need, in one import.
pub mod prelude {
    pub use crate::{Bus, Context, EngineExt, HandlerError, Message, Request, Retry};
    pub use serde::{Deserialize, Serialize};
    pub use std::time::Duration;
    pub use uuid::Uuid;
}
