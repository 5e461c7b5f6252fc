//! Where the services keep their data: a SQLite file each in a directory (the default), or a schema each in a
//! PostgreSQL database. Either way a service's database also holds its inbox (and, for orders, its outbox and
//! sagas), so a handler's writes and the record of its message commit together.
//!
//! The services' SQL is written once for both: `$1`-style parameters (SQLite reads `$1` as a parameter too),
//! `BIGINT` columns, `INSERT ... ON CONFLICT`. Only the calls into the two drivers differ.

use std::path::PathBuf;
use std::time::Duration;

use courier::postgres::sqlx::postgres::PgPoolOptions;
use courier::postgres::sqlx::{self, Executor, PgPool};
use courier::postgres::{PgInbox, redact};
use courier::sqlite::SqliteInbox;
use courier_http::server::idempotency::{IdempotencyStore, PostgresIdempotencyStore, SqliteIdempotencyStore};

/// Where the shop's services keep their databases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Databases {
    /// A SQLite file per service in this directory (`<dir>/<service>.db`), created if missing.
    Sqlite(PathBuf),
    /// A schema per service (`<namespace or shop>_<service>`) in the PostgreSQL database at this URL, created if
    /// missing. The services could as well be given a server each; one URL keeps the example short.
    Postgres(String),
}

impl Databases {
    /// Reads `--db`: a directory, `sqlite://DIR`, or a `postgres://` URL.
    ///
    /// ```
    /// use courier_shop::Databases;
    /// assert_eq!(Databases::parse("./data/shop").unwrap(), Databases::Sqlite("./data/shop".into()));
    /// assert!(matches!(Databases::parse("postgres://postgres@127.0.0.1/test"), Ok(Databases::Postgres(_))));
    /// assert!(Databases::parse("mysql://localhost/shop").is_err());
    /// ```
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if let Some(path) = text.strip_prefix("sqlite://") {
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Self::Postgres(text.to_owned()));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            anyhow::bail!(
                "the shop's databases: {scheme} is not supported; give a directory (or sqlite://DIR) for a SQLite \
                 file per service, or postgres://USER@HOST/DB for a schema per service"
            );
        }
        Ok(Self::Sqlite(PathBuf::from(text)))
    }

    /// Drops the schemas the services made on PostgreSQL for runs with `namespace` (for tests and teardown); with
    /// SQLite it does nothing (delete the directory).
    pub async fn drop_schemas(&self, namespace: &str) -> anyhow::Result<()> {
        let Self::Postgres(url) = self else { return Ok(()) };
        let pool = PgPoolOptions::new().max_connections(1).connect(url).await?;
        for service in crate::Service::ALL {
            // Letters, digits and '_' only (see schema_name): safe in the statement.
            let drop = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", schema_name(namespace, service.name()));
            sqlx::raw_sql(sqlx::AssertSqlSafe(drop)).execute(&pool).await?;
        }
        pool.close().await;
        Ok(())
    }

    /// Creates what must exist before the services open their databases (the SQLite directory).
    pub(crate) fn prepare(&self) -> anyhow::Result<()> {
        if let Self::Sqlite(dir) = self {
            std::fs::create_dir_all(dir)?;
        }
        Ok(())
    }
}

impl From<PathBuf> for Databases {
    fn from(dir: PathBuf) -> Self {
        Self::Sqlite(dir)
    }
}

impl From<&PathBuf> for Databases {
    fn from(dir: &PathBuf) -> Self {
        Self::Sqlite(dir.clone())
    }
}

impl From<&std::path::Path> for Databases {
    fn from(dir: &std::path::Path) -> Self {
        Self::Sqlite(dir.to_owned())
    }
}

impl std::fmt::Display for Databases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(dir) => write!(f, "a SQLite file per service in {}", dir.display()),
            Self::Postgres(url) => write!(f, "a PostgreSQL schema per service at {}", redact(url)),
        }
    }
}

/// One service's place in [`Databases`].
#[derive(Debug, Clone)]
pub(crate) enum Place {
    /// Its SQLite file.
    Sqlite(PathBuf),
    /// Its schema, and a pool whose connections have it as their `search_path`.
    Postgres { pool: PgPool, schema: String },
}

impl Place {
    /// The place of `service` (`name`); `namespace` keeps runs sharing a PostgreSQL database apart.
    pub(crate) async fn of(databases: &Databases, namespace: &str, name: &str) -> anyhow::Result<Self> {
        match databases {
            Databases::Sqlite(dir) => Ok(Self::Sqlite(dir.join(format!("{name}.db")))),
            Databases::Postgres(url) => {
                let schema = schema_name(namespace, name);
                let search_path = format!("SET search_path TO \"{schema}\"");
                let pool = PgPoolOptions::new()
                    .max_connections(5)
                    .acquire_timeout(Duration::from_secs(10))
                    .after_connect(move |conn, _| {
                        // The schema name is letters, digits and '_' (see schema_name): safe in the statement.
                        let set = sqlx::AssertSqlSafe(search_path.clone());
                        Box::pin(async move { conn.execute(set).await.map(|_| ()) })
                    })
                    .connect(url)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "{name}: cannot connect to PostgreSQL at {}: {e}; is the server running?",
                            redact(url)
                        )
                    })?;
                let create = sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""));
                sqlx::raw_sql(create).execute(&pool).await?;
                Ok(Self::Postgres { pool, schema })
            }
        }
    }

    /// A SQLite file next to the service's own, or a table in its schema: where its idempotency keys go.
    pub(crate) async fn idempotency_keys(&self) -> anyhow::Result<std::sync::Arc<dyn IdempotencyStore>> {
        Ok(match self {
            Self::Sqlite(path) => std::sync::Arc::new(SqliteIdempotencyStore::open(path.with_extension("keys.db"))?),
            Self::Postgres { pool, .. } => {
                std::sync::Arc::new(PostgresIdempotencyStore::with_pool(pool.clone(), "idempotency_keys").await?)
            }
        })
    }

    /// Whether the database answers (for `/health/ready`).
    pub(crate) async fn ping(&self) -> Result<(), String> {
        match self {
            Self::Sqlite(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    let conn = rusqlite::Connection::open(&path)?;
                    conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                })
                .await
                .map_err(|e| e.to_string())?
                .map(|_| ())
                .map_err(|e| e.to_string())
            }
            Self::Postgres { pool, .. } => {
                sqlx::query("SELECT 1").execute(pool).await.map(|_| ()).map_err(|e| e.to_string())
            }
        }
    }
}

/// `<namespace>_<service>` (or `shop_<service>`), lower case, letters, digits and `_` only, at most 63 bytes.
fn schema_name(namespace: &str, service: &str) -> String {
    let prefix = if namespace.is_empty() { "shop" } else { namespace };
    let mut name: String = format!("{prefix}_{service}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name.truncate(63);
    name
}

/// A service database with its inbox.
#[derive(Debug, Clone)]
pub(crate) enum ServiceDb {
    /// A SQLite file; queries run on a blocking thread.
    Sqlite(SqliteInbox),
    /// A PostgreSQL schema (the pool's `search_path`).
    Postgres(PgInbox),
}

impl ServiceDb {
    /// Opens the service's database at `place` and creates its tables with `schema` (SQL both stores read).
    pub(crate) async fn open(place: &Place, schema: &'static str) -> anyhow::Result<Self> {
        match place {
            Place::Sqlite(path) => {
                let db = SqliteInbox::open(path).await?;
                db.with_conn(move |conn| conn.execute_batch(schema)).await?;
                Ok(Self::Sqlite(db))
            }
            Place::Postgres { pool, schema: name } => {
                let inbox = PgInbox::with_pool(pool.clone(), name).await?;
                sqlx::raw_sql(schema).execute(pool).await?;
                Ok(Self::Postgres(inbox))
            }
        }
    }
}

/// How a SQLite transaction ends.
pub(crate) enum End<T> {
    /// Keep its writes.
    Commit(T),
    /// Undo them.
    Rollback(T),
}

/// Runs `work` in one transaction on a SQLite service database; it commits or rolls back as `work` says.
pub(crate) async fn sqlite_transaction<T, F>(db: &SqliteInbox, work: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<End<T>> + Send + 'static,
{
    Ok(db
        .with_conn(move |conn| {
            let tx = conn.unchecked_transaction()?;
            match work(&tx)? {
                End::Commit(result) => {
                    tx.commit()?;
                    Ok(result)
                }
                End::Rollback(result) => {
                    tx.rollback()?;
                    Ok(result)
                }
            }
        })
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_safe_identifiers() {
        assert_eq!(schema_name("", "orders"), "shop_orders");
        assert_eq!(schema_name("demo-1a2B", "email"), "demo_1a2b_email");
        assert_eq!(schema_name("9lives", "edge"), "_9lives_edge");
        assert!(schema_name(&"x".repeat(100), "orders").len() <= 63);
    }
}
