//! Connections kept out of the pool between the statements Courier runs for every batch.
//!
//! sqlx tests every connection that goes back to its pool with a round trip to the server (a `Sync`, answered by
//! `ReadyForQuery`), and has a task do it. The statements of the hot path (enqueue, take, ack) run for every batch
//! of messages, so each paid a second round trip and a task. They take their connection from here instead and put
//! it back here, where up to `keep` wait checked out of the pool; more concurrent statements than that borrow from
//! the pool as before. A connection whose statement failed goes back to the pool (which tests it); after a
//! connection error the idle ones go too, since they likely broke the same way (a server restart).

use std::sync::Mutex;

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};

use crate::error::is_connection_error;

/// A few connections reused across statements, beside the pool they come from.
#[derive(Debug)]
pub(crate) struct Reuse {
    pool: PgPool,
    idle: Mutex<Vec<PoolConnection<Postgres>>>,
    keep: usize,
}

impl Reuse {
    /// Keeps up to `keep` idle connections of `pool`.
    pub(crate) fn new(pool: PgPool, keep: usize) -> Self {
        Self { pool, idle: Mutex::new(Vec::with_capacity(keep)), keep }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<PoolConnection<Postgres>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection, or one from the pool.
    pub(crate) async fn get(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let idle = self.idle().pop();
        match idle {
            Some(conn) => Ok(conn),
            None => self.pool.acquire().await,
        }
    }

    /// Takes back a connection after its statement: kept if the statement succeeded and there is room, else
    /// returned to the pool. A connection error also returns the idle ones.
    pub(crate) fn put<T>(&self, conn: PoolConnection<Postgres>, result: &Result<T, sqlx::Error>) {
        match result {
            Ok(_) => {
                let mut idle = self.idle();
                if idle.len() < self.keep {
                    idle.push(conn);
                }
            }
            Err(e) if is_connection_error(e) => {
                let stale = std::mem::take(&mut *self.idle());
                drop((conn, stale));
            }
            Err(_) => drop(conn),
        }
    }
}

/// Runs `$statement` (an expression using `$conn: &mut PgConnection`, awaited here) on a connection from `$reuse`,
/// once more on a fresh connection if the first broke (the statements it runs are safe to repeat).
macro_rules! reusing {
    ($reuse:expr, |$conn:ident| $statement:expr) => {{
        let reuse: &$crate::reuse::Reuse = &$reuse;
        let mut tries = 0;
        loop {
            let mut held = match reuse.get().await {
                Ok(held) => held,
                Err(e) => break Err(e),
            };
            let result = {
                let $conn: &mut sqlx::PgConnection = &mut *held;
                $statement.await
            };
            let again = tries == 0
                && matches!(&result, Err(e) if $crate::error::is_connection_error(e)
                    && !matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed));
            reuse.put(held, &result);
            if !again {
                break result;
            }
            tracing::debug!("PostgreSQL connection broke; trying once more");
            tries += 1;
        }
    }};
}

pub(crate) use reusing;
