//! The bulkhead: at most N calls at once, an optional bounded queue of callers waiting (each at most a maximum
//! wait), and an immediate [`ErrorKind::BulkheadFull`] beyond that, so one slow dependency cannot take every
//! task and connection of the service.
//!
//! ```
//! use std::time::Duration;
//! use courier_resilience::bulkhead::{Bulkhead, BulkheadConfig, BulkheadLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let bulkhead = Bulkhead::new("search", BulkheadConfig::new(32).queue(64, Duration::from_millis(100)));
//! let svc = ServiceBuilder::new()
//!     .layer(BulkheadLayer::new(bulkhead))
//!     .service(service_fn(|q: &'static str| async move { Ok::<_, std::io::Error>(q.len()) }));
//! assert_eq!(svc.oneshot("shoes").await.unwrap(), 5);
//! # }
//! ```
//!
//! Why our own: tower's `ConcurrencyLimit` makes every extra caller wait in `poll_ready` with no bound on the
//! queue or the wait, and `LoadShed` over it rejects at once with no queue at all.

mod layer;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::Service;

pub use layer::BulkheadLayer;

use crate::deadline;
use crate::error::{BoxFuture, ErrorKind, ErrorOf, IntoResilienceError, ResilienceError};

/// A bulkhead's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkheadConfig {
    /// Calls running at once.
    pub max_concurrent: usize,
    /// Callers waiting for a slot at once (0: reject as soon as every slot is busy).
    pub max_queue: usize,
    /// How long a queued caller waits at most (never past the call's deadline).
    pub max_wait: Duration,
}

impl BulkheadConfig {
    /// `max_concurrent` calls at once, no queue.
    pub fn new(max_concurrent: usize) -> Self {
        Self { max_concurrent, max_queue: 0, max_wait: Duration::ZERO }
    }

    /// Lets up to `max_queue` callers wait up to `max_wait` each.
    pub fn queue(mut self, max_queue: usize, max_wait: Duration) -> Self {
        self.max_queue = max_queue;
        self.max_wait = max_wait;
        self
    }
}

struct Shared {
    name: String,
    config: BulkheadConfig,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    rejected: Counter,
}

/// A bulkhead: a cheap `Clone` handle; clones share the slots.
#[derive(Clone)]
pub struct Bulkhead {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Bulkhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bulkhead")
            .field("name", &self.shared.name)
            .field("config", &self.shared.config)
            .field("available", &self.available())
            .finish()
    }
}

impl Bulkhead {
    /// A bulkhead named `name` (the `name` label of `courier_bulkhead_rejected_total`); at least one slot.
    pub fn new(name: impl Into<String>, config: BulkheadConfig) -> Self {
        let name = name.into();
        let config = BulkheadConfig { max_concurrent: config.max_concurrent.max(1), ..config };
        let rejected = metrics::counter!("courier_bulkhead_rejected_total", "name" => name.clone());
        let slots = Arc::new(Semaphore::new(config.max_concurrent));
        Self { shared: Arc::new(Shared { name, config, slots, waiting: AtomicUsize::new(0), rejected }) }
    }

    /// Free slots now.
    pub fn available(&self) -> usize {
        self.shared.slots.available_permits()
    }

    /// Callers waiting now.
    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::Relaxed)
    }

    /// Takes a slot if one is free now, without queueing (the slot is freed when the permit drops).
    ///
    /// ```
    /// use courier_resilience::bulkhead::{Bulkhead, BulkheadConfig};
    ///
    /// let bulkhead = Bulkhead::new("inventory", BulkheadConfig::new(1));
    /// let slot = bulkhead.try_acquire().expect("one slot is free");
    /// assert!(bulkhead.try_acquire().is_none());
    /// drop(slot);
    /// assert!(bulkhead.try_acquire().is_some());
    /// ```
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.shared.slots.clone().try_acquire_owned().ok()
    }

    /// Takes a slot: at once if one is free, else after queueing (if there is room in the queue).
    pub async fn acquire<E>(&self) -> Result<OwnedSemaphorePermit, ResilienceError<E>> {
        let s = &self.shared;
        if let Some(permit) = self.try_acquire() {
            return Ok(permit);
        }
        let full = || {
            s.rejected.increment(1);
            ResilienceError::new(ErrorKind::BulkheadFull).with_layer(s.name.clone())
        };
        if s.waiting.fetch_add(1, Ordering::AcqRel) >= s.config.max_queue {
            s.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(full());
        }
        let wait = deadline::remaining().map_or(s.config.max_wait, |left| left.min(s.config.max_wait));
        let result = tokio::time::timeout(wait, s.slots.clone().acquire_owned()).await;
        s.waiting.fetch_sub(1, Ordering::AcqRel);
        match result {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(full()),
        }
    }
}

/// Calls `S` within a [`Bulkhead`].
#[derive(Debug, Clone)]
pub struct BulkheadService<S> {
    inner: S,
    bulkhead: Bulkhead,
}

impl<S> BulkheadService<S> {
    /// Limits `inner` with `bulkhead`.
    pub fn new(inner: S, bulkhead: Bulkhead) -> Self {
        Self { inner, bulkhead }
    }
}

impl<S, Req> Service<Req> for BulkheadService<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Error: IntoResilienceError,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = ErrorOf<S, Req>;
    type Future = BoxFuture<Result<S::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(IntoResilienceError::into_resilience)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Fast path: a free slot, so the ready inner service is called now.
        if let Ok(permit) = self.bulkhead.shared.slots.clone().try_acquire_owned() {
            let fut = self.inner.call(req);
            return Box::pin(async move {
                let result = fut.await.map_err(IntoResilienceError::into_resilience);
                drop(permit);
                result
            });
        }
        let clone = self.inner.clone();
        let mut svc = std::mem::replace(&mut self.inner, clone);
        let bulkhead = self.bulkhead.clone();
        Box::pin(async move {
            let _permit = bulkhead.acquire().await?;
            tower::ServiceExt::ready(&mut svc).await.map_err(IntoResilienceError::into_resilience)?;
            svc.call(req).await.map_err(IntoResilienceError::into_resilience)
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;
    use tower::{ServiceExt, service_fn};

    use super::*;

    fn slow() -> impl Service<u32, Response = u32, Error = std::io::Error, Future: Send> + Clone + Send {
        service_fn(|x: u32| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(x)
        })
    }

    #[tokio::test(start_paused = true)]
    async fn rejects_beyond_limit_and_queue() {
        let bulkhead = Bulkhead::new("b", BulkheadConfig::new(2).queue(1, Duration::from_secs(5)));
        let svc = BulkheadService::new(slow(), bulkhead.clone());
        let start = Instant::now();
        let calls: Vec<_> = (0..4).map(|i| svc.clone().oneshot(i)).collect();
        let results = futures_join(calls).await;
        let rejected: Vec<_> = results.iter().filter(|r| r.as_ref().is_err_and(|e| e.is_rejected())).collect();
        assert_eq!(rejected.len(), 1, "2 running + 1 queued, the 4th is rejected");
        assert_eq!(rejected[0].as_ref().unwrap_err().kind(), ErrorKind::BulkheadFull);
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3);
        assert_eq!(start.elapsed(), Duration::from_secs(2), "the queued call ran after a slot freed");
        assert_eq!((bulkhead.available(), bulkhead.waiting()), (2, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn queued_caller_gives_up_after_max_wait() {
        let bulkhead = Bulkhead::new("b", BulkheadConfig::new(1).queue(5, Duration::from_millis(300)));
        let svc = BulkheadService::new(slow(), bulkhead);
        let results = futures_join(vec![svc.clone().oneshot(1), svc.clone().oneshot(2)]).await;
        assert!(results[0].is_ok());
        assert!(results[1].as_ref().unwrap_err().is_rejected());
    }

    async fn futures_join<F: std::future::Future + Send + 'static>(futs: Vec<F>) -> Vec<F::Output>
    where
        F::Output: Send + 'static,
    {
        let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }
}
