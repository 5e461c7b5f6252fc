//! A dead replica is ejected and traffic moves to the rest.

use std::time::Duration;

use courier_http::client::{BalanceConfig, HttpClient, RetryPolicy};
use courier_testkit::fault::{FaultPlan, FaultServer};

#[tokio::test]
async fn a_dead_endpoint_is_ejected_and_traffic_moves_to_the_rest() {
    let alive = FaultServer::start_named("alive", FaultPlan::healthy()).await.unwrap();
    let dead = FaultServer::start_named("dead", FaultPlan::healthy().reset()).await.unwrap();
    let client = HttpClient::balanced([alive.url(), dead.url()])
        .balance(BalanceConfig::default().eject_after(2).cooldown(Duration::from_secs(60)))
        .retry(RetryPolicy::new().max_attempts(2).no_budget().backoff(Duration::ZERO, Duration::ZERO))
        .build()
        .unwrap();
    for _ in 0..40 {
        let resp = client.get("/").send().await.expect("a retry goes to the live replica");
        assert_eq!(resp.header("x-served-by"), Some("alive"));
    }
    assert!(dead.requests() <= 2, "the dead replica is ejected after 2 failures (saw {})", dead.requests());
    assert!(alive.requests() >= 40);
}

#[tokio::test]
async fn a_refused_endpoint_is_ejected_too() {
    let alive = FaultServer::start_named("alive", FaultPlan::healthy()).await.unwrap();
    let free_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client = HttpClient::balanced([alive.url(), format!("http://127.0.0.1:{free_port}")])
        .balance(BalanceConfig::default().eject_after(1).cooldown(Duration::from_secs(60)))
        .build()
        .unwrap();
    let mut refused = 0;
    for _ in 0..30 {
        match client.get("/").send().await {
            Ok(resp) => assert_eq!(resp.header("x-served-by"), Some("alive")),
            Err(e) => {
                assert!(e.is_connect(), "{e:?}");
                refused += 1;
            }
        }
    }
    assert!(refused <= 1, "one refused connection ejects the endpoint (saw {refused})");
}
