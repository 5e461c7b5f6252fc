//! The edge: bad input gets a 4xx problem+json (never a panic), a panicking handler a 500 problem, and trace
//! context flows from the caller through the handler to the next call.

mod common;

use std::time::Duration;

use axum::routing::{get, post};
use axum::{Json, Router};
use common::TestServer;
use courier_core::TraceParent;
use courier_http::client::HttpClient;
use courier_http::server::{Edge, RequestTrace};
use courier_http::{Problem, trace};
use courier_testkit::fault::{FaultPlan, FaultServer};
use serde::Deserialize;

#[derive(Debug, Deserialize, serde::Serialize)]
struct Order {
    sku: String,
    quantity: u32,
}

async fn place(Json(order): Json<Order>) -> Result<Json<Order>, Problem> {
    if order.quantity == 0 {
        return Err(Problem::unprocessable("quantity must be at least 1").with_extension("field", "quantity"));
    }
    Ok(Json(order))
}

async fn app() -> (TestServer, HttpClient) {
    let router = Router::new()
        .route("/orders", post(place))
        .route("/panic", get(|| async { panic!("boom") as &'static str }))
        .route(
            "/trace",
            get(|axum::Extension(t): axum::Extension<RequestTrace>| async move {
                let current = trace::current().expect("the handler sees the trace context");
                assert_eq!(current, t.current);
                format!("{} {}", t.parent.map(|p| p.to_string()).unwrap_or_default(), current)
            }),
        );
    let server = TestServer::start(Edge::new().body_limit(1024).apply(router)).await;
    let client = HttpClient::builder(server.url()).build().unwrap();
    (server, client)
}

async fn expect_problem(client: &HttpClient, body: &[u8], content_type: &str, status: u16) -> Problem {
    let err = client
        .post("/orders")
        .header("content-type", content_type)
        .body(body.to_vec())
        .send()
        .await
        .expect_err("bad input is refused");
    assert!(err.is_client_error(), "{err:?}");
    assert!(!err.is_retryable());
    let problem = err.problem().cloned().unwrap_or_else(|| panic!("problem+json body for {body:?}: {err:?}"));
    assert_eq!(problem.status, status, "{problem:?}");
    problem
}

#[tokio::test]
async fn bad_json_gets_a_problem_never_a_panic() {
    let (_server, client) = app().await;
    let p = expect_problem(&client, b"{not json", "application/json", 400).await;
    assert!(p.detail.is_some());
    expect_problem(&client, br#"{"sku": 1, "quantity": "x"}"#, "application/json", 422).await;
    expect_problem(&client, br#"{"sku": "a"}"#, "application/json", 422).await;
    expect_problem(&client, br#"{"sku":"a","quantity":1}"#, "text/plain", 415).await;
    expect_problem(&client, &vec![b'x'; 4096], "application/json", 413).await;
    let p = expect_problem(&client, br#"{"sku":"a","quantity":0}"#, "application/json", 422).await;
    assert_eq!(p.extensions["field"], "quantity");
    // Garbage of every shape: always a 4xx problem.
    for i in 0..200u32 {
        let junk: Vec<u8> = (0..(i % 97)).map(|j| (j.wrapping_mul(31).wrapping_add(i * 7) % 256) as u8).collect();
        let err = client.post("/orders").header("content-type", "application/json").body(junk).send().await;
        let err = err.expect_err("junk is refused");
        assert!(err.is_client_error() && err.problem().is_some(), "{err:?}");
    }
    let ok: Order =
        client.post("/orders").json(&serde_json::json!({"sku": "a", "quantity": 2})).send_json().await.unwrap();
    assert_eq!(ok.quantity, 2);
}

#[tokio::test]
async fn a_panicking_handler_gets_a_500_problem_and_the_server_lives_on() {
    let (_server, client) = app().await;
    let err = client.get("/panic").send().await.unwrap_err();
    assert!(err.is_server_error());
    assert_eq!(err.problem().map(|p| p.status), Some(500));
    let err = client.get("/nowhere").send().await.unwrap_err();
    assert_eq!(err.problem().map(|p| p.status), Some(404));
    client.post("/orders").json(&serde_json::json!({"sku": "a", "quantity": 1})).send().await.unwrap();
}

#[tokio::test]
async fn trace_context_is_extracted_and_continued() {
    let (_server, client) = app().await;
    let parent = TraceParent::new_root();
    let text = client.get("/trace").trace_parent(parent).send().await.unwrap().text();
    let (sent, server_span) = text.split_once(' ').unwrap();
    let sent = TraceParent::parse(sent).expect("the client sent a traceparent");
    let server_span = TraceParent::parse(server_span).unwrap();
    assert_eq!(sent.trace_id, parent.trace_id, "the client sends a child of the explicit parent");
    assert_ne!(sent.span_id, parent.span_id);
    assert_eq!(server_span.trace_id, parent.trace_id, "the server continues the trace");
    assert_ne!(server_span.span_id, sent.span_id);

    // No parent anywhere: a new root each time.
    let text = client.get("/trace").send().await.unwrap().text();
    assert!(TraceParent::parse(text.split_once(' ').unwrap().0).is_some());

    // Inside a traced scope, the client continues the current trace.
    let upstream = FaultServer::start(FaultPlan::healthy()).await.unwrap();
    let next = HttpClient::builder(upstream.url()).build().unwrap();
    trace::scope(parent, async { next.get("/").send().await.unwrap() }).await;
    let seen = upstream.last_headers().unwrap();
    let seen = TraceParent::parse(seen["traceparent"].to_str().unwrap()).unwrap();
    assert_eq!(seen.trace_id, parent.trace_id);
}

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_requests() {
    let router = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            "done"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(courier_http::server::serve_with_drain(
        listener,
        router,
        async {
            let _ = rx.await;
        },
        Duration::from_secs(5),
    ));
    let client = HttpClient::builder(url).build().unwrap();
    let call = tokio::spawn(async move { client.get("/slow").send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.send(()).unwrap();
    assert_eq!(call.await.unwrap().unwrap().text(), "done", "the in-flight request finished");
    assert_eq!(server.await.unwrap().unwrap(), courier_http::server::Shutdown::Drained);
}

#[tokio::test]
async fn graceful_shutdown_gives_up_after_its_deadline() {
    let router = Router::new().route("/hang", get(std::future::pending::<&'static str>));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(courier_http::server::serve_with_drain(
        listener,
        router,
        async {
            let _ = rx.await;
        },
        Duration::from_millis(100),
    ));
    let client = HttpClient::builder(url).build().unwrap();
    let call = tokio::spawn(async move { client.get("/hang").send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.send(()).unwrap();
    assert_eq!(server.await.unwrap().unwrap(), courier_http::server::Shutdown::DeadlineExceeded);
    call.abort();
}
