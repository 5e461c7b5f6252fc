//! The axum server kit: the standard [`Edge`] layers (trace context, problem responses, panics caught, body
//! limit), [`health`] endpoints, [`idempotency`] keys, and graceful shutdown ([`serve`]).
//!
//! A service's router, put together:
//!
//! ```
//! use std::sync::Arc;
//! use axum::{Json, Router, routing::post};
//! use courier_http::Problem;
//! use courier_http::server::{Edge, health::{self, HealthChecks}, idempotency::{IdempotencyLayer, MemoryIdempotencyStore}};
//!
//! async fn charge(Json(body): Json<serde_json::Value>) -> Result<Json<serde_json::Value>, Problem> {
//!     if body["amount"].as_u64().unwrap_or(0) == 0 {
//!         return Err(Problem::unprocessable("amount must be a positive integer"));
//!     }
//!     Ok(Json(serde_json::json!({ "charged": body["amount"] })))
//! }
//!
//! let api = Router::new()
//!     .route("/charge", post(charge))
//!     .layer(IdempotencyLayer::new(Arc::new(MemoryIdempotencyStore::new())));
//! let app: Router = Edge::new().apply(api.merge(health::router(HealthChecks::new())));
//! ```

mod edge;
pub mod health;
pub mod idempotency;
mod serve;
mod trace_layer;

pub use edge::{Edge, problem_responses};
pub use health::HealthChecks;
pub use idempotency::{IdempotencyLayer, IdempotencyStore, MemoryIdempotencyStore};
pub use serve::{Shutdown, serve, serve_with_drain, shutdown_signal};
pub use trace_layer::{RequestTrace, TraceContext, TraceContextLayer};
