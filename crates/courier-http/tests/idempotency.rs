//! The idempotency middleware against a real axum server: stored responses replayed, concurrent duplicates
//! waiting or refused with 409, 5xx not stored; in memory and on SQLite.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use common::TestServer;
use courier_http::client::HttpClient;
use courier_http::server::Edge;
use courier_http::server::idempotency::{
    IdempotencyLayer, IdempotencyStore, MemoryIdempotencyStore, SqliteIdempotencyStore,
};

#[derive(Clone, Default)]
struct Charges {
    count: Arc<AtomicU32>,
    fail_first: Arc<AtomicU32>,
}

async fn charge(State(s): State<Charges>) -> Result<(StatusCode, Json<serde_json::Value>), StatusCode> {
    tokio::time::sleep(Duration::from_millis(150)).await;
    if s.fail_first.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    let n = s.count.fetch_add(1, Ordering::SeqCst) + 1;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "charge": n }))))
}

async fn server(store: Arc<dyn IdempotencyStore>, wait: Duration) -> (TestServer, Charges, HttpClient) {
    let state = Charges::default();
    let app = Router::new()
        .route("/charge", post(charge))
        .route("/refund", post(charge))
        .layer(IdempotencyLayer::new(store).wait(wait))
        .with_state(state.clone());
    let server = TestServer::start(Edge::new().apply(app)).await;
    let client = HttpClient::builder(server.url()).build().unwrap();
    (server, state, client)
}

async fn repeat_returns_the_stored_response(store: Arc<dyn IdempotencyStore>) {
    let (_server, state, client) = server(store, Duration::from_secs(2)).await;
    let first = client.post("/charge").json(&1).idempotency_key("k-1").send().await.unwrap();
    let again = client.post("/charge").json(&1).idempotency_key("k-1").send().await.unwrap();
    assert_eq!(first.status(), 201);
    assert_eq!(again.status(), 201);
    assert_eq!(first.bytes(), again.bytes());
    assert_eq!(again.header("content-type"), Some("application/json"));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(state.count.load(Ordering::SeqCst), 1, "the handler ran once");

    // Another key, or the same key on another path, runs again.
    client.post("/charge").json(&1).idempotency_key("k-2").send().await.unwrap();
    client.post("/refund").json(&1).idempotency_key("k-1").send().await.unwrap();
    assert_eq!(state.count.load(Ordering::SeqCst), 3);
    // Without a key nothing is stored.
    client.post("/charge").json(&1).send().await.unwrap();
    client.post("/charge").json(&1).send().await.unwrap();
    assert_eq!(state.count.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn memory_store_replays_a_repeat() {
    repeat_returns_the_stored_response(Arc::new(MemoryIdempotencyStore::new())).await;
}

#[tokio::test]
async fn sqlite_store_replays_a_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteIdempotencyStore::open(dir.path().join("keys.db")).unwrap();
    repeat_returns_the_stored_response(Arc::new(store)).await;
}

#[tokio::test]
async fn a_concurrent_duplicate_waits_for_the_first() {
    let (_server, state, client) = server(Arc::new(MemoryIdempotencyStore::new()), Duration::from_secs(5)).await;
    let a = tokio::spawn({
        let c = client.clone();
        async move { c.post("/charge").idempotency_key("dup").send().await }
    });
    let b = tokio::spawn({
        let c = client.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            c.post("/charge").idempotency_key("dup").send().await
        }
    });
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    assert_eq!(a.bytes(), b.bytes());
    assert_eq!(b.header("idempotent-replayed"), Some("true"));
    assert_eq!(state.count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_concurrent_duplicate_gets_409_when_it_cannot_wait() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteIdempotencyStore::open(dir.path().join("keys.db")).unwrap();
    let (_server, state, client) = server(Arc::new(store), Duration::ZERO).await;
    let first = tokio::spawn({
        let c = client.clone();
        async move { c.post("/charge").idempotency_key("dup").send().await }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let err = client.post("/charge").idempotency_key("dup").send().await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::CONFLICT));
    assert_eq!(err.problem().map(|p| p.status), Some(409));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    first.await.unwrap().unwrap();
    assert_eq!(state.count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_5xx_is_not_stored_so_a_retry_runs_again() {
    let (_server, state, client) = server(Arc::new(MemoryIdempotencyStore::new()), Duration::from_secs(2)).await;
    state.fail_first.store(1, Ordering::SeqCst);
    let err = client.post("/charge").idempotency_key("k").send().await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    let ok = client.post("/charge").idempotency_key("k").send().await.unwrap();
    assert_eq!(ok.status(), 201);
    assert_eq!(ok.header("idempotent-replayed"), None);
    assert_eq!(state.count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_malformed_key_is_a_400_problem() {
    let (_server, state, client) = server(Arc::new(MemoryIdempotencyStore::new()), Duration::from_secs(2)).await;
    let err = client.post("/charge").idempotency_key("x".repeat(300)).send().await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
    assert!(err.problem().unwrap().detail.as_deref().unwrap().contains("Idempotency-Key"));
    assert_eq!(state.count.load(Ordering::SeqCst), 0);
}
