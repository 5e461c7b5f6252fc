//! Taking messages: one statement leases up to `max` visible messages (`FOR UPDATE SKIP LOCKED`, so competing
//! consumers never wait for each other nor take the same message), and a renewer extends the leases of messages
//! still being handled.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use courier_core::{Delivery, RawMessage, Result, Subscription};
use sqlx::{PgPool, Row};
use tokio::sync::mpsc;

use crate::error::db_error;
use crate::reuse::Reuse;
use crate::schema::{Sql, query_planned};
use crate::settle::{Held, Lease, PostgresAcker, Rows, Settle, settle_rows};
use crate::wake::Wakers;

/// The most messages one take leases.
const MAX_TAKE: usize = 1000;

/// A subscription to one queue.
#[derive(Debug)]
pub(crate) struct PostgresSubscription {
    pub(crate) pool: PgPool,
    pub(crate) reuse: Arc<Reuse>,
    pub(crate) sql: Arc<Sql>,
    pub(crate) settler: mpsc::Sender<Settle>,
    pub(crate) wakers: Arc<Wakers>,
    pub(crate) queue: Arc<str>,
    pub(crate) visibility: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) recheck_interval: Duration,
    pub(crate) held: Held,
    pub(crate) renewer: tokio::task::JoinHandle<()>,
}

impl Drop for PostgresSubscription {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// Extends the leases of messages still being handled, so a long handler is not mistaken for a dead one, and
/// records each row's new address for settling it.
pub(crate) async fn renew_leases(reuse: Arc<Reuse>, sql: Arc<Sql>, held: Held, visibility: Duration) {
    let mut tick = tokio::time::interval(visibility / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let visibility_ms = visibility.as_millis() as i64;
    loop {
        tick.tick().await;
        let mut rows = Rows::default();
        for (seq, lease) in held.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            rows.push(*seq, lease);
        }
        if rows.is_empty() {
            continue;
        }
        // Rows settled or taken again while the renewal ran are not looked for by seq.
        let still_held = |seq, token| {
            held.lock().unwrap_or_else(|p| p.into_inner()).get(&seq).is_some_and(|lease| lease.token == token)
        };
        let renewed = settle_rows(&reuse, &sql.renew, &rows, still_held, |q| q.bind(visibility_ms)).await;
        let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
        for row in renewed.rows {
            let (Ok(seq), Ok(at), Ok(token)) =
                (row.try_get::<i64, _>(0), row.try_get::<String, _>(1), row.try_get::<i64, _>(2))
            else {
                continue;
            };
            if let Some(lease) = held.get_mut(&seq).filter(|lease| lease.token == token) {
                lease.at = at;
            }
        }
        if let Err(e) = renewed.result {
            tracing::warn!(error = %e, "could not extend leases; messages may be redelivered while still handled");
        }
    }
}

fn lease_token() -> i64 {
    loop {
        let l = (uuid::Uuid::new_v4().as_u128() as i64) & i64::MAX;
        if l != 0 {
            return l;
        }
    }
}

fn decode_headers(text: &str) -> courier_core::Headers {
    // Headers were written by us; if a row was edited by hand and they do not parse, the message still reaches
    // the consumer, which dead-letters it as an invalid envelope.
    serde_json::from_str(text).unwrap_or_default()
}

impl PostgresSubscription {
    async fn take(&self, max: usize, token: i64) -> Result<Vec<Delivery>> {
        let visibility_ms = self.visibility.as_millis() as i64;
        let limit = max.clamp(1, MAX_TAKE) as i64;
        let rows = crate::reuse::reusing!(self.reuse, |conn| query_planned(&self.sql.take)
            .bind(&self.queue)
            .bind(limit)
            .bind(visibility_ms)
            .bind(token)
            .fetch_all(conn))
        .map_err(|e| db_error(&format!("cannot take messages from '{}'", self.queue), e))?;
        let mut taken = Vec::with_capacity(rows.len());
        for row in rows {
            let seq: i64 = row.try_get(0).map_err(|e| db_error("unexpected row", e))?;
            let headers: &str = row.try_get(1).map_err(|e| db_error("unexpected row", e))?;
            let body: Vec<u8> = row.try_get(2).map_err(|e| db_error("unexpected row", e))?;
            let deliveries: i32 = row.try_get(3).map_err(|e| db_error("unexpected row", e))?;
            let at: String = row.try_get(4).map_err(|e| db_error("unexpected row", e))?;
            taken.push((seq, decode_headers(headers), body, deliveries, Lease { token, at }));
        }
        taken.sort_by_key(|t| t.0);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        Ok(taken
            .into_iter()
            .map(|(seq, headers, body, deliveries, lease)| {
                held.insert(seq, lease.clone());
                let acker = PostgresAcker {
                    reuse: self.reuse.clone(),
                    sql: self.sql.clone(),
                    settler: self.settler.clone(),
                    seq,
                    lease,
                    held: self.held.clone(),
                };
                let message = RawMessage { headers, body: Bytes::from(body) };
                Delivery::new(self.queue.clone(), message, deliveries.max(1) as u32, Box::new(acker))
            })
            .collect())
    }

    /// How long to wait before looking again when nothing was visible.
    async fn idle_wait(&self) -> Result<Duration> {
        let mut wait = if self.wakers.listening() { self.recheck_interval } else { self.poll_interval };
        let next: Option<i64> = query_planned(&self.sql.next_visible)
            .bind(&self.queue)
            .fetch_optional(&self.pool)
            .await
            .and_then(|row| row.map(|row| row.try_get(0)).transpose())
            .map_err(|e| db_error(&format!("cannot look into '{}'", self.queue), e))?;
        if let Some(ms) = next {
            // A message visible now but not taken is locked by another consumer's take: look again shortly.
            wait = wait.min(Duration::from_millis(ms.max(2) as u64));
        }
        Ok(wait)
    }
}

#[async_trait]
impl Subscription for PostgresSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>> {
        let notify = self.wakers.get(&self.queue);
        loop {
            // Registered before looking, so a notification that arrives while we look is not missed.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let taken = self.take(max, lease_token()).await?;
            if !taken.is_empty() {
                return Ok(taken);
            }
            let wait = self.idle_wait().await?;
            let _ = tokio::time::timeout(wait, notified).await;
        }
    }
}
