//! A balancer over a set of endpoints: power of two choices by in-flight calls, passive ejection of an endpoint
//! after N consecutive failures with readmission after a cool-down, and optional active health checks (your
//! async probe, run on an interval). A hedge or a retry above it goes to an endpoint the call has not tried yet.
//!
//! ```
//! use std::time::Duration;
//! use courier_resilience::balance::{Balance, BalanceConfig};
//! use tower::{ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let replica = |n: u32| service_fn(move |x: u32| async move { Ok::<_, std::io::Error>(x + n) });
//! let balance = Balance::builder(BalanceConfig::default().eject_after(5).cooldown(Duration::from_secs(30)))
//!     .endpoint("a", replica(0))
//!     .endpoint("b", replica(0))
//!     .health_check(Duration::from_secs(5), |_name, _svc| async { true })
//!     .build();
//! assert_eq!(balance.oneshot(1).await.unwrap(), 1);
//! # }
//! ```
//!
//! Why our own: tower's p2c `Balance` needs a `Discover` stream and a `Load` per endpoint, boxes errors into
//! `BoxError`, and has no passive ejection, cool-down or health probe.

mod endpoint;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use crate::error::{BoxFuture, ErrorKind, ErrorOf, IntoResilienceError, ResilienceError};
use crate::route;
use endpoint::Endpoint;

/// Passive ejection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalanceConfig {
    /// Consecutive failures that eject an endpoint (default 5).
    pub eject_after: u32,
    /// How long an ejected endpoint stays out (default 30 s).
    pub cooldown: Duration,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self { eject_after: 5, cooldown: Duration::from_secs(30) }
    }
}

impl BalanceConfig {
    /// Ejects after `n` consecutive failures (at least 1).
    pub fn eject_after(mut self, n: u32) -> Self {
        self.eject_after = n.max(1);
        self
    }

    /// Keeps an ejected endpoint out for `cooldown`.
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }
}

type Probe<S> = Arc<dyn Fn(String, S) -> BoxFuture<bool> + Send + Sync>;

/// Builds a [`Balance`].
pub struct BalanceBuilder<S> {
    config: BalanceConfig,
    endpoints: Vec<(String, S)>,
    probe: Option<(Duration, Probe<S>)>,
}

impl<S> std::fmt::Debug for BalanceBuilder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.endpoints.iter().map(|(n, _)| n).collect();
        f.debug_struct("BalanceBuilder").field("config", &self.config).field("endpoints", &names).finish()
    }
}

impl<S: Clone + Send + Sync + 'static> BalanceBuilder<S> {
    /// Adds an endpoint named `name` (the `endpoint` label of its metrics).
    pub fn endpoint(mut self, name: impl Into<String>, service: S) -> Self {
        self.endpoints.push((name.into(), service));
        self
    }

    /// Probes every endpoint every `interval` with `probe(name, service)`; an endpoint whose probe returns false
    /// (or takes longer than `interval`) takes no calls until a probe passes.
    pub fn health_check<F, Fut>(mut self, interval: Duration, probe: F) -> Self
    where
        F: Fn(String, S) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        self.probe = Some((interval.max(Duration::from_millis(1)), Arc::new(move |n, s| Box::pin(probe(n, s)))));
        self
    }

    /// The balancer. With a health check, this spawns the probing task (so call it inside a tokio runtime); the
    /// task ends when the last clone of the balancer is dropped.
    pub fn build(self) -> Balance<S> {
        static IDS: AtomicU64 = AtomicU64::new(1);
        let endpoints = self.endpoints.into_iter().map(|(n, s)| Endpoint::new(n, s)).collect();
        let shared = Arc::new(Shared {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            config: self.config,
            origin: Instant::now(),
            endpoints,
            probing: std::sync::Mutex::new(None),
        });
        if let Some((interval, probe)) = self.probe {
            let task = tokio::spawn(probe_loop(Arc::downgrade(&shared), interval, probe));
            *shared.probing.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
        }
        Balance { shared }
    }
}

async fn probe_loop<S: Clone + Send + Sync + 'static>(shared: Weak<Shared<S>>, interval: Duration, probe: Probe<S>) {
    let mut ticks = tokio::time::interval(interval);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        for e in &shared.endpoints {
            let ok = tokio::time::timeout(interval, probe(e.name.clone(), e.service.clone())).await.unwrap_or(false);
            if e.probe_healthy.swap(ok, Ordering::Relaxed) != ok {
                tracing::info!(endpoint = %e.name, healthy = ok, "health check changed");
            }
            metrics::gauge!("courier_balance_endpoint_healthy", "endpoint" => e.name.clone()).set(f64::from(ok));
        }
    }
}

#[derive(Debug)]
struct Shared<S> {
    id: u64,
    config: BalanceConfig,
    origin: Instant,
    endpoints: Vec<Endpoint<S>>,
    probing: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

impl<S> Drop for Shared<S> {
    fn drop(&mut self) {
        if let Some(task) = self.probing.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

/// Spreads calls over endpoints (see the [module docs](self)). A cheap `Clone` handle.
#[derive(Debug)]
pub struct Balance<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for Balance<S> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

impl<S: Clone + Send + Sync + 'static> Balance<S> {
    /// A builder with `config`.
    pub fn builder(config: BalanceConfig) -> BalanceBuilder<S> {
        BalanceBuilder { config, endpoints: Vec::new(), probe: None }
    }
}

impl<S> Balance<S> {
    /// The names of the endpoints taking calls now.
    pub fn available(&self) -> Vec<&str> {
        let now = Instant::now();
        let s = &self.shared;
        s.endpoints.iter().filter(|e| e.available(s.origin, now)).map(|e| e.name.as_str()).collect()
    }

    /// Picks an endpoint: two at random among the available ones (not yet tried by this call, if any are left),
    /// the one with fewer calls in flight.
    fn pick(&self) -> Result<usize, Option<Duration>> {
        let s = &self.shared;
        let now = Instant::now();
        let mut candidates: Vec<usize> =
            (0..s.endpoints.len()).filter(|&i| s.endpoints[i].available(s.origin, now)).collect();
        if candidates.is_empty() {
            let soonest = s.endpoints.iter().filter_map(|e| e.cooldown_left(s.origin, now)).min();
            return Err(soonest);
        }
        let tried = route::tried(s.id);
        if !tried.is_empty() && candidates.iter().any(|i| !tried.contains(i)) {
            candidates.retain(|i| !tried.contains(i));
        }
        let chosen = match candidates.len() {
            1 => candidates[0],
            n => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                let (a, b) = (candidates[a], candidates[b]);
                let load = |i: usize| s.endpoints[i].in_flight.load(Ordering::Relaxed);
                if load(b) < load(a) { b } else { a }
            }
        };
        route::record(s.id, chosen);
        Ok(chosen)
    }
}

struct InFlight<S>(Arc<Shared<S>>, usize);

impl<S> Drop for InFlight<S> {
    fn drop(&mut self) {
        self.0.endpoints[self.1].in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S, Req> Service<Req> for Balance<S>
where
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: IntoResilienceError,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = ErrorOf<S, Req>;
    type Future = BoxFuture<Result<S::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let index = match self.pick() {
            Ok(index) => index,
            Err(soonest) => {
                let mut e = ResilienceError::new(ErrorKind::NoHealthyEndpoint);
                if let Some(after) = soonest {
                    e = e.with_retry_after(after);
                }
                return Box::pin(std::future::ready(Err(e)));
            }
        };
        let shared = self.shared.clone();
        let endpoint = &shared.endpoints[index];
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut svc = endpoint.service.clone();
        Box::pin(async move {
            let guard = InFlight(shared, index);
            let result = match svc.ready().await {
                Ok(ready) => ready.call(req).await,
                Err(e) => Err(e),
            }
            .map_err(IntoResilienceError::into_resilience);
            let s = &guard.0;
            let endpoint = &s.endpoints[index];
            match &result {
                Ok(_) => endpoint.succeeded(),
                Err(e) if e.is_retryable() => {
                    endpoint.failed(s.config.eject_after, s.config.cooldown, s.origin);
                }
                Err(_) => endpoint.succeeded(),
            }
            result
        })
    }
}

#[cfg(test)]
mod tests;
