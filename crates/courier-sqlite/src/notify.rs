//! In-process wake-ups: a consumer waiting on an empty queue is woken as soon as this process commits a message
//! for it. Messages written by other processes are found by polling.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// One [`Notify`] per queue, shared by the writer and the subscriptions of a process.
#[derive(Debug, Clone, Default)]
pub(crate) struct Wakers {
    by_queue: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

impl Wakers {
    /// The notifier of `queue`.
    pub(crate) fn get(&self, queue: &str) -> Arc<Notify> {
        let mut map = self.by_queue.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(queue.to_owned()).or_default().clone()
    }

    /// Wakes every waiter on these queues.
    pub(crate) fn wake(&self, queues: HashSet<String>) {
        if queues.is_empty() {
            return;
        }
        let map = self.by_queue.lock().unwrap_or_else(|p| p.into_inner());
        for q in queues {
            if let Some(n) = map.get(&q) {
                n.notify_waiters();
            }
        }
    }
}
