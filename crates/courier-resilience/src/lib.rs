//! Resilience for synchronous calls, as tower layers: each usable alone, each documented with an example, or
//! stacked in the design's order by [`pipeline::ResiliencePipeline`] (from a builder or a TOML section).
//!
//! | module | layer | what it does |
//! |---|---|---|
//! | [`timeout`] | `DeadlineLayer`, `AttemptTimeoutLayer` | a whole-call deadline (published to the layers below through [`deadline`]) and a per-attempt timeout |
//! | [`retry`] | `RetryLayer` | exponential backoff with full jitter, a retry budget (20% of recent calls by default), `Retry-After`, only for safe requests ([`retry::RetryPredicate`]) |
//! | [`circuit_breaker`] | `CircuitBreakerLayer` | count or time window, failure and slow-call rates, half-open trials, manual control, `watch` + callbacks + metrics; a `courier_bus::ConsumerGate` |
//! | [`bulkhead`] | `BulkheadLayer` | at most N concurrent calls, a bounded wait queue with a maximum wait |
//! | [`rate_limit`] | `RateLimitLayer` | token bucket, global or per key (bounded keys, idle eviction) |
//! | [`hedge`] | `HedgeLayer` | a second attempt after a fixed or percentile delay, first success wins, the other is dropped |
//! | [`balance`] | `Balance` (a service over endpoints) | power of two choices by in-flight calls, passive ejection with cool-down, active health checks |
//! | [`pipeline`] | `ResiliencePipeline` | all of the above in order: deadline -> retry -> hedge -> breaker -> attempt timeout -> bulkhead -> rate limit -> balancer -> transport |
//!
//! # Errors
//!
//! Every layer returns [`ResilienceError<E>`], where `E` is the transport's error (it implements [`CallError`]
//! to say whether it is retryable and whether the server sent `Retry-After`). Layers stack without nesting
//! errors: a layer accepts an inner service returning either `E` or `ResilienceError<E>`
//! ([`IntoResilienceError`]). The [`ErrorKind`] answers `is_timeout()`, `is_circuit_open()`, `is_rejected()`,
//! `is_retryable()`; the transport's error stays the `source()`. Bad pipeline configuration is a
//! [`pipeline::ConfigError`] at start, naming the key.
//!
//! # What tower gives us and what we wrote
//!
//! From tower 0.5: the `Service`/`Layer` traits, `ServiceBuilder` (with `option_layer` and `map_err`), the boxed
//! `BoxCloneSyncService` the pipeline returns, and the retry budget (`tower::retry::budget::TpsBudget`). Our own,
//! and why:
//! - **deadline and attempt timeout**: tower's `Timeout` boxes errors into `BoxError` (the other layers need the
//!   transport's typed error to classify it) and cannot shorten itself to a deadline set further up;
//! - **retry**: tower's `Retry` leaves backoff, jitter, `Retry-After`, deadlines and request safety to every
//!   `Policy`; ours has them, on top of tower's budget;
//! - **circuit breaker**: tower has none; tower-resilience 0.13's count window judges only once full (a window
//!   of 100 lets up to 99 failures through after every reset), and it has no consumer gate;
//! - **bulkhead**: tower's `ConcurrencyLimit` queues without bound in `poll_ready`, `LoadShed` has no queue;
//! - **rate limit**: tower's `RateLimit` is one global fixed window that only delays, without keys or refusal;
//! - **hedge**: tower's `Hedge` boxes errors and cannot send the second attempt to another endpoint;
//! - **balance**: tower's p2c `Balance` needs `Discover` and `Load` plumbing, boxes errors, and has no passive
//!   ejection or health probes.
//!
//! Time is tokio's, so tests drive every layer with a paused clock. Most futures are boxed `async` blocks (one
//! allocation per layer per call; see `benches/pipeline.rs` for what that costs).
//!
//! # Feature flags
//!
//! | feature | default | enables |
//! |---|---|---|
//! | `timeout` | yes | [`timeout`] |
//! | `retry` | yes | [`retry`] |
//! | `circuit-breaker` | yes | [`circuit_breaker`] |
//! | `bulkhead` | yes | [`bulkhead`] |
//! | `rate-limit` | yes | [`rate_limit`] |
//! | `hedge` | yes | [`hedge`] (needs `retry` for its predicate) |
//! | `balance` | yes | [`balance`] |
//! | `pipeline` | yes | [`pipeline`] (all layers, serde and toml) |
//! | `bus` | yes | `courier_bus::ConsumerGate` for [`circuit_breaker::CircuitBreaker`] |
//! | `http` | no | [`retry::Idempotency`] for `http::Request` |
//!
//! # Metrics
//!
//! Through the `metrics` facade: `courier_circuit_state{name}` (gauge), `courier_circuit_calls_total{name,
//! outcome}`, `courier_circuit_slow_calls_total{name}`, `courier_circuit_rejected_total{name}`,
//! `courier_circuit_transitions_total{name, to}`, `courier_bulkhead_rejected_total{name}`,
//! `courier_rate_limited_total{name}`, `courier_retries_total`, `courier_retry_budget_exhausted_total`,
//! `courier_hedges_total`, `courier_hedge_wins_total`, `courier_balance_ejections_total{endpoint}`,
//! `courier_balance_endpoint_healthy{endpoint}`.

pub mod deadline;
mod error;
mod route;

#[cfg(feature = "balance")]
pub mod balance;
#[cfg(feature = "bulkhead")]
pub mod bulkhead;
#[cfg(feature = "circuit-breaker")]
pub mod circuit_breaker;
#[cfg(feature = "hedge")]
pub mod hedge;
#[cfg(feature = "pipeline")]
pub mod pipeline;
#[cfg(feature = "rate-limit")]
pub mod rate_limit;
#[cfg(feature = "retry")]
pub mod retry;
#[cfg(feature = "timeout")]
pub mod timeout;

pub use error::{BoxFuture, CallError, ErrorKind, ErrorOf, IntoResilienceError, ResilienceError};
