//! The circuit breaker against a real failing server: it opens after its threshold and then fails fast without
//! the server seeing requests; half-open trial calls close it again once the server recovers.

mod common;

use std::time::Duration;

use courier_http::client::{CircuitBreakerConfig, CircuitState, HttpClient, Window};
use courier_testkit::fault::{FaultPlan, FaultServer};

fn breaker(open_for: Duration) -> CircuitBreakerConfig {
    CircuitBreakerConfig::failure_rate(0.5)
        .window(Window::Count(10))
        .minimum_calls(5)
        .open_for(open_for)
        .half_open_calls(2)
}

#[tokio::test]
async fn opens_after_threshold_then_fails_fast_without_touching_the_server() {
    let server = FaultServer::start(FaultPlan::healthy().error_rate(1.0)).await.unwrap();
    let client = HttpClient::builder(server.url()).circuit_breaker(breaker(Duration::from_secs(60))).build().unwrap();

    let mut server_errors = 0;
    let mut fast_failures = 0;
    for _ in 0..50 {
        let err = client.get("/stock/1").send().await.expect_err("the server always fails");
        if err.is_server_error() {
            assert_eq!(err.status().map(|s| s.as_u16()), Some(500));
            server_errors += 1;
        } else {
            assert!(err.is_circuit_open(), "unexpected error: {err:?}");
            assert!(err.is_rejected() && !err.is_retryable());
            fast_failures += 1;
        }
    }
    assert_eq!(server_errors, 5, "the breaker judges after minimum_calls = 5 and opens at once");
    assert_eq!(fast_failures, 45);
    assert_eq!(server.requests(), 5, "an open breaker never touches the server");
    assert_eq!(client.circuit_breaker().unwrap().state(), CircuitState::Open);
}

#[tokio::test]
async fn half_open_lets_trials_through_and_closes_on_success() {
    let server = FaultServer::start(FaultPlan::healthy().error_rate(1.0)).await.unwrap();
    let client =
        HttpClient::builder(server.url()).circuit_breaker(breaker(Duration::from_millis(200))).build().unwrap();
    for _ in 0..5 {
        let _ = client.get("/").send().await;
    }
    assert_eq!(client.circuit_breaker().unwrap().state(), CircuitState::Open);
    assert!(client.get("/").send().await.unwrap_err().is_circuit_open());
    let seen = server.requests();

    server.set_plan(FaultPlan::healthy());
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..2 {
        let resp = client.get("/").send().await.expect("trial call let through");
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(server.requests(), seen + 2, "exactly the trial calls reached the server");
    assert_eq!(client.circuit_breaker().unwrap().state(), CircuitState::Closed);
    for _ in 0..10 {
        client.get("/").send().await.expect("closed again");
    }
}

#[tokio::test]
async fn failed_trial_reopens() {
    let server = FaultServer::start(FaultPlan::healthy().error_rate(1.0)).await.unwrap();
    let client =
        HttpClient::builder(server.url()).circuit_breaker(breaker(Duration::from_millis(100))).build().unwrap();
    for _ in 0..5 {
        let _ = client.get("/").send().await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let _ = client.get("/").send().await;
    let _ = client.get("/").send().await;
    assert_eq!(client.circuit_breaker().unwrap().state(), CircuitState::Open);
}
