//! Each service's own SQLite database: a file in the shop's data directory, opened through courier-sqlite (which
//! also keeps the service's inbox in it).

use std::path::Path;

use courier::sqlite::SqliteInbox;

/// A service database with its inbox. Queries run on a blocking thread.
pub(crate) type ServiceDb = SqliteInbox;

/// Opens `<dir>/<service>.db` and creates the service's tables with `schema`.
pub(crate) async fn open(dir: &Path, service: &str, schema: &'static str) -> anyhow::Result<ServiceDb> {
    let db = SqliteInbox::open(dir.join(format!("{service}.db"))).await?;
    db.with_conn(move |conn| conn.execute_batch(schema)).await?;
    Ok(db)
}

/// Runs `work` in one transaction on the service database.
pub(crate) async fn transaction<T, F>(db: &ServiceDb, work: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
{
    Ok(db
        .with_conn(move |conn| {
            let tx = conn.unchecked_transaction()?;
            let result = work(&tx)?;
            tx.commit()?;
            Ok(result)
        })
        .await?)
}
