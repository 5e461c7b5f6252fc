//! The saga store on PostgreSQL: instances, their history and their outgoing messages in the service's database.

use async_trait::async_trait;
use courier_core::{Result, SagaOutgoing, SagaRecord, SagaStore, SagaTransition, SaveOutcome};
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::PgOutbox;
use crate::error::{db_error, retry_once};
use crate::outbox::insert_outbox_row;
use crate::store::query;

/// Saga instances in the same PostgreSQL database and schema as the service's [`PgOutbox`]: a transition's new
/// state, its history step and the messages it sends commit in one transaction, and the outbox relay delivers the
/// messages. Optimistic concurrency by version; a message applied twice to one instance is detected by the history
/// table's primary key (saga, id, message id).
///
/// ```no_run
/// # async fn demo() -> courier_core::Result<()> {
/// use courier_postgres::{PgOutbox, PgSagaStore};
/// let outbox = PgOutbox::connect("postgres://postgres@127.0.0.1/shop?schema=orders", "orders").await?;
/// let sagas = PgSagaStore::new(&outbox);
/// # let _ = sagas; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PgSagaStore {
    outbox: PgOutbox,
}

impl PgSagaStore {
    /// The saga store next to `outbox` (its tables were created with the outbox's).
    pub fn new(outbox: &PgOutbox) -> Self {
        Self { outbox: outbox.clone() }
    }

    /// Connects from a `postgres://` URL (`?schema=`, default `courier`), e.g. for tools reading sagas.
    pub async fn connect(url: &str) -> Result<Self> {
        Ok(Self::new(&PgOutbox::connect(url, "courier-saga").await?))
    }

    /// Connects to the saga tables a service created, creating nothing: fails, saying so, if the URL's schema has
    /// none (for tools that only read, such as `courier saga list`).
    pub async fn open_existing(url: &str) -> Result<Self> {
        Ok(Self::new(&PgOutbox::open_existing(url, "courier-saga").await?))
    }
}

fn record(row: &PgRow) -> std::result::Result<SagaRecord, sqlx::Error> {
    Ok(SagaRecord {
        saga: row.try_get(0)?,
        id: row.try_get(1)?,
        state: row.try_get(2)?,
        status: row.try_get(3)?,
        finished: row.try_get(4)?,
        version: row.try_get(5)?,
        updated_at: row.try_get(6)?,
    })
}

#[async_trait]
impl SagaStore for PgSagaStore {
    async fn load(&self, saga: &str, id: &str) -> Result<Option<SagaRecord>> {
        let db = self.outbox.db();
        let row = retry_once(|| query(&db.sql.saga_load).bind(saga).bind(id).fetch_optional(&db.pool))
            .await
            .map_err(|e| db_error("cannot load the saga instance", e))?;
        row.as_ref().map(record).transpose().map_err(|e| db_error("cannot read the saga instance", e))
    }

    async fn save(
        &self,
        record: &SagaRecord,
        expected_version: i64,
        transition: &SagaTransition,
        outgoing: Vec<SagaOutgoing>,
    ) -> Result<SaveOutcome> {
        let db = self.outbox.db();
        let sql = &db.sql;
        let failed = |e: sqlx::Error| db_error("cannot save the saga transition (nothing was saved)", e);
        let mut tx = db.pool.begin().await.map_err(failed)?;
        let step = query(&sql.saga_history_insert)
            .bind(&record.saga)
            .bind(&record.id)
            .bind(&transition.message_id)
            .bind(&transition.message_type)
            .bind(&transition.from_status)
            .bind(&transition.to_status)
            .bind(transition.at)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        if step.rows_affected() == 0 {
            let _ = tx.rollback().await;
            return Ok(SaveOutcome::Duplicate);
        }
        let written = if expected_version == 0 {
            query(&sql.saga_insert)
                .bind(&record.saga)
                .bind(&record.id)
                .bind(&record.state)
                .bind(&record.status)
                .bind(record.finished)
                .execute(&mut *tx)
                .await
        } else {
            query(&sql.saga_update)
                .bind(&record.saga)
                .bind(&record.id)
                .bind(&record.state)
                .bind(&record.status)
                .bind(record.finished)
                .bind(expected_version)
                .execute(&mut *tx)
                .await
        }
        .map_err(failed)?;
        if written.rows_affected() == 0 {
            let _ = tx.rollback().await;
            return Ok(SaveOutcome::Conflict);
        }
        let has_outgoing = !outgoing.is_empty();
        for out in outgoing {
            insert_outbox_row(&mut tx, sql, &out.destination, out.message, out.deliver_at).await?;
        }
        if has_outgoing {
            query(&sql.notify).bind(&sql.channel).execute(&mut *tx).await.map_err(failed)?;
        }
        tx.commit().await.map_err(failed)?;
        if has_outgoing {
            self.outbox.notify_committed();
        }
        Ok(SaveOutcome::Saved)
    }

    async fn list(&self, saga: Option<&str>, limit: usize) -> Result<Vec<SagaRecord>> {
        let db = self.outbox.db();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = retry_once(|| query(&db.sql.saga_list).bind(saga).bind(limit).fetch_all(&db.pool))
            .await
            .map_err(|e| db_error("cannot list saga instances", e))?;
        rows.iter()
            .map(record)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| db_error("cannot read saga instances", e))
    }

    async fn history(&self, saga: &str, id: &str) -> Result<Vec<SagaTransition>> {
        let db = self.outbox.db();
        let rows = retry_once(|| query(&db.sql.saga_history).bind(saga).bind(id).fetch_all(&db.pool))
            .await
            .map_err(|e| db_error("cannot read the saga history", e))?;
        rows.iter()
            .map(|r| {
                Ok(SagaTransition {
                    message_id: r.try_get(0)?,
                    message_type: r.try_get(1)?,
                    from_status: r.try_get(2)?,
                    to_status: r.try_get(3)?,
                    at: r.try_get(4)?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(|e| db_error("cannot read the saga history", e))
    }
}
