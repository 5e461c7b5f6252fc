//! `/health/live` and `/health/ready` with dependency checks.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use common::TestServer;
use courier_http::client::HttpClient;
use courier_http::server::health::{self, HealthChecks};

#[tokio::test]
async fn ready_fails_when_a_check_fails_and_live_stays_up() {
    let db_up = Arc::new(AtomicBool::new(true));
    let flag = db_up.clone();
    let checks = HealthChecks::new()
        .timeout(Duration::from_millis(200))
        .check("database", move || {
            let up = flag.load(Ordering::SeqCst);
            async move { if up { Ok(()) } else { Err("connection refused") } }
        })
        .check("cache", || async { Ok::<_, String>(()) });
    let server = TestServer::start(Router::new().merge(health::router(checks))).await;
    let client = HttpClient::builder(server.url()).build().unwrap();

    let ready: serde_json::Value = client.get("/health/ready").send_json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["checks"][0]["status"], "up");

    db_up.store(false, Ordering::SeqCst);
    let err = client.get("/health/ready").send().await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(503));
    let body: serde_json::Value = serde_json::from_slice(err.body()).unwrap();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"][0]["name"], "database");
    assert_eq!(body["checks"][0]["error"], "connection refused");
    assert_eq!(body["checks"][1]["status"], "up");

    let live = client.get("/health/live").send().await.unwrap();
    assert_eq!(live.status(), 200);
}

#[tokio::test]
async fn a_check_that_hangs_counts_as_down_after_its_timeout() {
    let checks = HealthChecks::new().timeout(Duration::from_millis(50)).check("slow", || async {
        std::future::pending::<()>().await;
        Ok::<_, String>(())
    });
    let report = checks.run().await;
    assert!(!report.ready);
    assert!(report.checks[0].error.as_deref().unwrap().contains("timed out"));
}
