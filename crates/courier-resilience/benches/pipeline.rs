//! Per-call overhead of the resilience pipeline against the bare service, in one run, in process (no network):
//! `cargo bench -p courier-resilience --bench pipeline`.

use std::hint::black_box;
use std::time::Duration;

use courier_resilience::balance::BalanceConfig;
use courier_resilience::bulkhead::{Bulkhead, BulkheadConfig};
use courier_resilience::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig};
use courier_resilience::hedge::HedgeDelay;
use courier_resilience::pipeline::ResiliencePipeline;
use courier_resilience::rate_limit::{RateLimitConfig, RateLimiter};
use courier_resilience::retry::{RetryPolicy, RetryPredicate};
use criterion::{Criterion, criterion_group, criterion_main};
use tower::{ServiceExt, service_fn};

fn transport() -> impl tower::Service<u64, Response = u64, Error = std::io::Error, Future: Send> + Clone + Send + Sync {
    service_fn(|x: u64| async move { Ok::<_, std::io::Error>(black_box(x) + 1) })
}

/// A transport that is pending once before it answers, as a real one is: timers are registered, wake-ups happen.
fn pending_once() -> impl tower::Service<u64, Response = u64, Error = std::io::Error, Future: Send> + Clone + Send + Sync
{
    service_fn(|x: u64| async move {
        tokio::task::yield_now().await;
        Ok::<_, std::io::Error>(black_box(x) + 1)
    })
}

fn full(hedge: bool) -> ResiliencePipeline<u64> {
    let p = ResiliencePipeline::new("bench")
        .deadline(Duration::from_secs(2))
        .retry(RetryPolicy::budgeted())
        .retry_when(RetryPredicate::always())
        .circuit_breaker(CircuitBreaker::new("bench", CircuitBreakerConfig::failure_rate(0.5)))
        .attempt_timeout(Duration::from_millis(500))
        .bulkhead(Bulkhead::new("bench", BulkheadConfig::new(1024)))
        .rate_limit(RateLimiter::new("bench", RateLimitConfig::per_second(1e12).burst(u32::MAX)))
        .balance(BalanceConfig::default());
    if hedge { p.hedge(HedgeDelay::Fixed(Duration::from_millis(100))) } else { p }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let bare = transport();
    let pipeline = full(false).service(transport()).unwrap();
    let balanced = rt.block_on(async {
        full(false).balanced([("a".to_owned(), transport()), ("b".to_owned(), transport())]).unwrap()
    });
    let hedged = full(true).service(transport()).unwrap();

    let bare_pending = pending_once();
    let pipeline_pending = full(false).service(pending_once()).unwrap();
    let timeouts_pending = ResiliencePipeline::new("bench")
        .deadline(Duration::from_secs(2))
        .attempt_timeout(Duration::from_millis(500))
        .service(pending_once())
        .unwrap();

    let mut group = c.benchmark_group("per_call");
    group.bench_function("bare_service", |b| b.to_async(&rt).iter(|| bare.clone().oneshot(black_box(1))));
    group.bench_function("pipeline_no_hedge", |b| b.to_async(&rt).iter(|| pipeline.clone().oneshot(black_box(1))));
    group.bench_function("pipeline_balanced_2", |b| b.to_async(&rt).iter(|| balanced.clone().oneshot(black_box(1))));
    group.bench_function("pipeline_with_hedge", |b| b.to_async(&rt).iter(|| hedged.clone().oneshot(black_box(1))));
    group.bench_function("bare_pending_once", |b| b.to_async(&rt).iter(|| bare_pending.clone().oneshot(black_box(1))));
    group.bench_function("pipeline_pending_once", |b| {
        b.to_async(&rt).iter(|| pipeline_pending.clone().oneshot(black_box(1)))
    });
    group.bench_function("timeouts_pending_once", |b| {
        b.to_async(&rt).iter(|| timeouts_pending.clone().oneshot(black_box(1)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
