use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::{Service, ServiceExt, service_fn};

use super::*;

/// A dependency whose health and latency the test controls, counting its calls.
#[derive(Clone, Default)]
struct Dependency {
    failing: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    calls: Arc<AtomicU32>,
}

impl Dependency {
    fn service(&self) -> impl Service<u32, Response = u32, Error = std::io::Error, Future: Send> + Clone + use<> {
        let d = self.clone();
        service_fn(move |x: u32| {
            d.calls.fetch_add(1, Ordering::SeqCst);
            let (failing, delay) = (d.failing.load(Ordering::SeqCst), d.delay_ms.load(Ordering::SeqCst));
            async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                if failing { Err(std::io::Error::other("down")) } else { Ok(x) }
            }
        })
    }
    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

fn config() -> CircuitBreakerConfig {
    CircuitBreakerConfig::failure_rate(0.5)
        .window(Window::Count(10))
        .minimum_calls(4)
        .open_for(Duration::from_secs(10))
        .half_open_calls(2)
}

#[tokio::test(start_paused = true)]
async fn opens_at_the_threshold_then_fails_fast_without_calling() {
    let dep = Dependency::default();
    dep.failing.store(true, Ordering::SeqCst);
    let breaker = CircuitBreaker::new("dep", config());
    let svc = CircuitBreakerService::new(dep.service(), breaker.clone());
    for _ in 0..3 {
        assert_eq!(svc.clone().oneshot(1).await.unwrap_err().kind(), ErrorKind::Service);
        assert_eq!(breaker.state(), CircuitState::Closed, "not judged below minimum_calls");
    }
    svc.clone().oneshot(1).await.unwrap_err();
    assert_eq!(breaker.state(), CircuitState::Open, "judged at minimum_calls, long before the window is full");
    for _ in 0..50 {
        let err = svc.clone().oneshot(1).await.unwrap_err();
        assert!(err.is_circuit_open() && err.is_rejected());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(10)));
    }
    assert_eq!(dep.calls(), 4, "an open breaker does not call the dependency");
}

#[tokio::test(start_paused = true)]
async fn half_open_trials_close_on_success_and_reopen_on_failure() {
    let dep = Dependency::default();
    dep.failing.store(true, Ordering::SeqCst);
    dep.delay_ms.store(100, Ordering::SeqCst);
    let breaker = CircuitBreaker::new("dep", config());
    let svc = CircuitBreakerService::new(dep.service(), breaker.clone());
    for _ in 0..4 {
        let _ = svc.clone().oneshot(1).await;
    }
    assert_eq!(breaker.state(), CircuitState::Open);

    // After the open duration: exactly 2 trial calls go through, a third concurrent one is refused.
    tokio::time::advance(Duration::from_secs(10)).await;
    dep.failing.store(false, Ordering::SeqCst);
    let before = dep.calls();
    let (a, b) = (svc.clone().oneshot(1), svc.clone().oneshot(2));
    let third = async {
        tokio::task::yield_now().await;
        svc.clone().oneshot(3).await
    };
    let (a, b, c) = tokio::join!(a, b, third);
    assert!(a.is_ok() && b.is_ok());
    assert!(c.unwrap_err().is_circuit_open(), "only half_open_calls trials");
    assert_eq!(dep.calls() - before, 2);
    assert_eq!(breaker.state(), CircuitState::Closed, "successful trials close it");

    // Open it again; a failing trial reopens it.
    dep.failing.store(true, Ordering::SeqCst);
    for _ in 0..4 {
        let _ = svc.clone().oneshot(1).await;
    }
    assert_eq!(breaker.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    svc.clone().oneshot(1).await.unwrap_err();
    assert_eq!(breaker.state(), CircuitState::Open, "a failed trial reopens it");
    assert!(svc.clone().oneshot(1).await.unwrap_err().is_circuit_open());
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_it() {
    let dep = Dependency::default();
    dep.delay_ms.store(3_000, Ordering::SeqCst);
    let breaker = CircuitBreaker::new("slow", config().slow_calls(0.75, Duration::from_secs(2)));
    let svc = CircuitBreakerService::new(dep.service(), breaker.clone());
    for _ in 0..4 {
        assert!(svc.clone().oneshot(1).await.is_ok(), "slow but successful");
    }
    assert_eq!(breaker.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_old_failures() {
    let dep = Dependency::default();
    let breaker = CircuitBreaker::new("t", config().window(Window::Time(Duration::from_secs(10))).minimum_calls(4));
    let svc = CircuitBreakerService::new(dep.service(), breaker.clone());
    dep.failing.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let _ = svc.clone().oneshot(1).await;
    }
    tokio::time::advance(Duration::from_secs(11)).await;
    let _ = svc.clone().oneshot(1).await;
    assert_eq!(breaker.state(), CircuitState::Closed, "the first three failures left the window");
}

#[tokio::test(start_paused = true)]
async fn manual_control_and_observers() {
    let breaker = CircuitBreaker::new("manual", config());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    breaker.on_state_change(move |c| s.lock().unwrap().push((c.from, c.to)));
    let mut rx = breaker.subscribe();
    let dep = Dependency::default();
    // Two services, one breaker: the state is shared.
    let a = CircuitBreakerLayer::new(breaker.clone());
    let svc_a = tower::Layer::layer(&a, dep.service());
    let svc_b = CircuitBreakerService::new(dep.service(), breaker.clone());

    breaker.force_open();
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), CircuitState::ForcedOpen);
    assert!(svc_a.clone().oneshot(1).await.unwrap_err().is_circuit_open());
    assert!(svc_b.clone().oneshot(1).await.unwrap_err().is_circuit_open());
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!(svc_b.clone().oneshot(1).await.unwrap_err().is_circuit_open(), "forced open does not half-open");

    breaker.force_closed();
    dep.failing.store(true, Ordering::SeqCst);
    for _ in 0..20 {
        let _ = svc_a.clone().oneshot(1).await;
    }
    assert_eq!(breaker.state(), CircuitState::ForcedClosed, "forced closed is not judged");
    breaker.reset();
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (CircuitState::Closed, CircuitState::ForcedOpen),
            (CircuitState::ForcedOpen, CircuitState::ForcedClosed),
            (CircuitState::ForcedClosed, CircuitState::Closed),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn cancelled_trial_frees_its_slot() {
    let breaker = CircuitBreaker::new("c", config().half_open_calls(1));
    for _ in 0..4 {
        breaker.try_acquire().unwrap().record(Outcome::Failure);
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    let trial = breaker.try_acquire().unwrap();
    assert!(trial.is_trial());
    assert!(breaker.try_acquire().is_err());
    drop(trial);
    breaker.try_acquire().unwrap().record(Outcome::Success);
    assert_eq!(breaker.state(), CircuitState::Closed);
}

#[test]
fn config_validation_names_the_field() {
    assert_eq!(config().validate(), Ok(()));
    assert_eq!(CircuitBreakerConfig::failure_rate(1.5).validate().unwrap_err().0, "failure_rate");
    assert_eq!(config().minimum_calls(11).validate().unwrap_err().0, "minimum_calls");
    assert_eq!(config().half_open_calls(0).validate().unwrap_err().0, "half_open_calls");
}
