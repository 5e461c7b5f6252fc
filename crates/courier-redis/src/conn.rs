//! A named, self-healing connection: a multiplexed Redis connection that reconnects after it breaks and names
//! itself (`CLIENT SETNAME`) every time it connects, so operators can find a transport's connections in
//! `CLIENT LIST`.

use std::sync::Mutex;
use std::time::Duration;

use courier_core::Error;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};

/// One logical connection to Redis. Cloning the inner connection is cheap; commands sent concurrently share it
/// (pipelined).
pub(crate) struct Conn {
    client: Client,
    name: String,
    config: AsyncConnectionConfig,
    current: Mutex<Option<MultiplexedConnection>>,
    connecting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Conn {
    /// A connection named `name`; `response_timeout` bounds every command (`None` for blocking reads that set
    /// their own bound).
    pub(crate) fn new(client: Client, name: String, response_timeout: Option<Duration>) -> Self {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(response_timeout);
        Self { client, name, config, current: Mutex::new(None), connecting: tokio::sync::Mutex::new(()) }
    }

    /// The connection, connecting (and naming it) if there is none.
    pub(crate) async fn get(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(c) = self.current.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(c.clone());
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(c) = self.current.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(c.clone());
        }
        let mut conn = self.client.get_multiplexed_async_connection_with_config(&self.config).await?;
        redis::cmd("CLIENT").arg("SETNAME").arg(&self.name).exec_async(&mut conn).await?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// Looks at a command's result: a broken connection is dropped so the next command reconnects.
    pub(crate) fn check<T>(&self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if let Err(e) = &result
            && is_broken(e)
        {
            self.current.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
        result
    }
}

/// The connection was lost (as opposed to a slow answer or an error reply).
pub(crate) fn is_dropped(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped()
}

fn is_broken(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() || e.is_timeout()
}

/// Turns a Redis error into Courier's, saying what was being done.
pub(crate) fn to_error(what: &str, e: RedisError) -> Error {
    if is_broken(&e) || e.is_connection_refusal() {
        Error::connection(format!("{what}: the connection to Redis failed; it reconnects on the next call"))
            .with_source(e)
    } else {
        Error::engine(format!("{what}: Redis answered with an error")).with_source(e)
    }
}
