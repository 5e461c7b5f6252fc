//! Courier over HTTP: synchronous calls made safe on both ends.
//!
//! - **Client** ([`client::HttpClient`], feature `client`): JSON requests through courier-resilience's pipeline
//!   (deadline, budgeted retry honouring `Retry-After` for idempotent calls only, circuit breaker, attempt
//!   timeout, bulkhead, rate limit, hedging, power-of-two-choices balancing with ejection) over reqwest with
//!   rustls; W3C `traceparent` and `Idempotency-Key` headers; failures as one typed [`client::HttpError`] whose
//!   kind answers questions (`is_timeout()`, `is_circuit_open()`, `is_retryable()`, the server's [`Problem`]).
//! - **Server kit** ([`server`], feature `server`): the [`server::Edge`] layers (trace context, RFC 9457 problem
//!   responses for every error, panics caught, body limit), [`server::health`] (`/health/live`,
//!   `/health/ready` with dependency checks), [`server::idempotency`] keys (in memory or SQLite), and
//!   [`server::serve`] with graceful shutdown.
//!
//! # Feature flags
//!
//! | feature | default | enables |
//! |---|---|---|
//! | `client` | yes | [`client`] (reqwest with rustls on aws-lc-rs, courier-resilience) |
//! | `server` | yes | [`server`] (axum, tower-http) |
//! | `sqlite` | yes | `server::idempotency::SqliteIdempotencyStore` (through courier-sqlite's bundled rusqlite) |
//! | `postgres` | yes | `server::idempotency::PostgresIdempotencyStore` (sqlx) |
//! | `redis` | yes | `server::idempotency::RedisIdempotencyStore` (redis) |

pub mod problem;
pub mod trace;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "server")]
pub mod server;

pub use problem::Problem;

#[cfg(feature = "client")]
pub use client::{HttpClient, HttpError, HttpErrorKind};
