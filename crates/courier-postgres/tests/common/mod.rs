//! What the PostgreSQL tests share: a schema of their own per transport, dropped when the test is done.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use courier_core::{
    Admin, DeadLetter, DeadLetterFilter, Engine, QueueStats, RawMessage, Result, Subscription, SubscriptionOptions,
    Transport,
};
use courier_postgres::sqlx::{Connection, PgConnection};
use courier_postgres::{PostgresOptions, PostgresTransport};
use courier_testkit::services::POSTGRES;

/// A fresh name: `<prefix>_<32 hex>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Connects a transport on `schema` with `application_name` set to `app`.
pub async fn transport(schema: &str, app: &str) -> PostgresTransport {
    let options = PostgresOptions::default().schema(schema).application_name(app).max_connections(8);
    PostgresTransport::connect(&POSTGRES.url(), options).await.expect("connect to PostgreSQL")
}

/// Runs one statement on a connection of its own (not the transport's).
pub async fn execute(statement: &str) -> u64 {
    let mut conn = PgConnection::connect(&POSTGRES.url()).await.expect("connect to PostgreSQL");
    let done = courier_postgres::sqlx::raw_sql(courier_postgres::sqlx::AssertSqlSafe(statement.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
    let _ = conn.close().await;
    done.rows_affected()
}

/// Drops `schema` when dropped, on a thread and runtime of its own (so it works inside or outside a runtime, and
/// while one shuts down).
#[derive(Debug)]
pub struct SchemaGuard(pub String);

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let statement = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.0);
        let dropping = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let mut conn = PgConnection::connect(&POSTGRES.url()).await?;
                courier_postgres::sqlx::raw_sql(courier_postgres::sqlx::AssertSqlSafe(
                    "SET lock_timeout = '10s'".to_owned(),
                ))
                .execute(&mut conn)
                .await?;
                courier_postgres::sqlx::raw_sql(courier_postgres::sqlx::AssertSqlSafe(statement))
                    .execute(&mut conn)
                    .await
            })
        });
        match dropping.join() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("could not drop test schema '{}': {e}", self.0),
            Err(_) => eprintln!("dropping test schema '{}' panicked", self.0),
        }
    }
}

/// A transport on a schema of its own that is dropped with the last handle (the end of a conformance case).
#[derive(Debug)]
pub struct Scoped {
    inner: PostgresTransport,
    _guard: SchemaGuard,
}

/// An engine on a fresh schema `courier_test_<uuid>`, dropped when the engine is.
pub async fn scoped_engine() -> Engine {
    let schema = unique("courier_test");
    let inner = transport(&schema, "courier_conformance").await;
    Engine::new(Arc::new(Scoped { inner, _guard: SchemaGuard(schema) }))
}

#[async_trait]
impl Transport for Scoped {
    async fn declare_queue(&self, queue: &str) -> Result<()> {
        self.inner.declare_queue(queue).await
    }
    async fn bind(&self, queue: &str, message_type: &str) -> Result<()> {
        self.inner.bind(queue, message_type).await
    }
    async fn delete_queue(&self, queue: &str) -> Result<()> {
        self.inner.delete_queue(queue).await
    }
    async fn publish(&self, message: RawMessage, deliver_at: Option<DateTime<Utc>>) -> Result<()> {
        self.inner.publish(message, deliver_at).await
    }
    async fn send(&self, queue: &str, message: RawMessage, deliver_at: Option<DateTime<Utc>>) -> Result<()> {
        self.inner.send(queue, message, deliver_at).await
    }
    async fn subscribe(&self, queue: &str, options: SubscriptionOptions) -> Result<Box<dyn Subscription>> {
        self.inner.subscribe(queue, options).await
    }
    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }
}

#[async_trait]
impl Admin for Scoped {
    async fn queues(&self) -> Result<Vec<QueueStats>> {
        self.inner.queues().await
    }
    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        self.inner.dead_letters(filter).await
    }
    async fn replay_dead_letter(&self, entry_id: &str) -> Result<()> {
        self.inner.replay_dead_letter(entry_id).await
    }
    async fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64> {
        self.inner.purge_dead_letters(filter).await
    }
}

/// Waits up to `limit` for `check` to hold, looking every 20 ms.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}
