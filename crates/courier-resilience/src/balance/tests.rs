use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use tower::service_fn;

use super::*;

type Log = Arc<Mutex<Vec<&'static str>>>;

/// A replica named `name` that logs its calls, fails while `failing`, and answers after `delay`.
#[allow(clippy::type_complexity)]
fn replica(
    name: &'static str,
    log: Log,
    failing: Arc<AtomicBool>,
    delay: Duration,
) -> impl Service<u32, Response = &'static str, Error = std::io::Error, Future: Send> + Clone + Send + Sync {
    service_fn(move |_: u32| {
        log.lock().unwrap().push(name);
        let failing = failing.load(Ordering::SeqCst);
        async move {
            tokio::time::sleep(delay).await;
            if failing { Err(std::io::Error::other("503")) } else { Ok(name) }
        }
    })
}

fn count(log: &Log, name: &str) -> usize {
    log.lock().unwrap().iter().filter(|n| **n == name).count()
}

#[tokio::test(start_paused = true)]
async fn ejects_after_consecutive_failures_and_readmits_after_cooldown() {
    let log = Log::default();
    let bad_failing = Arc::new(AtomicBool::new(true));
    let balance = Balance::builder(BalanceConfig::default().eject_after(3).cooldown(Duration::from_secs(10)))
        .endpoint("good", replica("good", log.clone(), Arc::default(), Duration::ZERO))
        .endpoint("bad", replica("bad", log.clone(), bad_failing.clone(), Duration::ZERO))
        .build();
    for _ in 0..100 {
        let _ = balance.clone().oneshot(1).await;
    }
    assert_eq!(count(&log, "bad"), 3, "ejected after 3 failures in a row");
    assert_eq!(balance.available(), vec!["good"]);

    bad_failing.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(balance.available(), vec!["good", "bad"], "readmitted after the cool-down");
    for _ in 0..100 {
        balance.clone().oneshot(1).await.unwrap();
    }
    assert!(count(&log, "bad") > 10);
}

#[tokio::test(start_paused = true)]
async fn all_ejected_fails_fast() {
    let log = Log::default();
    let failing = Arc::new(AtomicBool::new(true));
    let balance = Balance::builder(BalanceConfig::default().eject_after(1).cooldown(Duration::from_secs(10)))
        .endpoint("only", replica("only", log.clone(), failing, Duration::ZERO))
        .build();
    balance.clone().oneshot(1).await.unwrap_err();
    let err = balance.clone().oneshot(1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoHealthyEndpoint);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(10)));
    assert_eq!(count(&log, "only"), 1);
}

#[tokio::test(start_paused = true)]
async fn two_choices_spread_in_flight_calls() {
    let log = Log::default();
    let balance = Balance::builder(BalanceConfig::default())
        .endpoint("a", replica("a", log.clone(), Arc::default(), Duration::from_secs(1)))
        .endpoint("b", replica("b", log.clone(), Arc::default(), Duration::from_secs(1)))
        .build();
    let calls: Vec<_> = (0..10).map(|i| balance.clone().oneshot(i)).collect();
    let mut handles = Vec::new();
    for call in calls {
        handles.push(tokio::spawn(call));
        tokio::task::yield_now().await;
    }
    for h in handles {
        h.await.unwrap().unwrap();
    }
    assert_eq!((count(&log, "a"), count(&log, "b")), (5, 5), "always the less loaded of the two");
}

#[tokio::test(start_paused = true)]
async fn health_check_takes_an_endpoint_out() {
    let log = Log::default();
    let balance = Balance::builder(BalanceConfig::default())
        .endpoint("a", replica("a", log.clone(), Arc::default(), Duration::ZERO))
        .endpoint("b", replica("b", log.clone(), Arc::default(), Duration::ZERO))
        .health_check(Duration::from_secs(1), |name, _svc| async move { name != "b" })
        .build();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(balance.available(), vec!["a"]);
    for _ in 0..20 {
        balance.clone().oneshot(1).await.unwrap();
    }
    assert_eq!(count(&log, "b"), 0);
}

#[cfg(feature = "hedge")]
#[tokio::test(start_paused = true)]
async fn a_hedge_goes_to_another_endpoint() {
    use crate::hedge::{Hedge, HedgeDelay};
    use crate::retry::RetryPredicate;

    let log = Log::default();
    let balance = Balance::builder(BalanceConfig::default())
        .endpoint("a", replica("a", log.clone(), Arc::default(), Duration::from_secs(1)))
        .endpoint("b", replica("b", log.clone(), Arc::default(), Duration::from_secs(1)))
        .endpoint("c", replica("c", log.clone(), Arc::default(), Duration::from_secs(1)))
        .build();
    let hedge = Hedge::new(balance, HedgeDelay::Fixed(Duration::from_millis(100)), RetryPredicate::always());
    for _ in 0..30 {
        log.lock().unwrap().clear();
        hedge.clone().oneshot(1).await.unwrap();
        let calls = log.lock().unwrap().clone();
        assert_eq!(calls.len(), 2);
        assert_ne!(calls[0], calls[1], "the hedge avoided the first attempt's endpoint");
    }
}
