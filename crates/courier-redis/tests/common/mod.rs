//! What the Redis tests share: a transport on a fresh key prefix whose keys are deleted when it is dropped.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use courier_core::{
    Admin, DeadLetter, DeadLetterFilter, Engine, QueueStats, RawMessage, Result, Subscription, SubscriptionOptions,
    Transport,
};
use courier_redis::{RedisOptions, RedisTransport};
use courier_testkit::services::REDIS;

/// A key prefix no other test uses.
pub fn unique_prefix(test: &str) -> String {
    format!("courier-test-{test}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Deletes every key under a prefix (`SCAN MATCH <prefix>:*`).
pub fn delete_keys(prefix: &str) -> usize {
    let client = redis::Client::open(REDIS.url()).expect("Redis URL");
    let Ok(mut conn) = client.get_connection() else { return 0 };
    let keys: Vec<String> = redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(format!("{prefix}:*"))
        .arg("COUNT")
        .arg(1000)
        .clone()
        .iter(&mut conn)
        .map(|it| it.filter_map(|k| k.ok()).collect())
        .unwrap_or_default();
    for chunk in keys.chunks(500) {
        let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(chunk).query(&mut conn);
    }
    keys.len()
}

/// A transport that deletes its prefix's keys when the last handle to it is dropped.
#[derive(Debug)]
pub struct Cleaned {
    pub inner: RedisTransport,
}

impl Drop for Cleaned {
    fn drop(&mut self) {
        delete_keys(self.inner.prefix());
    }
}

/// Connects to the test server on a fresh prefix.
pub async fn transport(test: &str) -> RedisTransport {
    let options = RedisOptions::default().with_prefix(unique_prefix(test));
    RedisTransport::connect(&REDIS.url(), options).await.expect("connect to the test Redis")
}

/// An engine on a fresh prefix, cleaned up when dropped.
pub async fn engine(test: &str) -> Engine {
    Engine::new(Arc::new(Cleaned { inner: transport(test).await }))
}

#[async_trait]
impl Transport for Cleaned {
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
impl Admin for Cleaned {
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
