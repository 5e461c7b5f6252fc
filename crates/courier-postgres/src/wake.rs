//! Waking idle consumers. Every write that makes a message available notifies the channel `<schema>_wake` with
//! the queue's name; one `LISTEN` connection per transport turns notifications into in-process wake-ups.
//!
//! Retries, releases and replays notify in their own statement. Publishes do not: PostgreSQL serialises the
//! commits of transactions that `NOTIFY` (a lock held across the WAL flush), which capped concurrent publish
//! batches at one commit at a time. Instead, after a publish batch commits, its queues are *announced*: waiters in
//! this process are woken at once, and one notifier task per transport sends the notifications for every queue
//! announced since its last statement (so notifications are coalesced, and at most one notifying commit runs).
//! Notifying statements start at least `notify_interval` apart: the first after a quiet spell goes at once, the
//! queues announced within the interval go together at its end. Without the spacing, a busy publisher ran about
//! one notifying commit per publish batch, each as costly on the server as the batch's own insert.
//! A process that dies between the commit and the notification leaves other processes' consumers to find the
//! message at their next recheck. While that connection is down, consumers poll at the
//! poll interval, and every consumer is woken when it comes back (notifications sent meanwhile are lost).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;

use crate::schema::{Sql, query};

/// One [`Notify`] per queue, shared by the listener and the subscriptions of a transport.
#[derive(Debug, Default)]
pub(crate) struct Wakers {
    by_queue: Mutex<HashMap<String, Arc<Notify>>>,
    /// Whether the LISTEN connection is up (else consumers poll).
    listening: AtomicBool,
    /// Queues written to and not yet notified.
    pending: Mutex<BTreeSet<String>>,
    announced: Notify,
}

impl Wakers {
    /// The notifier of `queue`.
    pub(crate) fn get(&self, queue: &str) -> Arc<Notify> {
        let mut map = self.by_queue.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(queue.to_owned()).or_default().clone()
    }

    /// Wakes every waiter on `queue`.
    pub(crate) fn wake(&self, queue: &str) {
        let map = self.by_queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get(queue) {
            n.notify_waiters();
        }
    }

    /// A message was committed on `queue`: wakes this process's waiters and has the notifier tell other processes.
    pub(crate) fn announce(&self, queue: String) {
        self.wake(&queue);
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(queue);
        self.announced.notify_one();
    }

    /// The queues announced and not yet notified, forgotten here.
    fn take_pending(&self) -> Vec<String> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner())).into_iter().collect()
    }

    /// Wakes every waiter on every queue (after notifications may have been lost).
    pub(crate) fn wake_all(&self) {
        let map = self.by_queue.lock().unwrap_or_else(|p| p.into_inner());
        for n in map.values() {
            n.notify_waiters();
        }
    }

    /// Whether notifications are being received.
    pub(crate) fn listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    fn set_listening(&self, up: bool) {
        if self.listening.swap(up, Ordering::AcqRel) != up {
            if up {
                tracing::debug!("PostgreSQL LISTEN connection up; consumers wait for notifications");
            } else {
                tracing::warn!("PostgreSQL LISTEN connection lost; consumers poll until it is back");
            }
        }
        self.wake_all();
    }
}

/// Keeps a LISTEN connection on `channel` and wakes the queues named in notifications. Runs until aborted.
pub(crate) async fn listen(pool: PgPool, channel: String, wakers: Arc<Wakers>, retry_every: Duration) {
    loop {
        match connect(&pool, &channel).await {
            Ok(mut listener) => {
                wakers.set_listening(true);
                loop {
                    match listener.try_recv().await {
                        Ok(Some(notification)) => wakers.wake(notification.payload()),
                        // The connection was lost and re-established: notifications in between are gone.
                        Ok(None) => wakers.wake_all(),
                        Err(e) => {
                            tracing::debug!(error = %e, "PostgreSQL LISTEN connection failed");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot open the PostgreSQL LISTEN connection"),
        }
        wakers.set_listening(false);
        tokio::time::sleep(retry_every).await;
    }
}

/// Sends one notification per announced queue, coalescing announcements made while a statement runs and for
/// `interval` after it started. Runs until aborted.
pub(crate) async fn notify(reuse: Arc<crate::reuse::Reuse>, sql: Arc<Sql>, wakers: Arc<Wakers>, interval: Duration) {
    loop {
        wakers.announced.notified().await;
        let started = tokio::time::Instant::now();
        let queues = wakers.take_pending();
        if queues.is_empty() {
            continue;
        }
        send(&reuse, &sql, &queues).await;
        // Announcements made meanwhile stay pending (and `announced` keeps its permit) until the next round.
        tokio::time::sleep_until(started + interval).await;
    }
}

/// Notifies other processes of `queues`.
async fn send(reuse: &crate::reuse::Reuse, sql: &Sql, queues: &[String]) {
    let sent = crate::reuse::reusing!(reuse, |conn| query(&sql.notify).bind(&sql.channel).bind(queues).execute(conn));
    if let Err(e) = sent {
        tracing::debug!(error = %e, "could not notify other processes; their consumers will find the messages");
    }
}

/// When the transport is dropped, with its notifier waiting out an interval: sends what is still announced (in a
/// task of its own, best effort), so other processes' consumers need not wait for their recheck.
pub(crate) fn flush_on_drop(reuse: Arc<crate::reuse::Reuse>, sql: Arc<Sql>, wakers: &Wakers) {
    let queues = wakers.take_pending();
    if let (false, Ok(runtime)) = (queues.is_empty(), tokio::runtime::Handle::try_current()) {
        runtime.spawn(async move { send(&reuse, &sql, &queues).await });
    }
}

async fn connect(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    Ok(listener)
}
