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
