//! [`Admin`] for [`PostgresTransport`]: queue depths and dead letters, for `courier queues` and `courier dlq`.

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use courier_core::{Admin, DeadLetter, DeadLetterFilter, Error, QueueStats, RawMessage, Result};
use sqlx::Row;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;

use crate::error::db_error;
use crate::schema::query;
use crate::transport::PostgresTransport;

fn millis_to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_else(Utc::now)
}

/// Binds a filter to the `$1`..`$4` parameters of the dead-letter statements.
fn bind_filter(
    q: Query<'static, sqlx::Postgres, PgArguments>,
    filter: &DeadLetterFilter,
) -> Query<'static, sqlx::Postgres, PgArguments> {
    // Ids that are not numbers cannot be ours: they match nothing (as an empty id list would match everything,
    // keep the list non-empty and impossible).
    let ids: Option<Vec<i64>> = (!filter.entry_ids.is_empty()).then(|| {
        let ids: Vec<i64> = filter.entry_ids.iter().filter_map(|id| id.parse().ok()).collect();
        if ids.is_empty() { vec![-1] } else { ids }
    });
    let limit = filter.limit.map(|l| l.min(i64::MAX as usize) as i64);
    q.bind(filter.queue.clone()).bind(filter.fingerprint.clone()).bind(ids).bind(limit)
}

#[async_trait]
impl Admin for PostgresTransport {
    async fn queues(&self) -> Result<Vec<QueueStats>> {
        let rows = query(&self.shared.sql.queues)
            .fetch_all(&self.shared.pool)
            .await
            .map_err(|e| db_error("cannot list queues", e))?;
        rows.iter()
            .map(|r| {
                let count = |i: usize| r.try_get::<i64, _>(i).map(|n| n.max(0) as u64);
                Ok(QueueStats {
                    name: r.try_get(0)?,
                    ready: count(1)?,
                    in_flight: count(2)?,
                    delayed: count(3)?,
                    dead_lettered: count(4)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| db_error("cannot read queue depths", e))
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        let rows = bind_filter(query(&self.shared.sql.dead_letters), filter)
            .fetch_all(&self.shared.pool)
            .await
            .map_err(|e| db_error("cannot list dead letters", e))?;
        rows.iter()
            .map(|r| {
                let headers: courier_core::Headers = serde_json::from_str(r.try_get::<&str, _>(2)?).unwrap_or_default();
                Ok(DeadLetter {
                    entry_id: r.try_get::<i64, _>(0)?.to_string(),
                    queue: r.try_get(1)?,
                    message: RawMessage { headers, body: Bytes::from(r.try_get::<Vec<u8>, _>(3)?) },
                    dead_lettered_at: millis_to_time(r.try_get(4)?),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| db_error("cannot read dead letters", e))
    }

    async fn replay_dead_letter(&self, entry_id: &str) -> Result<()> {
        let entry: i64 = entry_id
            .parse()
            .map_err(|_| Error::not_found(format!("'{entry_id}' is not a dead-letter id of this engine (a number)")))?;
        let (sql, pool) = (&self.shared.sql, &self.shared.pool);
        let doing = format!("cannot replay dead letter {entry}");
        let mut tx = pool.begin().await.map_err(|e| db_error(&doing, e))?;
        let row = query(&sql.replay_select)
            .bind(entry)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| db_error(&doing, e))?
            .ok_or_else(|| Error::not_found(format!("no dead letter with id {entry} (already replayed or purged?)")))?;
        let read = || -> Result<_, sqlx::Error> {
            Ok((
                row.try_get::<String, _>(0)?,
                row.try_get::<String, _>(1)?,
                row.try_get::<String, _>(2)?,
                row.try_get::<Vec<u8>, _>(3)?,
            ))
        };
        let (queue, message_id, headers, body) = read().map_err(|e| db_error(&doing, e))?;
        let mut headers: courier_core::Headers = serde_json::from_str(&headers).unwrap_or_default();
        courier_core::strip_failure_annotations(&mut headers);
        let headers =
            serde_json::to_string(&headers).map_err(|e| Error::engine(format!("cannot store headers: {e}")))?;
        query(&sql.replay_insert)
            .bind(&queue)
            .bind(message_id)
            .bind(headers)
            .bind(body)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(&doing, e))?;
        query(&sql.replay_delete).bind(entry).execute(&mut *tx).await.map_err(|e| db_error(&doing, e))?;
        sqlx::query("SELECT pg_notify($1, $2)::text")
            .bind(&sql.channel)
            .bind(&queue)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(&doing, e))?;
        tx.commit().await.map_err(|e| db_error(&doing, e))?;
        self.shared.declared.lock().unwrap_or_else(|p| p.into_inner()).insert(queue);
        Ok(())
    }

    async fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64> {
        bind_filter(query(&self.shared.sql.purge), filter)
            .execute(&self.shared.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(|e| db_error("cannot purge dead letters", e))
    }
}
