//! sqlx errors as Courier errors: a broken or unreachable connection is [`ErrorKind::Connection`] (retryable),
//! anything else the database says is [`ErrorKind::Engine`].
//!
//! [`ErrorKind::Connection`]: courier_core::ErrorKind::Connection
//! [`ErrorKind::Engine`]: courier_core::ErrorKind::Engine

use courier_core::{Error, ErrorKind};

/// Whether a sqlx error means the connection (not the statement) failed.
pub(crate) fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P01..57P03: admin shutdown, crash shutdown, cannot connect now.
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// Wraps a sqlx error with what we were doing.
pub(crate) fn db_error(doing: &str, e: impl Into<sqlx::Error>) -> Error {
    let e = e.into();
    let kind = if is_connection_error(&e) { ErrorKind::Connection } else { ErrorKind::Engine };
    let message = if kind == ErrorKind::Connection {
        format!("{doing}: the PostgreSQL connection failed (it is retried on the next call)")
    } else {
        format!("{doing}: PostgreSQL rejected the statement")
    };
    Error::new(kind, message).with_source(e)
}

/// Runs an idempotent database operation, once more on a fresh connection if the first one broke.
pub(crate) async fn retry_once<T, F, Fut>(mut op: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    match op().await {
        Err(e) if is_connection_error(&e) && !matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed) => {
            tracing::debug!(error = %e, "PostgreSQL connection broke; trying once more");
            op().await
        }
        other => other,
    }
}
