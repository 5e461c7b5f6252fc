//! Courier over gRPC: the resilience pipeline on a tonic client channel, and for servers trace context and the
//! standard health service.
//!
//! - [`client::ResilientChannel`]: a tonic-compatible channel behind courier-resilience's pipeline (deadline,
//!   budgeted retry of idempotent RPCs, hedging, circuit breaker, attempt timeout, bulkhead, balancing with
//!   ejection); sends W3C `traceparent` metadata; failures are `tonic::Status`es with the right code.
//! - [`server::TraceContextLayer`]: the caller's trace continued in a `tracing` span and as the current context;
//!   [`server::health`] and [`server::report_readiness`]: `grpc.health.v1` driven by readiness checks.
//! - [`example`]: an `Inventory` service whose proto is compiled by protox at build time (no `protoc`).
//!
//! ```no_run
//! use std::time::Duration;
//! use courier_grpc::client::{CircuitBreakerConfig, ResilientChannel, RetryPolicy};
//! use courier_grpc::example::{GET_STOCK, InventoryClient, StockRequest};
//!
//! # #[tokio::main] async fn main() -> Result<(), tonic::Status> {
//! let channel = ResilientChannel::builder("http://127.0.0.1:50051")
//!     .deadline(Duration::from_millis(500))
//!     .attempt_timeout(Duration::from_millis(200))
//!     .retry(RetryPolicy::budgeted())
//!     .idempotent([GET_STOCK])
//!     .circuit_breaker(CircuitBreakerConfig::failure_rate(0.5))
//!     .build()?;
//! let mut inventory = InventoryClient::new(channel);
//! let stock = inventory.get_stock(StockRequest { sku: "rust-mug".into() }).await?.into_inner();
//! println!("{} left", stock.available);
//! # Ok(()) }
//! ```

pub mod client;
pub mod example;
pub mod server;
