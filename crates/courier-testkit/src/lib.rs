//! Courier's test kit, in two parts.
//!
//! # A harness for your tests
//!
//! [`TestHarness`] starts buses on a private in-memory engine (or any engine), records everything they publish
//! and consume through a [`BusObserver`](courier_bus::BusObserver), and lets a test wait for what it expects with
//! a deadline instead of a sleep. When a wait runs out, the [`WaitError`] says what was expected and what was seen.
//!
//! ```
//! use std::time::Duration;
//! use courier_bus::{Context, HandlerError};
//! use courier_core::{Json, Message};
//! use courier_testkit::TestHarness;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct OrderPlaced { order_id: u64 }
//! impl Message for OrderPlaced { const NAME: &'static str = "shop.order.placed.v1"; type Codec = Json; }
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct OrderShipped { order_id: u64 }
//! impl Message for OrderShipped { const NAME: &'static str = "shop.order.shipped.v1"; type Codec = Json; }
//!
//! async fn ship(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
//!     ctx.publish(OrderShipped { order_id: order.order_id }).await?;
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let harness = TestHarness::new();
//! harness.bus("shipping", |b| b.consume(ship)).await?;
//! harness.publish(OrderPlaced { order_id: 7 }).await?;
//!
//! let handled = harness.wait_consumed::<OrderPlaced>(1, Duration::from_secs(5)).await?;
//! assert_eq!(handled, [OrderPlaced { order_id: 7 }]);
//! assert_eq!(harness.published::<OrderShipped>(), [OrderShipped { order_id: 7 }]);
//! assert!(harness.faulted().is_empty());
//! harness.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! For conditions the harness does not record, [`wait_until`] and [`wait_until_async`] poll a closure until it
//! holds or the deadline passes.
//!
//! # The transport conformance suite
//!
//! [`conformance`] holds the checks every engine must pass: fan-out, competing consumers, ack/retry/release,
//! delayed redelivery, dead-lettering with replay, request/response, scheduled delivery, undecodable messages,
//! graceful shutdown, a 1 MiB payload, trace propagation, and exactly-once handling at scale. An engine crate
//! runs them all with one line in a test file, giving a factory for a fresh [`Engine`](courier_core::Engine):
//!
//! ```
//! // crates/courier-<engine>/tests/conformance.rs
//! use courier_bus::MemoryTransport;
//!
//! courier_testkit::conformance_tests!(|| async { MemoryTransport::new().into_engine() });
//! # fn main() {}
//! ```
//!
//! Each case becomes its own `#[test]`, run on a two-worker multi-threaded runtime; see [`conformance`] for what
//! the cases assume of a shared, durable engine.

pub mod conformance;
#[cfg(feature = "fault-server")]
pub mod fault;
pub mod harness;
pub mod sagas;
pub mod services;

pub use harness::{DeadLettered, TestHarness, WaitError, wait_until, wait_until_async};
