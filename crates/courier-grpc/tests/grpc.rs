//! The pipeline on a real tonic channel against real tonic servers on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_core::TraceParent;
use courier_grpc::client::{CircuitBreakerConfig, CircuitState, ResilientChannel, RetryPolicy};
use courier_grpc::example::{GET_STOCK, Inventory, InventoryClient, InventoryServer, Stock, StockRequest};
use courier_grpc::server::{TraceContextLayer, health, report_readiness};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// What the scripted server does with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Answer,
    Unavailable,
    Hang,
}

#[derive(Debug, Clone)]
struct Scripted {
    behaviour: Arc<Mutex<Behaviour>>,
    /// Fail this many calls with UNAVAILABLE before behaving.
    fail_first: Arc<AtomicU32>,
    calls: Arc<AtomicU64>,
    seen_trace: Arc<Mutex<Option<TraceParent>>>,
}

impl Scripted {
    fn new(behaviour: Behaviour) -> Self {
        Self {
            behaviour: Arc::new(Mutex::new(behaviour)),
            fail_first: Arc::default(),
            calls: Arc::default(),
            seen_trace: Arc::default(),
        }
    }
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

#[tonic::async_trait]
impl Inventory for Scripted {
    async fn get_stock(&self, request: Request<StockRequest>) -> Result<Response<Stock>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.seen_trace.lock().unwrap() = courier_http::trace::current();
        if request.get_ref().sku.is_empty() {
            return Err(Status::invalid_argument("sku: give a product's sku"));
        }
        if self.fail_first.load(Ordering::SeqCst) > 0 {
            self.fail_first.fetch_sub(1, Ordering::SeqCst);
            return Err(Status::unavailable("warming up"));
        }
        let behaviour = *self.behaviour.lock().unwrap();
        match behaviour {
            Behaviour::Answer => {
                let sku = request.into_inner().sku;
                Ok(Response::new(Stock { sku, name: "Rust mug".into(), price_cents: 1200, available: 7 }))
            }
            Behaviour::Unavailable => Err(Status::unavailable("the database is down")),
            Behaviour::Hang => std::future::pending().await,
        }
    }
}

async fn serve(inventory: Scripted) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(TraceContextLayer::new())
            .add_service(InventoryServer::new(inventory))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
    });
    addr
}

fn ask() -> StockRequest {
    StockRequest { sku: "rust-mug".into() }
}

#[tokio::test]
async fn answers_and_carries_the_trace_to_the_server() {
    let server = Scripted::new(Behaviour::Answer);
    let addr = serve(server.clone()).await;
    let channel = ResilientChannel::builder(format!("http://{addr}")).deadline(Duration::from_secs(2)).build().unwrap();
    let mut client = InventoryClient::new(channel);
    let parent = TraceParent::new_root();
    let stock = courier_http::trace::scope(parent, client.get_stock(ask())).await.expect("an answer").into_inner();
    assert_eq!((stock.sku.as_str(), stock.available), ("rust-mug", 7));
    let seen = server.seen_trace.lock().unwrap().expect("the server saw a trace context");
    assert_eq!(seen.trace_id, parent.trace_id, "the server continues the caller's trace");
    assert_ne!(seen.span_id, parent.span_id, "as a child span");
}

#[tokio::test]
async fn a_caller_error_passes_through_untouched() {
    let addr = serve(Scripted::new(Behaviour::Answer)).await;
    let channel = ResilientChannel::builder(format!("http://{addr}"))
        .circuit_breaker(CircuitBreakerConfig::failure_rate(0.5).minimum_calls(2))
        .build()
        .unwrap();
    let mut client = InventoryClient::new(channel.clone());
    for _ in 0..5 {
        let status = client.get_stock(StockRequest { sku: String::new() }).await.expect_err("invalid");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    assert_eq!(channel.circuit_breaker().unwrap().state(), CircuitState::Closed, "a caller's mistake is no failure");
}

#[tokio::test]
async fn the_breaker_opens_and_then_fails_fast_without_calling_the_server() {
    let server = Scripted::new(Behaviour::Unavailable);
    let addr = serve(server.clone()).await;
    let channel = ResilientChannel::builder(format!("http://{addr}"))
        .circuit_breaker(CircuitBreakerConfig::failure_rate(0.5).minimum_calls(5).open_for(Duration::from_secs(60)))
        .build()
        .unwrap();
    let mut client = InventoryClient::new(channel.clone());
    for _ in 0..20 {
        let status = client.get_stock(ask()).await.expect_err("the server fails");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    assert_eq!(server.calls(), 5, "after 5 failures the breaker is open and the server sees no more calls");
    assert_eq!(channel.circuit_breaker().unwrap().state(), CircuitState::Open);
    let status = client.get_stock(ask()).await.expect_err("open");
    assert!(status.message().contains("open"), "the status says the circuit is open: {status:?}");
}

#[tokio::test]
async fn the_deadline_cuts_a_hanging_call() {
    let addr = serve(Scripted::new(Behaviour::Hang)).await;
    let channel =
        ResilientChannel::builder(format!("http://{addr}")).deadline(Duration::from_millis(200)).build().unwrap();
    let started = std::time::Instant::now();
    let status = InventoryClient::new(channel).get_stock(ask()).await.expect_err("cut off");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "cut off by the deadline, not by anything else");
}

#[tokio::test]
async fn an_idempotent_call_is_retried_past_a_transient_failure_and_others_are_not() {
    let server = Scripted::new(Behaviour::Answer);
    server.fail_first.store(2, Ordering::SeqCst);
    let addr = serve(server.clone()).await;
    let build = |idempotent: bool| {
        let builder = ResilientChannel::builder(format!("http://{addr}")).deadline(Duration::from_secs(5)).retry(
            RetryPolicy::budgeted().max_attempts(4).backoff(Duration::from_millis(5), Duration::from_millis(50)),
        );
        if idempotent { builder.idempotent([GET_STOCK]) } else { builder }.build().unwrap()
    };
    let stock = InventoryClient::new(build(true)).get_stock(ask()).await.expect("retried to success");
    assert_eq!(stock.into_inner().available, 7);
    assert_eq!(server.calls(), 3, "two failures, then the answer");

    server.fail_first.store(1, Ordering::SeqCst);
    let status = InventoryClient::new(build(false)).get_stock(ask()).await.expect_err("not retried");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(server.calls(), 4, "a call not declared idempotent is sent once");
}

#[tokio::test]
async fn a_dead_server_is_ejected_and_traffic_moves_to_the_live_one() {
    let live = Scripted::new(Behaviour::Answer);
    let live_addr = serve(live.clone()).await;
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let channel = ResilientChannel::balanced([format!("http://{live_addr}"), format!("http://{dead_addr}")])
        .deadline(Duration::from_secs(2))
        .retry(RetryPolicy::budgeted().backoff(Duration::from_millis(1), Duration::from_millis(10)))
        .idempotent([GET_STOCK])
        .build()
        .unwrap();
    let mut client = InventoryClient::new(channel);
    let mut answered = 0;
    for _ in 0..50 {
        if client.get_stock(ask()).await.is_ok() {
            answered += 1;
        }
    }
    assert_eq!(answered, 50, "retries and ejection hide the dead server from callers");
    assert_eq!(live.calls(), 50, "every call ended on the live server");
}

#[tokio::test]
async fn health_follows_readiness() {
    let (reporter, health_service) = health();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(health_service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
    });
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = ready.clone();
    let _task = report_readiness(reporter, "courier.example.v1.Inventory", Duration::from_millis(20), move || {
        let ready = flag.load(Ordering::SeqCst);
        async move { ready }
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let mut client = HealthClient::new(channel);
    let status = |client: &mut HealthClient<tonic::transport::Channel>| {
        let mut client = client.clone();
        async move {
            let request = HealthCheckRequest { service: "courier.example.v1.Inventory".into() };
            client.check(request).await.map(|r| r.into_inner().status)
        }
    };
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while status(&mut client).await.ok() != Some(1) {
        assert!(std::time::Instant::now() < until, "never SERVING");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ready.store(false, Ordering::SeqCst);
    while status(&mut client).await.ok() != Some(2) {
        assert!(std::time::Instant::now() < until, "never NOT_SERVING after the check failed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
