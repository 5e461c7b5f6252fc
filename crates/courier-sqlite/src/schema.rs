//! The tables of the embedded transport. Created on open; safe to run from several processes at once.

use std::path::Path;

use courier_core::{Error, Result};
use rusqlite::Connection;

use crate::options::{SqliteOptions, Synchronous};

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS courier_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS courier_queues (
    name        TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS courier_bindings (
    message_type TEXT NOT NULL,
    queue        TEXT NOT NULL,
    PRIMARY KEY (message_type, queue)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS courier_messages (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    queue       TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    headers     TEXT NOT NULL,
    body        BLOB NOT NULL,
    visible_at  INTEGER NOT NULL,
    deliveries  INTEGER NOT NULL DEFAULT 0,
    lease       INTEGER,
    enqueued_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS courier_messages_by_queue ON courier_messages (queue, visible_at, seq);
CREATE TABLE IF NOT EXISTS courier_dead_letters (
    entry            INTEGER PRIMARY KEY AUTOINCREMENT,
    queue            TEXT NOT NULL,
    message_id       TEXT NOT NULL,
    fingerprint      TEXT NOT NULL,
    headers          TEXT NOT NULL,
    body             BLOB NOT NULL,
    dead_lettered_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS courier_dead_letters_by_queue ON courier_dead_letters (queue, entry);
CREATE INDEX IF NOT EXISTS courier_dead_letters_by_fingerprint ON courier_dead_letters (fingerprint, entry);
";

/// Runs `setup` again while SQLite answers "database is busy/locked", for up to `timeout`. Switching a new file to
/// WAL and creating tables take locks that some of several processes (or connections) opening one file at the same
/// moment are refused without the busy handler being consulted; trying again a moment later succeeds.
pub(crate) fn retry_busy<T>(
    timeout: std::time::Duration,
    mut setup: impl FnMut() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        match setup() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                    && start.elapsed() < timeout =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

/// Opens a connection with WAL, the chosen durability and a busy timeout.
pub(crate) fn configure(conn: &Connection, options: &SqliteOptions) -> rusqlite::Result<()> {
    conn.busy_timeout(options.busy_timeout)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match options.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    // Statement journals (multi-row UPDATE/INSERT inside a transaction) and temp b-trees stay in memory.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // 8 MiB of page cache per connection: the hot end of every queue stays in memory, and a consumer draining a
    // backlog of millions of messages stays small (the backlog is streamed from disk, never loaded whole).
    conn.pragma_update(None, "cache_size", -8_000)?;
    // Checkpoint the WAL every ~32 MiB instead of every 4 MiB: queue pages churn (insert, lease, delete), and a
    // page changed many times between checkpoints is copied to the database file once.
    conn.pragma_update(None, "wal_autocheckpoint", 8192)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Opens (creating it and its directory if needed) a service database for the inbox, outbox or saga store, with
/// the same settings as the transport, and creates `schema`. `what` names it in errors ("inbox", "outbox").
pub(crate) async fn open_service_db(path: &Path, schema: &'static str, what: &'static str) -> Result<Connection> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<Connection> {
        let fail = |e: rusqlite::Error| {
            Error::connection(format!(
                "cannot open the {what} database '{}': check that its directory is writable",
                p.display()
            ))
            .with_source(e)
        };
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::connection(format!("cannot create the directory of '{}'", p.display())).with_source(e)
            })?;
        }
        let conn = Connection::open(&p).map_err(fail)?;
        let options = SqliteOptions::default();
        retry_busy(options.busy_timeout, || {
            configure(&conn, &options)?;
            conn.execute_batch(schema)
        })
        .map_err(fail)?;
        Ok(conn)
    })
    .await
    .map_err(|e| Error::engine(format!("opening the {what} database panicked: {e}")))?
}
