use tower::Layer;

use super::{Retry, RetryPolicy, RetryPredicate};

/// Applies [`Retry`] with a policy and the predicate deciding which requests are safe to retry.
#[derive(Debug)]
pub struct RetryLayer<Req> {
    policy: RetryPolicy,
    predicate: RetryPredicate<Req>,
}

impl<Req> RetryLayer<Req> {
    /// Retries the requests `predicate` allows, as `policy` says.
    pub fn new(policy: RetryPolicy, predicate: RetryPredicate<Req>) -> Self {
        Self { policy, predicate }
    }
}

impl<Req: super::Idempotency> RetryLayer<Req> {
    /// Retries idempotent requests and requests with an idempotency key.
    pub fn idempotent(policy: RetryPolicy) -> Self {
        Self::new(policy, RetryPredicate::idempotent())
    }
}

impl<Req> Clone for RetryLayer<Req> {
    fn clone(&self) -> Self {
        Self { policy: self.policy.clone(), predicate: self.predicate.clone() }
    }
}

impl<S, Req> Layer<S> for RetryLayer<Req> {
    type Service = Retry<S, Req>;
    fn layer(&self, inner: S) -> Retry<S, Req> {
        Retry::new(inner, self.policy.clone(), self.predicate.clone())
    }
}
