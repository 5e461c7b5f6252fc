//! The cascade, shown end to end over real HTTP: a chain A -> B -> C -> D where D hangs.
//!
//! Each of A, B and C is an axum service with a fixed pool of 8 workers (a semaphore every request takes, as a
//! thread pool would): `/order` calls the next service, `/status` answers by itself.
//!
//! - Unprotected (plain clients, no deadline): A's callers time out, and A's whole pool is stuck waiting on B, so
//!   even `/status`, which needs nothing downstream, gets no answer.
//! - Protected (deadline shrinking down the chain, circuit breaker, bulkhead at every hop): every caller of A gets a
//!   fast `503` problem well within A's deadline, the breakers open so D stops being called, and `/status` answers.
//!
//! Run with `cargo test -p courier-http --test cascade -- --nocapture` to see the figures.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use common::TestServer;
use courier_http::Problem;
use courier_http::client::{BulkheadConfig, CircuitBreakerConfig, CircuitState, HttpClient, Window};
use courier_testkit::fault::{FaultPlan, FaultServer};
use http::StatusCode;
use tokio::sync::Semaphore;

const WORKERS: usize = 8;

/// One hop of the chain: a worker pool and a client of the next hop.
struct Hop {
    next: HttpClient,
    workers: Semaphore,
    busy: AtomicUsize,
}

/// Counts a request as holding a worker while it lives.
struct Busy<'a>(&'a AtomicUsize);

impl<'a> Busy<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn order(State(hop): State<Arc<Hop>>) -> Response {
    let _worker = hop.workers.acquire().await.expect("the pool is never closed");
    let _busy = Busy::new(&hop.busy);
    match hop.next.get("/order").send().await {
        Ok(response) => (StatusCode::OK, response.bytes().clone()).into_response(),
        Err(e) => Problem::unavailable(format!("the next service failed: {e}")).into_response(),
    }
}

async fn status(State(hop): State<Arc<Hop>>) -> Json<&'static str> {
    let _worker = hop.workers.acquire().await.expect("the pool is never closed");
    Json("ok")
}

/// A hop calling `next` through `client`.
async fn hop(client: HttpClient) -> (TestServer, Arc<Hop>) {
    let hop = Arc::new(Hop { next: client, workers: Semaphore::new(WORKERS), busy: AtomicUsize::new(0) });
    let router = Router::new().route("/order", get(order)).route("/status", get(status)).with_state(hop.clone());
    (TestServer::start(router).await, hop)
}

/// The protected client of one hop: a deadline, an attempt timeout, a breaker and a bulkhead.
/// The attempt timeout sits inside the breaker, so a hanging call is counted as a failure; the deadline, outside
/// it, only bounds the whole call.
fn protected(url: String, deadline: Duration) -> HttpClient {
    HttpClient::builder(url)
        .deadline(deadline)
        .attempt_timeout(deadline.mul_f64(0.8))
        .circuit_breaker(
            CircuitBreakerConfig::failure_rate(0.5)
                .window(Window::Count(10))
                .minimum_calls(5)
                .open_for(Duration::from_secs(60)),
        )
        .bulkhead(BulkheadConfig::new(4))
        .build()
        .expect("a protected client")
}

fn unprotected(url: String) -> HttpClient {
    HttpClient::builder(url).build().expect("a plain client")
}

/// A's outside caller: gives up after `patience`.
fn caller(url: String, patience: Duration) -> HttpClient {
    HttpClient::builder(url).deadline(patience).build().expect("a caller")
}

struct Chain {
    d: FaultServer,
    a: (TestServer, Arc<Hop>),
    b: (TestServer, Arc<Hop>),
    c: (TestServer, Arc<Hop>),
}

async fn chain(make: impl Fn(String, Duration) -> HttpClient) -> Chain {
    let d = FaultServer::start(FaultPlan::healthy().hang()).await.expect("D starts");
    // Deadlines shrink down the chain, so an inner hop gives up before the hop calling it.
    let c = hop(make(d.url(), Duration::from_millis(300))).await;
    let b = hop(make(c.0.url(), Duration::from_millis(450))).await;
    let a = hop(make(b.0.url(), Duration::from_millis(600))).await;
    Chain { d, a, b, c }
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_protection_a_hanging_d_freezes_a() {
    let chain = chain(|url, _| unprotected(url)).await;
    let a_url = chain.a.0.url();
    let callers: Vec<_> = (0..2 * WORKERS)
        .map(|_| {
            let client = caller(a_url.clone(), Duration::from_secs(3));
            tokio::spawn(async move { client.get("/order").send().await })
        })
        .collect();
    wait_until("A's pool is all taken", || chain.a.1.busy.load(Ordering::SeqCst) == WORKERS).await;
    wait_until("D holds a request from every C worker", || chain.d.requests() as usize >= WORKERS).await;
    let busy = [&chain.a.1, &chain.b.1, &chain.c.1].map(|hop| hop.busy.load(Ordering::SeqCst));

    let status = caller(a_url.clone(), Duration::from_millis(500)).get("/status").send().await;
    let status = status.expect_err("A has no free worker to answer /status");
    assert!(status.is_timeout(), "expected A's /status to time out, got {status:?}");

    let mut timed_out = 0;
    for call in callers {
        let result = call.await.expect("a caller task");
        match result {
            Err(e) if e.is_timeout() => timed_out += 1,
            other => panic!("without protection no caller should get an answer, got {other:?}"),
        }
    }
    assert_eq!(timed_out, 2 * WORKERS, "every caller of A timed out");
    println!(
        "unprotected: {timed_out}/{} callers of A timed out; while they waited, busy workers: A {}/{WORKERS}, \
         B {}/{WORKERS}, C {}/{WORKERS}, and A's /status got no answer",
        2 * WORKERS,
        busy[0],
        busy[1],
        busy[2],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_deadline_breaker_and_bulkhead_a_keeps_answering() {
    let chain = chain(protected).await;
    let a_url = chain.a.0.url();
    const CALLS: usize = 64;
    let mut latencies = Vec::with_capacity(CALLS);
    // Waves of concurrent callers, as a busy front end would send.
    for _ in 0..CALLS / 16 {
        let wave: Vec<_> = (0..16)
            .map(|_| {
                let client = caller(a_url.clone(), Duration::from_secs(5));
                tokio::spawn(async move {
                    let started = Instant::now();
                    (client.get("/order").send().await, started.elapsed())
                })
            })
            .collect();
        for call in wave {
            let (result, took) = call.await.expect("a caller task");
            let error = result.expect_err("D hangs, so A cannot succeed");
            assert!(!error.is_timeout(), "A must answer before its caller gives up, got {error:?}");
            assert_eq!(error.status(), Some(StatusCode::SERVICE_UNAVAILABLE), "A answers a fast 503: {error:?}");
            assert!(error.problem().is_some(), "A's error is a problem+json body");
            latencies.push(took);
        }
    }
    let status = caller(a_url, Duration::from_secs(5)).get("/status").send().await;
    assert_eq!(status.expect("A still has workers for /status").status(), 200);

    let c_breaker = chain.c.1.next.circuit_breaker().expect("C has a breaker").state();
    assert_eq!(c_breaker, CircuitState::Open, "C's breaker opened on D's timeouts");
    let reached_d = chain.d.requests() as usize;
    assert!(reached_d < CALLS / 4, "the breakers keep calls away from D: {reached_d} of {CALLS} reached it");
    let p99 = common::p99(&mut latencies);
    println!(
        "protected: {CALLS} callers of A all answered 503 (p99 {p99:?}, A's deadline 600ms); {reached_d} reached D; \
         breakers A {:?}, B {:?}, C {c_breaker:?}",
        chain.a.1.next.circuit_breaker().map(|b| b.state()),
        chain.b.1.next.circuit_breaker().map(|b| b.state()),
    );
}
