//! Hedging over two replicas, one slow: hedged calls are answered by the fast replica, which cuts the tail.

mod common;

use std::time::{Duration, Instant};

use courier_http::client::{BalanceConfig, HedgeDelay, HttpClient};
use courier_testkit::fault::{FaultPlan, FaultServer};

async fn run(client: &HttpClient, calls: usize) -> (usize, Vec<Duration>) {
    let mut by_fast = 0;
    let mut latencies = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let resp = client.get("/item/1").send().await.expect("answered");
        latencies.push(started.elapsed());
        if resp.header("x-served-by") == Some("fast") {
            by_fast += 1;
        }
    }
    (by_fast, latencies)
}

#[tokio::test]
async fn hedging_cuts_p99_when_one_replica_is_slow() {
    let fast = FaultServer::start_named("fast", FaultPlan::healthy()).await.unwrap();
    let slow =
        FaultServer::start_named("slow", FaultPlan::healthy().latency(Duration::from_millis(250))).await.unwrap();
    // Slow answers are not failures: keep both replicas in rotation.
    let balance = BalanceConfig::default().eject_after(1000);
    let plain = HttpClient::balanced([fast.url(), slow.url()]).balance(balance).build().unwrap();
    let hedged = HttpClient::balanced([fast.url(), slow.url()])
        .balance(balance)
        .hedge(HedgeDelay::Fixed(Duration::from_millis(25)))
        .build()
        .unwrap();

    let calls = 40;
    let (plain_fast, mut plain_lat) = run(&plain, calls).await;
    let (hedged_fast, mut hedged_lat) = run(&hedged, calls).await;

    assert!(plain_fast < calls - 3, "without hedging the slow replica answers some calls ({plain_fast}/{calls} fast)");
    assert!(hedged_fast >= calls - 1, "with hedging the fast replica answers (nearly) all ({hedged_fast}/{calls})");
    let (p99_plain, p99_hedged) = (common::p99(&mut plain_lat), common::p99(&mut hedged_lat));
    assert!(p99_hedged < p99_plain, "p99 hedged {p99_hedged:?} vs plain {p99_plain:?}");
    assert!(slow.requests() > 0 && fast.requests() > 0);
}
