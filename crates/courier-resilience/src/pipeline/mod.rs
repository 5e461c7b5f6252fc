//! [`ResiliencePipeline`]: every layer stacked in the order the design gives, from a builder or a TOML section:
//!
//! ```text
//! total deadline -> retry -> hedge -> circuit breaker -> per-attempt timeout -> bulkhead -> rate limit
//!     -> balancer (with `balanced`) -> transport
//! ```
//!
//! Why this order: the deadline bounds everything, retries included; retries (and hedges, which are retries
//! that do not wait for a failure) sit above the breaker so each attempt is judged by it and an open breaker
//! stops them at once; the per-attempt timeout sits below the breaker so slow attempts count as failures; the
//! bulkhead and the rate limit only hold calls that will really be made; the balancer picks the endpoint last,
//! so each attempt can go to another one. Layers left unconfigured are left out.
//!
//! Without hedging, [`service`](ResiliencePipeline::service) runs these steps as one fused service rather than a
//! stack of tower layers: the same order and errors, one boxed future per call instead of one per layer, and the
//! attempts' time limits kept by one watchdog task per pipeline instead of a runtime timer per attempt (the
//! deadline needs no limit of its own, since every wait inside the call is bounded by it). On loopback HTTP that
//! took the pipeline's cost from 10-15% of a client's peak throughput to 2-5%; see `fused.rs` and
//! `timeout/watchdog.rs`. With hedging, the layers are stacked as they are. Each layer stays usable on its own.
//!
//! ```
//! use std::time::Duration;
//! use courier_resilience::pipeline::ResiliencePipeline;
//! use courier_resilience::retry::RetryPredicate;
//! use tower::{ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let toml = r#"
//!     name = "payments"
//!     deadline = "2s"
//!     attempt_timeout = "500ms"
//!     [retry]
//!     max_attempts = 3
//!     [circuit_breaker]
//!     window_size = 100
//!     failure_rate = 0.5
//!     [bulkhead]
//!     max_concurrent = 64
//! "#;
//! let pipeline = ResiliencePipeline::from_toml(toml)?.retry_when(RetryPredicate::always());
//! let breaker = pipeline.breaker().cloned(); // share it with a bus gate, a dashboard...
//! let svc = pipeline.service(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }))?;
//! assert_eq!(svc.oneshot(5).await?, 5);
//! assert!(breaker.is_some());
//! # Ok(()) }
//! ```

mod config;
mod fused;

use std::time::Duration;

use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

pub use config::{
    BalanceSection, BulkheadSection, CircuitBreakerSection, ConfigError, HedgeSection, PipelineConfig,
    RateLimitSection, RetrySection,
};

use crate::balance::{Balance, BalanceConfig};
use crate::bulkhead::{Bulkhead, BulkheadLayer};
use crate::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
use crate::error::{IntoResilienceError, ResilienceError};
use crate::hedge::{HedgeDelay, HedgeLayer};
use crate::rate_limit::{RateLimitLayer, RateLimiter};
use crate::retry::{Idempotency, RetryLayer, RetryPolicy, RetryPredicate};
use crate::timeout::watchdog::Watchdog;
use crate::timeout::{AttemptTimeoutLayer, DeadlineLayer};

/// The service a pipeline builds: cheap to clone, `Send + Sync`, one boxed future per call.
pub type PipelineService<Req, Resp, E> = BoxCloneSyncService<Req, Resp, ResilienceError<E>>;

/// Builds the stack of layers (see the [module docs](self)).
pub struct ResiliencePipeline<Req> {
    name: String,
    deadline: Option<Duration>,
    retry: Option<RetryPolicy>,
    predicate: Option<RetryPredicate<Req>>,
    hedge: Option<HedgeDelay>,
    breaker: Option<CircuitBreaker>,
    attempt_timeout: Option<Duration>,
    bulkhead: Option<Bulkhead>,
    rate_limit: Option<RateLimiter<()>>,
    balance: BalanceConfig,
    /// Set by [`balanced`](Self::balanced): the transport is a balancer.
    balanced: bool,
}

impl<Req> std::fmt::Debug for ResiliencePipeline<Req> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResiliencePipeline")
            .field("name", &self.name)
            .field("deadline", &self.deadline)
            .field("retry", &self.retry)
            .field("hedge", &self.hedge)
            .field("breaker", &self.breaker)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("bulkhead", &self.bulkhead)
            .field("rate_limit", &self.rate_limit)
            .field("balance", &self.balance)
            .finish()
    }
}

impl<Req> ResiliencePipeline<Req> {
    /// An empty pipeline named `name` (the default name of its breaker, bulkhead and limiter).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            deadline: None,
            retry: None,
            predicate: None,
            hedge: None,
            breaker: None,
            attempt_timeout: None,
            bulkhead: None,
            rate_limit: None,
            balance: BalanceConfig::default(),
            balanced: false,
        }
    }

    /// A pipeline from a TOML section's text (see [`PipelineConfig`] for the keys).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_config(&PipelineConfig::from_toml(text)?)
    }

    /// A pipeline from parsed configuration; fails on the first invalid key.
    pub fn from_config(config: &PipelineConfig) -> Result<Self, ConfigError> {
        let s = config.validate()?;
        let mut p = Self::new(s.name.clone());
        p.deadline = s.deadline;
        p.attempt_timeout = s.attempt_timeout;
        p.retry = s.retry;
        p.hedge = s.hedge;
        p.breaker = s.circuit_breaker.map(|c| CircuitBreaker::new(s.name.clone(), c));
        p.bulkhead = s.bulkhead.map(|c| Bulkhead::new(s.name.clone(), c));
        p.rate_limit = s.rate_limit.map(|c| RateLimiter::new(s.name.clone(), c));
        p.balance = s.balance;
        Ok(p)
    }

    /// Bounds each whole call.
    pub fn deadline(mut self, total: Duration) -> Self {
        self.deadline = Some(total);
        self
    }

    /// Retries as `policy` says (also set [`retry_when`](Self::retry_when)).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Which requests are safe to retry or hedge. Required when retrying or hedging: there is no default, so
    /// a non-idempotent call is never retried by accident.
    pub fn retry_when(mut self, predicate: RetryPredicate<Req>) -> Self {
        self.predicate = Some(predicate);
        self
    }

    /// Hedges after `delay`.
    pub fn hedge(mut self, delay: HedgeDelay) -> Self {
        self.hedge = Some(delay);
        self
    }

    /// Guards calls with `breaker` (keep a clone to share it, or get it back with [`breaker`](Self::breaker)).
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Bounds each attempt.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// Limits concurrency with `bulkhead`.
    pub fn bulkhead(mut self, bulkhead: Bulkhead) -> Self {
        self.bulkhead = Some(bulkhead);
        self
    }

    /// Limits the rate with `limiter` (global; for a keyed limit, add a
    /// [`RateLimitLayer::keyed`] to the transport yourself).
    pub fn rate_limit(mut self, limiter: RateLimiter<()>) -> Self {
        self.rate_limit = Some(limiter);
        self
    }

    /// Sets passive ejection for [`balanced`](Self::balanced).
    pub fn balance(mut self, config: BalanceConfig) -> Self {
        self.balance = config;
        self
    }

    /// The circuit breaker, if the pipeline has one.
    pub fn breaker(&self) -> Option<&CircuitBreaker> {
        self.breaker.as_ref()
    }

    /// The pipeline over one transport service (fused into one service when there is no hedging; see the
    /// [module docs](self)).
    pub fn service<S, E>(self, transport: S) -> Result<PipelineService<Req, S::Response, E>, ConfigError>
    where
        S: tower::Service<Req> + Clone + Send + Sync + 'static,
        S::Error: IntoResilienceError<Source = E>,
        S::Future: Send + 'static,
        S::Response: Send + 'static,
        Req: Clone + Send + 'static,
        E: crate::CallError,
    {
        let predicate = match (&self.predicate, self.retry.is_some() || self.hedge.is_some()) {
            (Some(p), _) => p.clone(),
            (None, false) => RetryPredicate::never(),
            (None, true) => {
                let key = if self.retry.is_some() { "retry" } else { "hedge" };
                return Err(ConfigError::new(
                    key,
                    "say which requests are safe to send twice: .retry_when(RetryPredicate::idempotent()) \
                     (or ::always() for read-only calls)",
                ));
            }
        };
        if self.hedge.is_none() {
            let plan = fused::Plan {
                deadline: self.deadline,
                retry: self.retry,
                predicate,
                breaker: self.breaker,
                attempt_timeout: self.attempt_timeout,
                bulkhead: self.bulkhead,
                rate_limit: self.rate_limit,
                balanced: self.balanced,
                watchdog: Watchdog::new(),
            };
            return Ok(BoxCloneSyncService::new(fused::Fused::new(transport, plan)));
        }
        let svc = ServiceBuilder::new()
            .option_layer(self.deadline.map(DeadlineLayer::new))
            .option_layer(self.retry.map(|p| RetryLayer::new(p, predicate.clone())))
            .option_layer(self.hedge.map(|d| HedgeLayer::new(d, predicate.clone())))
            .option_layer(self.breaker.map(CircuitBreakerLayer::new))
            .option_layer(self.attempt_timeout.map(AttemptTimeoutLayer::new))
            .option_layer(self.bulkhead.map(BulkheadLayer::new))
            .option_layer(self.rate_limit.map(RateLimitLayer::global))
            .map_err(IntoResilienceError::into_resilience)
            .service(transport);
        Ok(BoxCloneSyncService::new(svc))
    }

    /// The stack over a [`Balance`] of `endpoints` (name, transport), with this pipeline's ejection settings.
    pub fn balanced<S, E>(
        self,
        endpoints: impl IntoIterator<Item = (String, S)>,
    ) -> Result<PipelineService<Req, S::Response, E>, ConfigError>
    where
        S: tower::Service<Req> + Clone + Send + Sync + 'static,
        S::Error: IntoResilienceError<Source = E>,
        S::Future: Send + 'static,
        S::Response: Send + 'static,
        Req: Clone + Send + 'static,
        E: crate::CallError,
    {
        let mut builder = Balance::builder(self.balance);
        for (name, svc) in endpoints {
            builder = builder.endpoint(name, svc);
        }
        Self { balanced: true, ..self }.service(builder.build())
    }
}

impl<Req: Idempotency> ResiliencePipeline<Req> {
    /// Retries and hedges only idempotent requests and requests with an idempotency key.
    pub fn retry_idempotent(self) -> Self {
        self.retry_when(RetryPredicate::idempotent())
    }
}

#[cfg(test)]
mod tests;
