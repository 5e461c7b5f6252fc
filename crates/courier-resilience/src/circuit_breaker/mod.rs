//! The circuit breaker: stops calling a dependency that is failing or slow, fails fast with
//! [`ErrorKind::CircuitOpen`] while open, and lets a few trial calls through after the open duration.
//!
//! - sliding window by count ([`Window::Count`]) or by time ([`Window::Time`]);
//! - failure-rate and slow-call-rate thresholds, judged as soon as the window holds
//!   [`minimum_calls`](CircuitBreakerConfig::minimum_calls) calls (not only when the window is full);
//! - open for [`open_duration`](CircuitBreakerConfig::open_duration), then half-open with
//!   [`half_open_calls`](CircuitBreakerConfig::half_open_calls) trial calls;
//! - [`force_open`](CircuitBreaker::force_open), [`force_closed`](CircuitBreaker::force_closed),
//!   [`reset`](CircuitBreaker::reset);
//! - state changes through a `watch` receiver ([`CircuitBreaker::subscribe`]) and callbacks
//!   ([`CircuitBreaker::on_state_change`]), and as metrics: gauge `courier_circuit_state{name}` (see
//!   [`CircuitState::as_metric`]), counters `courier_circuit_calls_total{name, outcome}`,
//!   `courier_circuit_slow_calls_total{name}`, `courier_circuit_rejected_total{name}` and
//!   `courier_circuit_transitions_total{name, to}`;
//! - with the `bus` feature, a breaker is a `courier_bus::ConsumerGate`: consumers pause while it is open.
//!
//! ```
//! use courier_resilience::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let breaker = CircuitBreaker::new("inventory", CircuitBreakerConfig::failure_rate(0.5));
//! let svc = ServiceBuilder::new()
//!     .layer(CircuitBreakerLayer::new(breaker.clone()))
//!     .service(service_fn(|sku: u32| async move { Ok::<_, std::io::Error>(sku) }));
//! assert_eq!(svc.oneshot(7).await.unwrap(), 7);
//! # }
//! ```
//!
//! Why our own: tower has no circuit breaker, and tower-resilience's count window judges only once full (a
//! window of 100 lets 99 failures through after every restart) and has no consumer gate.

mod breaker;
mod config;
#[cfg(feature = "bus")]
mod gate;
mod layer;
mod window;

use std::task::{Context, Poll};

use tower::Service;

pub use breaker::{CircuitBreaker, CircuitState, Outcome, Permit, Rejected, StateChange};
pub use config::{CircuitBreakerConfig, Window};
pub use layer::CircuitBreakerLayer;

use crate::error::{BoxFuture, CallError, ErrorKind, ErrorOf, IntoResilienceError, ResilienceError};

/// Decides how a call's result counts for the breaker.
pub trait Classify<Resp, E>: Clone + Send + Sync + 'static {
    /// The outcome of `result`.
    fn classify(&self, result: &Result<Resp, ResilienceError<E>>) -> Outcome;
}

/// The default classification: a response is a success; a rejection by a layer below and an error the service
/// calls not retryable (the caller's mistake, such as a 4xx) are ignored; every other error is a failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

impl<Resp, E: CallError> Classify<Resp, E> for DefaultClassifier {
    fn classify(&self, result: &Result<Resp, ResilienceError<E>>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(e) if e.is_rejected() => Outcome::Ignored,
            Err(e) if e.kind() == ErrorKind::Service && !e.is_retryable() => Outcome::Ignored,
            Err(_) => Outcome::Failure,
        }
    }
}

impl<F, Resp, E> Classify<Resp, E> for F
where
    F: Fn(&Result<Resp, ResilienceError<E>>) -> Outcome + Clone + Send + Sync + 'static,
{
    fn classify(&self, result: &Result<Resp, ResilienceError<E>>) -> Outcome {
        self(result)
    }
}

/// Calls `S` through a [`CircuitBreaker`] (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct CircuitBreakerService<S, C = DefaultClassifier> {
    inner: S,
    breaker: CircuitBreaker,
    classifier: C,
}

impl<S> CircuitBreakerService<S> {
    /// Guards `inner` with `breaker`.
    pub fn new(inner: S, breaker: CircuitBreaker) -> Self {
        Self { inner, breaker, classifier: DefaultClassifier }
    }
}

impl<S, C> CircuitBreakerService<S, C> {
    /// Classifies results with `classifier`.
    pub fn with_classifier<C2>(self, classifier: C2) -> CircuitBreakerService<S, C2> {
        CircuitBreakerService { inner: self.inner, breaker: self.breaker, classifier }
    }

    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl<S, C, Req> Service<Req> for CircuitBreakerService<S, C>
where
    S: Service<Req>,
    S::Error: IntoResilienceError,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    C: Classify<S::Response, <S::Error as IntoResilienceError>::Source>,
{
    type Response = S::Response;
    type Error = ErrorOf<S, Req>;
    type Future = BoxFuture<Result<S::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(IntoResilienceError::into_resilience)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let permit = match self.breaker.try_acquire() {
            Ok(permit) => permit,
            Err(rejected) => return Box::pin(std::future::ready(Err(rejection(&self.breaker, rejected)))),
        };
        let fut = self.inner.call(req);
        let classifier = self.classifier.clone();
        Box::pin(async move {
            let result = fut.await.map_err(IntoResilienceError::into_resilience);
            permit.record(classifier.classify(&result));
            result
        })
    }
}

/// The error of a call the open `breaker` turned away.
pub(crate) fn rejection<E>(breaker: &CircuitBreaker, rejected: Rejected) -> ResilienceError<E> {
    let error = ResilienceError::new(ErrorKind::CircuitOpen).with_layer(breaker.name());
    match rejected.retry_after {
        Some(after) => error.with_retry_after(after),
        None => error,
    }
}

#[cfg(test)]
mod tests;
