//! The pipeline's layers run as one service: what [`ResiliencePipeline::service`] builds when there is no hedging.
//!
//! Stacked as tower layers, a call pays for each layer: a clone of the stack below it, a boxed future, and for the
//! deadline and the attempt timeout a timer each. Measured on loopback HTTP that was 10 to 15% of a client's peak
//! throughput. This service does the same steps in the same order, as one future:
//!
//! - the deadline is set for the whole call (visible to inner code through [`deadline`](crate::deadline)), but it
//!   needs no timer of its own: every wait inside the call is bounded by it (an attempt's timer fires at the
//!   earlier of its own timeout and the deadline; a retry never sleeps past it; the bulkhead's queue and the rate
//!   limiter never wait past it);
//! - retries as [`Retry`](crate::retry::Retry) does them (same budget, backoff, `Retry-After`, predicate);
//! - per attempt: the breaker's permit, then one time limit for the attempt (kept by a
//!   [`Watchdog`](crate::timeout::watchdog) shared by the pipeline's calls rather than a runtime timer per call),
//!   covering the bulkhead slot, the rate limiter's token and the transport; the outcome is recorded with the
//!   breaker.
//!
//! Errors are the layers' own (`DeadlineExceeded`, `AttemptTimeout`, `CircuitOpen` with the breaker's name,
//! `BulkheadFull`, `RateLimited`, the service's errors). The tests of `pipeline::tests` run through this service.
//!
//! [`ResiliencePipeline::service`]: super::ResiliencePipeline::service

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Service, ServiceExt};

use crate::bulkhead::Bulkhead;
use crate::circuit_breaker::{CircuitBreaker, Classify, DefaultClassifier, rejection};
use crate::deadline;
use crate::error::{BoxFuture, CallError, ErrorKind, IntoResilienceError, ResilienceError};
use crate::rate_limit::RateLimiter;
use crate::retry::{RetryPolicy, RetryPredicate, next_delay};
use crate::route::Tried;
use crate::timeout::attempt_deadline_at;
use crate::timeout::watchdog::Watchdog;

/// What a call goes through, shared by every clone of the service.
pub(crate) struct Plan<Req> {
    pub(crate) deadline: Option<Duration>,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) predicate: RetryPredicate<Req>,
    pub(crate) breaker: Option<CircuitBreaker>,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) bulkhead: Option<Bulkhead>,
    pub(crate) rate_limit: Option<RateLimiter<()>>,
    /// The transport is a balancer: attempts record which endpoint they went to, so a retry goes elsewhere.
    pub(crate) balanced: bool,
    /// Bounds the attempts in time.
    pub(crate) watchdog: Watchdog,
}

/// The fused pipeline around the transport `S`.
pub(crate) struct Fused<S, Req> {
    inner: S,
    plan: Arc<Plan<Req>>,
}

impl<S, Req> Fused<S, Req> {
    pub(crate) fn new(inner: S, plan: Plan<Req>) -> Self {
        Self { inner, plan: Arc::new(plan) }
    }
}

impl<S: Clone, Req> Clone for Fused<S, Req> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), plan: self.plan.clone() }
    }
}

/// The transport as the steps of a call need it.
trait Transport<Req>: Service<Req, Error: IntoResilienceError<Source: CallError>, Future: Send> + Send {}

impl<S, Req> Transport<Req> for S
where
    S: Service<Req> + Send,
    S::Error: IntoResilienceError,
    Source<S, Req>: CallError,
    S::Future: Send,
{
}

type Outcome<S, Req> = Result<<S as Service<Req>>::Response, ResilienceError<Source<S, Req>>>;
type Source<S, Req> = <<S as Service<Req>>::Error as IntoResilienceError>::Source;

impl<S, Req> Service<Req> for Fused<S, Req>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Error: IntoResilienceError,
    Source<S, Req>: CallError,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    Req: Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = ResilienceError<Source<S, Req>>;
    type Future = BoxFuture<Outcome<S, Req>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(IntoResilienceError::into_resilience)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let plan = self.plan.clone();
        Box::pin(async move {
            let at = plan.deadline.map(|total| Instant::now() + total);
            deadline::scope_optional(at, plan.call(inner, req)).await
        })
    }
}

impl<Req: Clone + Send + 'static> Plan<Req> {
    /// The call: its attempts, retried as the policy allows.
    ///
    /// The request is cloned for an attempt only while a later attempt may still need it: the last one allowed
    /// gets the request itself. Each step awaits one future, and the waits that are rare (a full bulkhead, an
    /// empty token bucket) are boxed, so the call's future stays small: it is moved into its box on every call.
    async fn call<S: Transport<Req>>(&self, mut inner: S, req: Req) -> Outcome<S, Req> {
        if let Some(budget) = self.retry.as_ref().and_then(|policy| policy.budget.as_ref()) {
            budget.deposit();
        }
        let policy = self.retry.as_ref().filter(|policy| policy.max_attempts > 1 && self.predicate.allows(&req));
        let tried = (policy.is_some() && self.balanced).then(Tried::default);
        let mut req = Some(req);
        let mut attempt = 1;
        loop {
            let last = policy.is_none_or(|policy| attempt >= policy.max_attempts);
            let this = match (last, &req) {
                (false, Some(req)) => req.clone(),
                _ => req.take().expect("the request is kept until the last attempt"),
            };
            let error = match self.attempt(&mut inner, this, tried.as_ref()).await {
                Ok(response) => return Ok(response),
                Err(error) => error,
            };
            let Some(policy) = policy.filter(|_| !last) else { return Err(error) };
            let Some(delay) = next_delay(policy, attempt, &error) else { return Err(error) };
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// One attempt: past the breaker, within the attempt's time. The clock is read once for the breaker's
    /// permit, the attempt's time limit and the rate limiter.
    async fn attempt<S: Transport<Req>>(&self, inner: &mut S, req: Req, tried: Option<&Tried>) -> Outcome<S, Req> {
        let now = Instant::now();
        let permit = match &self.breaker {
            Some(breaker) => match breaker.try_acquire_at(now) {
                Ok(permit) => Some(permit),
                Err(rejected) => return Err(rejection(breaker, rejected)),
            },
            None => None,
        };
        let until = match self.attempt_timeout {
            Some(timeout) => Some(attempt_deadline_at(timeout, now)),
            None if self.deadline.is_some() => deadline::current().map(|at| (at, ErrorKind::DeadlineExceeded)),
            None => None,
        };
        let work = self.admitted(inner, req, tried, now);
        let result = match until {
            Some((at, kind)) => self.watchdog.limit(at, work).await.unwrap_or_else(|_| Err(ResilienceError::new(kind))),
            None => work.await,
        };
        if let Some(permit) = permit {
            permit.record(DefaultClassifier.classify(&result));
        }
        result
    }

    /// The transport's call, once the bulkhead has a slot and the rate limiter a token.
    async fn admitted<S: Transport<Req>>(
        &self,
        inner: &mut S,
        req: Req,
        tried: Option<&Tried>,
        now: Instant,
    ) -> Outcome<S, Req> {
        let _slot = match &self.bulkhead {
            Some(bulkhead) => Some(match bulkhead.try_acquire() {
                Some(slot) => slot,
                None => Box::pin(bulkhead.acquire()).await?,
            }),
            None => None,
        };
        if let Some(limiter) = &self.rate_limit
            && let Some(wait) = limiter.reserve_at(&(), now)?
        {
            Box::pin(tokio::time::sleep(wait)).await;
        }
        let ready = inner.ready().await.map_err(IntoResilienceError::into_resilience)?;
        let response = match tried {
            Some(tried) => tried.sync_scope(|| ready.call(req)),
            None => ready.call(req),
        };
        response.await.map_err(IntoResilienceError::into_resilience)
    }
}
