//! The saga-store conformance case (courier_testkit::sagas) on [`PgSagaStore`]: out-of-order and duplicated events
//! under three competing consumers end in the same state as clean delivery; and the store's own contract.
//!
//! The transport is PostgreSQL too; each world has a schema of its own, dropped at the end.

mod common;

use std::time::Duration;

use common::{SchemaGuard, transport, unique};
use courier_core::{Envelope, SagaStore};
use courier_postgres::{PgOutbox, PgSagaStore};
use courier_testkit::sagas::{OrderPlaced, World, out_of_order_and_duplicates_end_like_clean_delivery};
use courier_testkit::services::POSTGRES;

async fn pg_world(consumers: usize) -> World<PgSagaStore, SchemaGuard> {
    let schema = unique("cpg_saga");
    let guard = SchemaGuard(schema.clone());
    let engine = transport(&schema, "saga-test").await.into_engine();
    let outbox = PgOutbox::connect(&format!("{}?schema={schema}", POSTGRES.url()), "orders").await.unwrap();
    let store = PgSagaStore::new(&outbox);
    World::start(engine, store, outbox, guard, consumers, Duration::from_secs(3600)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_and_duplicated_events_with_competing_consumers_end_like_clean_delivery() {
    if !POSTGRES.require() {
        return;
    }
    out_of_order_and_duplicates_end_like_clean_delivery(pg_world).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_detects_conflicts_and_duplicates_and_commits_outgoing_messages_with_the_state() {
    use courier_core::{OutboxDestination, OutboxStore, SagaOutgoing, SagaRecord, SagaTransition, SaveOutcome};
    if !POSTGRES.require() {
        return;
    }
    let schema = unique("cpg_saga_store");
    let _guard = SchemaGuard(schema.clone());
    let outbox = PgOutbox::connect(&format!("{}?schema={schema}", POSTGRES.url()), "orders").await.unwrap();
    let store = PgSagaStore::new(&outbox);
    let record = |state: &str, status: &str, version| SagaRecord {
        saga: "s".into(),
        id: "1".into(),
        state: state.into(),
        status: status.into(),
        finished: false,
        version,
        updated_at: chrono::Utc::now(),
    };
    let step = |id: &str| SagaTransition {
        message_id: id.into(),
        message_type: "t".into(),
        from_status: "A".into(),
        to_status: "B".into(),
        at: chrono::Utc::now(),
    };
    let out = || SagaOutgoing {
        destination: OutboxDestination::Send("q".into()),
        message: Envelope::for_message("test", &OrderPlaced { order: "1".into() }).unwrap().into_raw(),
        deliver_at: None,
    };
    assert_eq!(store.save(&record("{}", "B", 0), 0, &step("m1"), vec![out()]).await.unwrap(), SaveOutcome::Saved);
    assert_eq!(store.save(&record("{}", "B", 0), 0, &step("m1"), vec![out()]).await.unwrap(), SaveOutcome::Duplicate);
    assert_eq!(store.save(&record("{}", "C", 0), 0, &step("m2"), vec![out()]).await.unwrap(), SaveOutcome::Conflict);
    assert_eq!(store.save(&record("{}", "C", 1), 1, &step("m2"), vec![]).await.unwrap(), SaveOutcome::Saved);
    assert_eq!(store.save(&record("{}", "D", 1), 1, &step("m3"), vec![out()]).await.unwrap(), SaveOutcome::Conflict);
    let loaded = store.load("s", "1").await.unwrap().unwrap();
    assert_eq!((loaded.status.as_str(), loaded.version), ("C", 2));
    assert!(store.load("s", "missing").await.unwrap().is_none());
    let history: Vec<_> = store.history("s", "1").await.unwrap().into_iter().map(|h| h.message_id).collect();
    assert_eq!(history, ["m1", "m2"]);
    assert_eq!(outbox.lag().await.unwrap().unsent, 1, "only the saved transition's message is in the outbox");
    assert_eq!(store.list(None, 10).await.unwrap().len(), 1);
}
