//! The Courier message bus: publish events, send commands, make requests and schedule messages over any
//! [`Transport`](courier_core::Transport), and run consumers with prefetch, concurrency limits, a middleware stack,
//! immediate retries, delayed redelivery with backoff and jitter, dead-lettering and graceful shutdown.
//!
//! Users normally import this through the `courier` crate, whose `.engine(url)` knows every engine compiled in.
//! On its own this crate knows the in-memory engine:
//!
//! ```
//! use courier_bus::{Bus, Context, HandlerError, MemoryTransport};
//! use courier_core::{Json, Message};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct OrderPlaced { order_id: u64 }
//! impl Message for OrderPlaced { const NAME: &'static str = "shop.order.placed.v1"; type Codec = Json; }
//!
//! async fn ship(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
//!     println!("shipping {} (attempt {})", order.order_id, ctx.attempt());
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> courier_core::Result<()> {
//! let engine = MemoryTransport::new().into_engine();
//! let shipping = Bus::builder("shipping").engine_instance(engine.clone()).consume(ship).start().await?;
//! let orders = Bus::builder("orders").engine_instance(engine).start().await?;
//! orders.publish(OrderPlaced { order_id: 1 }).await?;
//! # shipping.shutdown().await; orders.shutdown().await;
//! # Ok(()) }
//! ```

mod builder;
mod bus;
mod consumer;
mod context;
mod handler;
mod memory;
pub mod middleware;
mod observer;
mod outbox;
mod replies;
mod retry;

pub use builder::BusBuilder;
pub use bus::{Bus, Fault};
pub use consumer::ConsumerGate;
pub use context::Context;
pub use handler::{BoxFuture, FailureKind, Handler, HandlerError};
pub use memory::{MemoryEngineFactory, MemoryTransport};
pub use middleware::{InboxStore, MemoryInboxStore, Middleware, Next};
pub use observer::{BusObserver, Consumed, Outcome};
pub use outbox::{OutboxRelay, RelayHandle};
pub use retry::{Retry, RetryDecision};
