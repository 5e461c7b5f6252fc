//! Group commit for publishes and sends: concurrent enqueues waiting at one moment are written by one statement
//! (one round trip, one commit, one WAL flush), which inserts every copy (fan-out through the bindings table) and
//! declares new send targets. A caller's reply is sent after the commit, so a returned publish is durable. The
//! queues written to are then announced (see [`crate::wake`]).
//!
//! Up to `writers` batches are written at once; a batch that fails for a reason other than the connection is
//! written again one message at a time, so one bad message fails only its own publish.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use courier_core::{Error, Result};
use sqlx::Row;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::error::{db_error, is_connection_error};
use crate::schema::{Sql, query};
use crate::wake::Wakers;

/// One message to enqueue.
#[derive(Debug)]
pub(crate) struct Enqueue {
    /// The target queue for a send; `None` for a publish (fanned out by `message_type`).
    pub(crate) queue: Option<String>,
    pub(crate) message_type: String,
    pub(crate) message_id: String,
    pub(crate) headers: String,
    pub(crate) body: Bytes,
    /// Milliseconds since the epoch; `None` for now (the server's clock).
    pub(crate) visible_at: Option<i64>,
    pub(crate) reply: oneshot::Sender<Result<()>>,
}

/// What the writer needs, shared with the transport.
#[derive(Debug)]
pub(crate) struct WriterContext {
    pub(crate) reuse: Arc<crate::reuse::Reuse>,
    pub(crate) sql: Arc<Sql>,
    /// Queues known to exist (declared by this transport), so a send need not declare its queue again.
    pub(crate) declared: Arc<Mutex<HashSet<String>>>,
    pub(crate) wakers: Arc<Wakers>,
    pub(crate) max_batch: usize,
    pub(crate) writers: usize,
}

/// Runs until every sender is gone, then waits for the batches being written.
pub(crate) async fn run(ctx: WriterContext, mut rx: mpsc::Receiver<Enqueue>) {
    let ctx = Arc::new(ctx);
    let permits = Arc::new(Semaphore::new(ctx.writers.max(1)));
    let mut writing = JoinSet::new();
    let mut batch = Vec::with_capacity(ctx.max_batch);
    loop {
        // Wait for a free writer first: while all are busy, enqueues pile up in the channel and make the next
        // batch bigger.
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        if rx.recv_many(&mut batch, ctx.max_batch).await == 0 {
            break;
        }
        while writing.try_join_next().is_some() {}
        let ctx = ctx.clone();
        let ops = std::mem::replace(&mut batch, Vec::with_capacity(ctx.max_batch));
        writing.spawn(async move {
            write(&ctx, ops).await;
            drop(permit);
        });
    }
    while writing.join_next().await.is_some() {}
}

async fn write(ctx: &WriterContext, ops: Vec<Enqueue>) {
    match write_batch(ctx, &ops).await {
        Ok(()) => {
            for op in ops {
                let _ = op.reply.send(Ok(()));
            }
        }
        Err(e) if ops.len() > 1 && !is_connection_error(&e) => {
            tracing::debug!(error = %e, messages = ops.len(), "a publish batch failed; writing it one by one");
            for op in ops {
                let result = write_batch(ctx, std::slice::from_ref(&op)).await;
                let _ = op.reply.send(result.map_err(|e| db_error("cannot enqueue the message", e)));
            }
        }
        Err(e) => {
            let error = db_error("cannot enqueue the message", e);
            for op in ops {
                let _ = op.reply.send(Err(Error::new(error.kind(), error.to_string())));
            }
        }
    }
}

async fn write_batch(ctx: &WriterContext, ops: &[Enqueue]) -> Result<(), sqlx::Error> {
    let mut queues = Vec::with_capacity(ops.len());
    let mut types = Vec::with_capacity(ops.len());
    let mut ids = Vec::with_capacity(ops.len());
    let mut headers = Vec::with_capacity(ops.len());
    let mut bodies = Vec::with_capacity(ops.len());
    let mut visible = Vec::with_capacity(ops.len());
    let mut declare: Vec<&str> = Vec::new();
    {
        let declared = ctx.declared.lock().unwrap_or_else(|p| p.into_inner());
        for op in ops {
            queues.push(op.queue.as_deref());
            types.push(op.message_type.as_str());
            ids.push(op.message_id.as_str());
            headers.push(op.headers.as_str());
            bodies.push(op.body.as_ref());
            visible.push(op.visible_at);
            if let Some(q) = op.queue.as_deref().filter(|q| !declared.contains(*q) && !declare.contains(q)) {
                declare.push(q);
            }
        }
    }
    let rows = crate::reuse::reusing!(ctx.reuse, |conn| query(&ctx.sql.enqueue)
        .bind(&queues)
        .bind(&types)
        .bind(&ids)
        .bind(&headers)
        .bind(&bodies)
        .bind(&visible)
        .bind(&declare)
        .fetch_all(conn))?;
    for row in rows {
        let queue: String = row.try_get(0)?;
        ctx.wakers.announce(queue);
    }
    if !declare.is_empty() {
        let mut declared = ctx.declared.lock().unwrap_or_else(|p| p.into_inner());
        declared.extend(declare.into_iter().map(str::to_owned));
    }
    Ok(())
}
