//! Which queues each message type is published to.
//!
//! Each binding is a subject `<ns>.bind.<type>.<queue>` holding one message in the stream `<ns>_bindings`, so the
//! stream's subject list is the binding table every process can read. Every process caches it; changes reach the
//! caches at once through a plain NATS subscription on the binding subjects (a bind is published there, an unbind
//! announced on `<ns>.unbind.<type>.<queue>`), and a full reload every few seconds heals anything missed during a
//! reconnect.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use courier_core::Result;
use futures::{StreamExt, TryStreamExt};

use crate::names::{Names, decode_token};
use crate::options::{NatsOptions, Storage};
use crate::transport::{get_or_create_stream, js_error};

type Table = HashMap<String, BTreeSet<String>>;

/// How often the whole table is reloaded.
const RELOAD: Duration = Duration::from_secs(5);

/// The bindings of one namespace.
#[derive(Debug)]
pub(crate) struct Bindings {
    js: jetstream::Context,
    stream: stream::Stream,
    table: Arc<RwLock<Cache>>,
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The cached table, with each type's queues ready to hand out.
#[derive(Debug, Default)]
struct Cache {
    table: Table,
    lists: HashMap<String, Arc<[String]>>,
}

impl Cache {
    fn set(&mut self, message_type: &str, queue: &str, bound: bool) {
        let queues = self.table.entry(message_type.to_owned()).or_default();
        let changed = if bound { queues.insert(queue.to_owned()) } else { queues.remove(queue) };
        if changed {
            let list: Arc<[String]> = queues.iter().cloned().collect();
            self.lists.insert(message_type.to_owned(), list);
        }
    }

    fn replace(&mut self, table: Table) {
        self.lists = table.iter().map(|(t, q)| (t.clone(), q.iter().cloned().collect())).collect();
        self.table = table;
    }
}

/// The (message type, queue) of a binding subject's tail `<type>.<queue>`.
fn parse(tail: &str) -> Option<(String, String)> {
    let (t, q) = tail.split_once('.')?;
    Some((decode_token(t)?, decode_token(q)?))
}

impl Drop for Bindings {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Bindings {
    /// Opens (creating if needed) the bindings stream, loads every binding and starts following changes.
    pub(crate) async fn open(js: &jetstream::Context, names: &Names, options: &NatsOptions) -> Result<Self> {
        let stream = get_or_create_stream(
            js,
            stream::Config {
                name: names.bindings_stream(),
                description: Some(format!("Courier bindings (message type -> queue) of '{}'", names.namespace)),
                subjects: vec![format!("{}>", names.bind_prefix())],
                max_messages_per_subject: 1,
                storage: match options.storage {
                    Storage::File => stream::StorageType::File,
                    Storage::Memory => stream::StorageType::Memory,
                },
                num_replicas: options.replicas,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| js_error("cannot create the bindings stream", e))?;
        let bindings = Self { js: js.clone(), stream, table: Arc::default(), watcher: Mutex::new(None) };
        // Subscribe before loading, so no change between the two is missed.
        let client = js.client();
        let live = client
            .subscribe(format!("{}>", names.bind_prefix()))
            .await
            .map_err(|e| js_error("cannot follow the bindings", e))?;
        let gone = client
            .subscribe(format!("{}>", names.unbind_prefix()))
            .await
            .map_err(|e| js_error("cannot follow the bindings", e))?;
        let table = load(&bindings.stream, names).await?;
        bindings.table.write().unwrap_or_else(|p| p.into_inner()).replace(table);
        let task = tokio::spawn(follow(bindings.stream.clone(), names.clone(), bindings.table.clone(), live, gone));
        *bindings.watcher.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        Ok(bindings)
    }

    /// Stops watching.
    pub(crate) fn stop(&self) {
        if let Some(task) = self.watcher.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }

    /// The queues bound to a message type.
    pub(crate) fn queues(&self, message_type: &str) -> Arc<[String]> {
        let cache = self.table.read().unwrap_or_else(|p| p.into_inner());
        cache.lists.get(message_type).cloned().unwrap_or_else(|| Arc::from(Vec::new()))
    }

    /// Records a binding in the stream (if this process does not know it yet) and in the cache.
    pub(crate) async fn bind(&self, names: &Names, queue: &str, message_type: &str) -> Result<()> {
        let known = self
            .table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .table
            .get(message_type)
            .is_some_and(|q| q.contains(queue));
        if known {
            return Ok(());
        }
        let subject = names.bind_subject(message_type, queue);
        let ack = self
            .js
            .publish(subject, Bytes::from(queue.to_owned()))
            .await
            .map_err(|e| js_error(&format!("cannot bind '{message_type}' to queue '{queue}'"), e))?;
        ack.await.map_err(|e| js_error(&format!("cannot bind '{message_type}' to queue '{queue}'"), e))?;
        self.table.write().unwrap_or_else(|p| p.into_inner()).set(message_type, queue, true);
        Ok(())
    }

    /// Removes every binding of a queue.
    pub(crate) async fn unbind_queue(&self, names: &Names, queue: &str) -> Result<()> {
        let table = load(&self.stream, names).await?;
        for (message_type, queues) in table {
            if !queues.contains(queue) {
                continue;
            }
            self.stream
                .purge()
                .filter(names.bind_subject(&message_type, queue))
                .await
                .map_err(|e| js_error(&format!("cannot unbind '{message_type}' from queue '{queue}'"), e))?;
            let announce = names.unbind_subject(&message_type, queue);
            if let Err(e) = self.js.client().publish(announce, Bytes::new()).await {
                tracing::debug!(error = %e, "could not announce an unbind; other processes reload soon");
            }
            self.table.write().unwrap_or_else(|p| p.into_inner()).set(&message_type, queue, false);
        }
        Ok(())
    }
}

/// Reads the whole table from the stream's subjects.
async fn load(stream: &stream::Stream, names: &Names) -> Result<Table> {
    let prefix = names.bind_prefix();
    let mut info = stream
        .info_builder()
        .subjects(format!("{prefix}>"))
        .fetch()
        .await
        .map_err(|e| js_error("cannot read the bindings", e))?;
    let mut table = Table::new();
    while let Some((subject, _)) = info.try_next().await.map_err(|e| js_error("cannot read the bindings", e))? {
        if let Some((message_type, queue)) = subject.strip_prefix(&prefix).and_then(parse) {
            table.entry(message_type).or_default().insert(queue);
        }
    }
    Ok(table)
}

/// Applies binds and unbinds announced by any process, and reloads the table now and then, until aborted.
async fn follow(
    stream: stream::Stream,
    names: Names,
    table: Arc<RwLock<Cache>>,
    mut live: async_nats::Subscriber,
    mut gone: async_nats::Subscriber,
) {
    let (bind_prefix, unbind_prefix) = (names.bind_prefix(), names.unbind_prefix());
    let mut reload = tokio::time::interval(RELOAD);
    reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    reload.tick().await;
    loop {
        tokio::select! {
            Some(message) = live.next() => {
                if let Some((t, q)) = message.subject.as_str().strip_prefix(&bind_prefix).and_then(parse) {
                    table.write().unwrap_or_else(|p| p.into_inner()).set(&t, &q, true);
                }
            }
            Some(message) = gone.next() => {
                if let Some((t, q)) = message.subject.as_str().strip_prefix(&unbind_prefix).and_then(parse) {
                    table.write().unwrap_or_else(|p| p.into_inner()).set(&t, &q, false);
                }
            }
            _ = reload.tick() => match load(&stream, &names).await {
                Ok(fresh) => table.write().unwrap_or_else(|p| p.into_inner()).replace(fresh),
                Err(e) => tracing::debug!(error = %e, "cannot reload the bindings; keeping the cached ones"),
            },
        }
    }
}
