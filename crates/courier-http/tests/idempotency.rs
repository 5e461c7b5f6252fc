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

/// The store contract, on any store: one claim wins, a repeat replays, a release frees, a dead claim is taken over.
async fn store_contract(store: Arc<dyn IdempotencyStore>, prefix: &str) {
    use courier_http::server::idempotency::{Begin, StoredResponse};
    let key = |k: &str| format!("{prefix}-{k}");
    // Twenty concurrent claims for one key: exactly one wins.
    let claims: Vec<_> = (0..20)
        .map(|_| {
            let (store, key) = (store.clone(), key("race"));
            tokio::spawn(async move { store.begin(&key, Duration::from_secs(30)).await.unwrap() })
        })
        .collect();
    let mut started = 0;
    for claim in claims {
        match claim.await.unwrap() {
            Begin::Started => started += 1,
            Begin::InProgress => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(started, 1, "exactly one concurrent claim wins");
    let response = StoredResponse {
        status: 201,
        headers: vec![("content-type".into(), "application/json".into())],
        body: bytes::Bytes::from_static(br#"{"charge":"ch_1"}"#),
    };
    store.complete(&key("race"), &response, Duration::from_secs(60)).await.unwrap();
    assert_eq!(store.begin(&key("race"), Duration::from_secs(30)).await.unwrap(), Begin::Completed(response));

    assert_eq!(store.begin(&key("freed"), Duration::from_secs(30)).await.unwrap(), Begin::Started);
    store.release(&key("freed")).await.unwrap();
    assert_eq!(store.begin(&key("freed"), Duration::from_secs(30)).await.unwrap(), Begin::Started, "freed by release");

    assert_eq!(store.begin(&key("dead"), Duration::from_millis(100)).await.unwrap(), Begin::Started);
    assert_eq!(store.begin(&key("dead"), Duration::from_millis(100)).await.unwrap(), Begin::InProgress);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        store.begin(&key("dead"), Duration::from_millis(100)).await.unwrap(),
        Begin::Started,
        "a claim older than its lease is taken over"
    );
}

#[tokio::test]
async fn postgres_store_keeps_the_contract_and_replays_through_the_layer() {
    use courier_http::server::idempotency::PostgresIdempotencyStore;
    use courier_testkit::services::POSTGRES;
    if !POSTGRES.require() {
        return;
    }
    let table = format!("idem_test_{}", uuid::Uuid::new_v4().simple());
    let store = PostgresIdempotencyStore::connect_table(&POSTGRES.url(), &table).await.expect("the store");
    store_contract(Arc::new(store.clone()), "c").await;
    repeat_returns_the_stored_response(Arc::new(store.clone())).await;
    store.drop_table().await.expect("drop the test table");
}

#[tokio::test]
async fn redis_store_keeps_the_contract_and_replays_through_the_layer() {
    use courier_http::server::idempotency::RedisIdempotencyStore;
    use courier_testkit::services::REDIS;
    if !REDIS.require() {
        return;
    }
    let prefix = format!("courier:idem-test:{}:", uuid::Uuid::new_v4().simple());
    let store = RedisIdempotencyStore::connect_prefix(&REDIS.url(), &prefix).await.expect("the store");
    store_contract(Arc::new(store.clone()), "c").await;
    repeat_returns_the_stored_response(Arc::new(store)).await;
    // Clean up this run's keys.
    let client = redis::Client::open(REDIS.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(&mut conn).await.unwrap();
    }
}

#[tokio::test]
async fn memory_and_sqlite_stores_keep_the_contract() {
    store_contract(Arc::new(MemoryIdempotencyStore::new()), "m").await;
    let dir = tempfile::tempdir().unwrap();
    store_contract(Arc::new(SqliteIdempotencyStore::open(dir.path().join("keys.db")).unwrap()), "s").await;
}
