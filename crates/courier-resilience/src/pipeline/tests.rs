use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tower::{ServiceExt, service_fn};

use super::*;
use crate::ErrorKind;
use crate::circuit_breaker::{CircuitBreakerConfig, CircuitState, Window};

fn failing(
    calls: Arc<AtomicU32>,
) -> impl tower::Service<u32, Response = u32, Error = std::io::Error, Future: Send> + Clone + Send + Sync {
    service_fn(move |_: u32| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Err::<u32, _>(std::io::Error::other("down")) }
    })
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_the_open_breaker() {
    let calls = Arc::new(AtomicU32::new(0));
    let breaker =
        CircuitBreaker::new("p", CircuitBreakerConfig::failure_rate(0.5).window(Window::Count(4)).minimum_calls(4));
    let svc = ResiliencePipeline::new("p")
        .deadline(Duration::from_secs(10))
        .retry(
            RetryPolicy::new().max_attempts(10).backoff(Duration::from_millis(1), Duration::from_millis(5)).no_budget(),
        )
        .retry_when(RetryPredicate::always())
        .circuit_breaker(breaker.clone())
        .attempt_timeout(Duration::from_secs(1))
        .service(failing(calls.clone()))
        .unwrap();
    let err = svc.oneshot(1).await.unwrap_err();
    assert!(err.is_circuit_open(), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 4, "the breaker opened after 4 failures and the retries stopped");
    assert_eq!(breaker.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn from_toml_builds_every_layer() {
    let toml = r#"
        name = "orders"
        deadline = "1s"
        attempt_timeout = "200ms"
        [retry]
        max_attempts = 2
        base_delay = "1ms"
        [hedge]
        delay = "50ms"
        [circuit_breaker]
        window_size = 10
        [bulkhead]
        max_concurrent = 2
        [rate_limit]
        per_second = 1000.0
        [balance]
        eject_after = 2
    "#;
    let p = ResiliencePipeline::from_toml(toml).unwrap();
    assert_eq!(p.breaker().unwrap().name(), "orders");
    let err = ResiliencePipeline::<u32>::from_toml(toml).unwrap().service(failing(Arc::default())).unwrap_err();
    assert_eq!(err.key(), "retry", "retrying without saying what is safe fails at start");
    let echo = service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) });
    let endpoints = vec![("a".to_owned(), echo), ("b".to_owned(), echo)];
    let svc = p.retry_when(RetryPredicate::always()).balanced(endpoints).unwrap();
    assert_eq!(svc.oneshot(3).await.unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_retries() {
    let svc = ResiliencePipeline::new("slow")
        .deadline(Duration::from_millis(300))
        .retry(RetryPolicy::new().max_attempts(10).backoff(Duration::from_millis(1), Duration::from_millis(1)))
        .retry_when(RetryPredicate::always())
        .attempt_timeout(Duration::from_millis(100))
        .service(service_fn(|x: u32| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, std::io::Error>(x)
        }))
        .unwrap();
    let start = tokio::time::Instant::now();
    let err = svc.oneshot(1).await.unwrap_err();
    assert!(err.is_timeout());
    assert!(matches!(err.kind(), ErrorKind::DeadlineExceeded | ErrorKind::AttemptTimeout));
    assert!(start.elapsed() <= Duration::from_millis(300));
}

/// The same pipeline twice: fused (no hedging) and as stacked layers (hedging that never fires within a test).
fn fused_and_layered(
    make: impl Fn() -> ResiliencePipeline<u32>,
    transport: impl tower::Service<u32, Response = u32, Error = std::io::Error, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static,
) -> [(&'static str, PipelineService<u32, u32, std::io::Error>); 2] {
    let never = crate::hedge::HedgeDelay::Fixed(Duration::from_secs(3600));
    [
        ("fused", make().service(transport.clone()).unwrap()),
        ("layered", make().hedge(never).retry_when(RetryPredicate::always()).service(transport).unwrap()),
    ]
}

fn sleeping(
    for_: Duration,
) -> impl tower::Service<u32, Response = u32, Error = std::io::Error, Future: Send> + Clone + Send + Sync {
    service_fn(move |x: u32| async move {
        tokio::time::sleep(for_).await;
        Ok::<_, std::io::Error>(x)
    })
}

#[tokio::test(start_paused = true)]
async fn fused_and_layered_time_out_alike() {
    let make = || {
        ResiliencePipeline::new("t").deadline(Duration::from_millis(250)).attempt_timeout(Duration::from_millis(100))
    };
    for (name, svc) in fused_and_layered(make, sleeping(Duration::from_secs(1))) {
        let start = tokio::time::Instant::now();
        let err = svc.oneshot(1).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AttemptTimeout, "{name}");
        assert_eq!(start.elapsed(), Duration::from_millis(100), "{name}");
    }
    let make =
        || ResiliencePipeline::new("t").deadline(Duration::from_millis(80)).attempt_timeout(Duration::from_millis(100));
    for (name, svc) in fused_and_layered(make, sleeping(Duration::from_secs(1))) {
        let start = tokio::time::Instant::now();
        let err = svc.oneshot(1).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{name}: the deadline comes first");
        assert_eq!(start.elapsed(), Duration::from_millis(80), "{name}");
    }
    let make = || ResiliencePipeline::new("t").deadline(Duration::from_millis(80));
    for (name, svc) in fused_and_layered(make, sleeping(Duration::from_secs(1))) {
        let err = svc.oneshot(1).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{name}: a deadline alone");
    }
}

#[tokio::test(start_paused = true)]
async fn fused_and_layered_show_the_deadline_to_the_transport() {
    let remaining = service_fn(|_: u32| async {
        Ok::<_, std::io::Error>(crate::deadline::remaining().map_or(0, |d| d.as_millis() as u32))
    });
    let make =
        || ResiliencePipeline::new("t").deadline(Duration::from_millis(700)).attempt_timeout(Duration::from_secs(5));
    for (name, svc) in fused_and_layered(make, remaining) {
        assert_eq!(svc.oneshot(1).await.unwrap(), 700, "{name}");
    }
}

#[tokio::test(start_paused = true)]
async fn fused_and_layered_reject_alike_at_the_bulkhead_and_the_rate_limit() {
    let make = || {
        ResiliencePipeline::new("t")
            .bulkhead(Bulkhead::new("b", crate::bulkhead::BulkheadConfig::new(1)))
            .attempt_timeout(Duration::from_secs(5))
    };
    for (name, svc) in fused_and_layered(make, sleeping(Duration::from_millis(100))) {
        let (first, second) = tokio::join!(svc.clone().oneshot(1), async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            svc.clone().oneshot(2).await
        });
        assert_eq!(first.unwrap(), 1, "{name}");
        assert_eq!(second.unwrap_err().kind(), ErrorKind::BulkheadFull, "{name}: no queue, so the second is refused");
    }
    let make = || {
        let limit = crate::rate_limit::RateLimitConfig::per_second(1.0).burst(1).max_wait(Duration::ZERO);
        ResiliencePipeline::new("t").rate_limit(RateLimiter::new("r", limit))
    };
    for (name, svc) in fused_and_layered(make, sleeping(Duration::ZERO)) {
        assert_eq!(svc.clone().oneshot(1).await.unwrap(), 1, "{name}");
        let err = svc.clone().oneshot(2).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::RateLimited, "{name}");
        assert!(err.retry_after().is_some(), "{name}: says when to come back");
    }
}

#[tokio::test(start_paused = true)]
async fn fused_and_layered_retry_alike() {
    let policy =
        || RetryPolicy::new().max_attempts(3).backoff(Duration::from_millis(1), Duration::from_millis(1)).no_budget();
    for retry_all in [true, false] {
        let make = || {
            let p = ResiliencePipeline::new("t").retry(policy());
            if retry_all { p.retry_when(RetryPredicate::always()) } else { p.retry_when(RetryPredicate::never()) }
        };
        let calls = Arc::new(AtomicU32::new(0));
        let counts: Vec<u32> = {
            let mut counts = Vec::new();
            for (_, svc) in fused_and_layered(make, failing(calls.clone())) {
                calls.store(0, Ordering::SeqCst);
                assert!(svc.oneshot(1).await.is_err());
                counts.push(calls.load(Ordering::SeqCst));
            }
            counts
        };
        let expected = if retry_all { 3 } else { 1 };
        assert_eq!(counts[0], expected, "fused, retry_all = {retry_all}");
        if retry_all {
            assert_eq!(counts[1], expected, "layered");
        }
    }
}

/// A request that counts its clones.
struct Counted(Arc<AtomicU32>);

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, Ordering::SeqCst);
        Self(self.0.clone())
    }
}

#[tokio::test(start_paused = true)]
async fn the_last_attempt_gets_the_request_itself() {
    let clones = Arc::new(AtomicU32::new(0));
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let flaky = service_fn(move |_: Counted| {
        let call = seen.fetch_add(1, Ordering::SeqCst) + 1;
        async move { if call < 3 { Err(std::io::Error::other("down")) } else { Ok(call) } }
    });
    let retry = RetryPolicy::new().max_attempts(3).backoff(Duration::from_millis(1), Duration::from_millis(2));
    let svc = ResiliencePipeline::new("p")
        .retry(retry.no_budget())
        .retry_when(RetryPredicate::always())
        .service(flaky)
        .unwrap();
    assert_eq!(svc.clone().oneshot(Counted(clones.clone())).await.unwrap(), 3);
    assert_eq!(clones.load(Ordering::SeqCst), 2, "attempts 1 and 2 sent copies, attempt 3 the request");

    clones.store(0, Ordering::SeqCst);
    assert_eq!(svc.oneshot(Counted(clones.clone())).await.unwrap(), 4);
    assert_eq!(clones.load(Ordering::SeqCst), 1, "a call that succeeds at once made one copy, kept for a retry");
}
