use tower::Layer;

use super::{CircuitBreaker, CircuitBreakerService, DefaultClassifier};

/// Applies [`CircuitBreakerService`]. Every service it wraps shares the same [`CircuitBreaker`].
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C = DefaultClassifier> {
    breaker: CircuitBreaker,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// Guards services with `breaker` (clone it to keep a handle).
    pub fn new(breaker: CircuitBreaker) -> Self {
        Self { breaker, classifier: DefaultClassifier }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Classifies results with `classifier` (a [`Classify`](super::Classify) or a closure from
    /// `&Result<Response, ResilienceError<E>>` to [`Outcome`](super::Outcome)).
    pub fn with_classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer { breaker: self.breaker, classifier }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreakerService<S, C>;
    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService { inner, breaker: self.breaker.clone(), classifier: self.classifier.clone() }
    }
}
