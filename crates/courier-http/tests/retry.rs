//! Retries: budgeted under a full outage, only for safe requests, and told about `Retry-After`.

mod common;

use std::time::Duration;

use courier_http::client::{HttpClient, RetryBudget, RetryPolicy};
use courier_testkit::fault::{FaultPlan, FaultServer};

fn policy() -> RetryPolicy {
    RetryPolicy::new()
        .max_attempts(4)
        .backoff(Duration::from_micros(100), Duration::from_millis(1))
        .budget(RetryBudget::new(Duration::from_secs(10), 0, 0.2))
}

#[tokio::test]
async fn under_a_full_outage_the_budget_keeps_extra_load_under_a_fifth() {
    let server = FaultServer::start(FaultPlan::healthy().error_rate(1.0).error_status(503)).await.unwrap();
    let client = HttpClient::builder(server.url()).retry(policy()).build().unwrap();
    let calls = 300u64;
    for _ in 0..calls {
        let err = client.get("/price").send().await.unwrap_err();
        assert!(err.is_server_error());
    }
    let hits = server.requests();
    let extra = hits - calls;
    // Without a budget, 4 attempts a call would be 300% extra load.
    assert!(extra > 0, "some retries were allowed");
    assert!(extra as f64 <= calls as f64 * 0.22, "extra load {extra} of {calls} calls is over ~20%");
}

#[tokio::test]
async fn retries_recover_from_transient_failures() {
    let server = FaultServer::start(FaultPlan::healthy().reset()).await.unwrap();
    let client =
        HttpClient::builder(server.url()).retry(RetryPolicy::new().max_attempts(3).no_budget()).build().unwrap();
    let err = client.get("/").send().await.unwrap_err();
    assert!(err.is_retryable(), "a reset connection is retryable: {err:?}");
    assert_eq!(server.requests(), 3);
}

#[tokio::test]
async fn a_post_is_retried_only_with_an_idempotency_key() {
    let server = FaultServer::start(FaultPlan::healthy().error_rate(1.0)).await.unwrap();
    let client =
        HttpClient::builder(server.url()).retry(RetryPolicy::new().max_attempts(3).no_budget()).build().unwrap();
    client.post("/charge").json(&serde_json::json!({"cents": 1})).send().await.unwrap_err();
    assert_eq!(server.requests(), 1, "a POST without a key is never sent twice");
    client.post("/charge").json(&serde_json::json!({"cents": 1})).idempotency_key("order-1").send().await.unwrap_err();
    assert_eq!(server.requests(), 4);
    assert_eq!(server.last_headers().unwrap()["idempotency-key"], "order-1");
}

#[tokio::test]
async fn retry_after_is_exposed_and_honoured() {
    let server = FaultServer::start(FaultPlan::healthy().unavailable(Duration::from_secs(1))).await.unwrap();
    let plain = HttpClient::builder(server.url()).build().unwrap();
    let err = plain.get("/").send().await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(503));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(err.problem().map(|p| p.status), Some(503));

    // A Retry-After longer than the policy accepts ends the retries at once.
    let impatient = HttpClient::builder(server.url())
        .retry(RetryPolicy::new().max_attempts(5).no_budget().max_retry_after(Duration::from_millis(10)))
        .build()
        .unwrap();
    server.reset_counts();
    impatient.get("/").send().await.unwrap_err();
    assert_eq!(server.requests(), 1);

    // Honoured: the retry waits for it (and a server that recovered meanwhile answers).
    let patient =
        HttpClient::builder(server.url()).retry(RetryPolicy::new().max_attempts(2).no_budget()).build().unwrap();
    server.reset_counts();
    let started = std::time::Instant::now();
    let call = tokio::spawn(async move { patient.get("/").send().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.set_plan(FaultPlan::healthy());
    call.await.unwrap().expect("the retry after Retry-After succeeds");
    assert!(started.elapsed() >= Duration::from_millis(900), "the retry waited for Retry-After");
    assert_eq!(server.requests(), 2);
}
