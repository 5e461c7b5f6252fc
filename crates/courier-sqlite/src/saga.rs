//! The saga store on SQLite: instances, their history and their outgoing messages in the service's database.

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use courier_core::{
    OutboxDestination, Result, SagaOutgoing, SagaRecord, SagaStore, SagaTransition, SaveOutcome, now_millis,
};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::outbox::{SqliteOutbox, insert_outbox_row};

const SAGA_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS courier_sagas (
    saga       TEXT NOT NULL,
    id         TEXT NOT NULL,
    state      TEXT NOT NULL,
    status     TEXT NOT NULL,
    finished   INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (saga, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS courier_sagas_by_time ON courier_sagas (updated_at);
CREATE TABLE IF NOT EXISTS courier_saga_history (
    saga         TEXT NOT NULL,
    id           TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    message_type TEXT NOT NULL,
    from_status  TEXT NOT NULL,
    to_status    TEXT NOT NULL,
    at           INTEGER NOT NULL,
    PRIMARY KEY (saga, id, message_id)
) WITHOUT ROWID;
";

/// Saga instances in the same SQLite database as the service's outbox: a transition's new state, its history step
/// and the messages it sends commit in one transaction, and the outbox relay delivers the messages.
///
/// ```no_run
/// # async fn demo() -> courier_core::Result<()> {
/// use courier_sqlite::{SqliteOutbox, SqliteSagaStore};
/// let outbox = SqliteOutbox::open("./data/orders.db", "orders").await?;
/// let sagas = SqliteSagaStore::open(&outbox).await?;
/// # let _ = sagas; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteSagaStore {
    outbox: SqliteOutbox,
}

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<SagaRecord> {
    Ok(SagaRecord {
        saga: r.get(0)?,
        id: r.get(1)?,
        state: r.get(2)?,
        status: r.get(3)?,
        finished: r.get::<_, i64>(4)? != 0,
        version: r.get(5)?,
        updated_at: Utc.timestamp_millis_opt(r.get(6)?).single().unwrap_or_else(Utc::now),
    })
}

const COLUMNS: &str = "saga, id, state, status, finished, version, updated_at";

impl SqliteSagaStore {
    /// Creates the saga tables in the outbox's database if needed.
    pub async fn open(outbox: &SqliteOutbox) -> Result<Self> {
        outbox.with_conn(|conn| conn.execute_batch(SAGA_SCHEMA)).await?;
        Ok(Self { outbox: outbox.clone() })
    }
}

#[async_trait]
impl SagaStore for SqliteSagaStore {
    async fn load(&self, saga: &str, id: &str) -> Result<Option<SagaRecord>> {
        let (saga, id) = (saga.to_owned(), id.to_owned());
        self.outbox
            .with_conn(move |conn| {
                conn.prepare_cached(&format!("SELECT {COLUMNS} FROM courier_sagas WHERE saga = ?1 AND id = ?2"))?
                    .query_row(params![saga, id], record)
                    .optional()
            })
            .await
    }

    async fn save(
        &self,
        record: &SagaRecord,
        expected_version: i64,
        transition: &SagaTransition,
        outgoing: Vec<SagaOutgoing>,
    ) -> Result<SaveOutcome> {
        let (record, transition) = (record.clone(), transition.clone());
        let has_outgoing = !outgoing.is_empty();
        let outcome = self
            .outbox
            .with_conn(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let new_step = tx.execute(
                    "INSERT OR IGNORE INTO courier_saga_history
                       (saga, id, message_id, message_type, from_status, to_status, at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        record.saga,
                        record.id,
                        transition.message_id,
                        transition.message_type,
                        transition.from_status,
                        transition.to_status,
                        transition.at.timestamp_millis()
                    ],
                )?;
                if new_step == 0 {
                    return Ok(Ok(SaveOutcome::Duplicate));
                }
                let now = now_millis();
                let written = if expected_version == 0 {
                    tx.execute(
                        "INSERT OR IGNORE INTO courier_sagas (saga, id, state, status, finished, version, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6)",
                        params![record.saga, record.id, record.state, record.status, record.finished, now],
                    )?
                } else {
                    tx.execute(
                        "UPDATE courier_sagas SET state = ?3, status = ?4, finished = ?5, version = version + 1,
                                updated_at = ?6
                         WHERE saga = ?1 AND id = ?2 AND version = ?7",
                        params![
                            record.saga,
                            record.id,
                            record.state,
                            record.status,
                            record.finished,
                            now,
                            expected_version
                        ],
                    )?
                };
                if written == 0 {
                    return Ok(Ok(SaveOutcome::Conflict));
                }
                for out in outgoing {
                    let destination = match &out.destination {
                        OutboxDestination::Publish => None,
                        OutboxDestination::Send(queue) => Some(queue.as_str()),
                    };
                    if let Err(e) = insert_outbox_row(&tx, destination, out.message, out.deliver_at) {
                        return Ok(Err(e));
                    }
                }
                tx.commit()?;
                Ok(Ok(SaveOutcome::Saved))
            })
            .await??;
        if outcome == SaveOutcome::Saved && has_outgoing {
            self.outbox.notify_committed();
        }
        Ok(outcome)
    }

    async fn list(&self, saga: Option<&str>, limit: usize) -> Result<Vec<SagaRecord>> {
        let saga = saga.map(str::to_owned);
        let limit = limit.min(i64::MAX as usize) as i64;
        self.outbox
            .with_conn(move |conn| {
                let mut stmt = conn.prepare(&format!(
                    "SELECT {COLUMNS} FROM courier_sagas WHERE (?1 IS NULL OR saga = ?1)
                     ORDER BY updated_at DESC, saga, id LIMIT ?2"
                ))?;
                let rows = stmt.query_map(params![saga, limit], record)?;
                rows.collect()
            })
            .await
    }

    async fn history(&self, saga: &str, id: &str) -> Result<Vec<SagaTransition>> {
        let (saga, id) = (saga.to_owned(), id.to_owned());
        self.outbox
            .with_conn(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT message_id, message_type, from_status, to_status, at FROM courier_saga_history
                     WHERE saga = ?1 AND id = ?2 ORDER BY at, message_id",
                )?;
                let rows = stmt.query_map(params![saga, id], |r| {
                    Ok(SagaTransition {
                        message_id: r.get(0)?,
                        message_type: r.get(1)?,
                        from_status: r.get(2)?,
                        to_status: r.get(3)?,
                        at: Utc.timestamp_millis_opt(r.get(4)?).single().unwrap_or_else(Utc::now),
                    })
                })?;
                rows.collect()
            })
            .await
    }
}
