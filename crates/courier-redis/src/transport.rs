//! [`RedisTransport`]: queues as Redis streams with one consumer group each.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use courier_core::{Engine, Error, RawMessage, Result, Subscription, SubscriptionOptions, Transport, now_millis};
use redis::{Client, FromRedisValue, ScriptInvocation, Value};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use crate::conn::{Conn, is_dropped, to_error};
use crate::entry::{Keys, array, encode_headers};
use crate::options::{RedisOptions, redact};
use crate::scripts::Scripts;
use crate::subscription::RedisSubscription;

/// The Redis Streams transport: each queue is a stream with one consumer group, fan-out bindings are sets,
/// delayed messages wait in a sorted set, dead letters go to a stream per queue.
///
/// See the [crate docs](crate) for the delivery guarantees, ordering and limitations.
///
/// ```no_run
/// # async fn demo() -> courier_core::Result<()> {
/// use courier_redis::{RedisOptions, RedisTransport};
/// let transport = RedisTransport::connect("redis://127.0.0.1:6379", RedisOptions::default()).await?;
/// let engine = transport.into_engine();
/// # let _ = engine; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RedisTransport {
    pub(crate) core: Arc<Core>,
}

/// What the transport, its subscriptions and their ackers share.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) client: Client,
    pub(crate) conn: Arc<Conn>,
    pub(crate) keys: Keys,
    pub(crate) scripts: Arc<Scripts>,
    pub(crate) options: RedisOptions,
    pub(crate) pump_wake: Arc<Notify>,
    pub(crate) name: String,
    /// Acknowledgement batchers of dropped subscriptions still sending what was queued (see [`Transport::flush`]).
    pub(crate) draining: std::sync::atomic::AtomicUsize,
    /// Notified when a draining batcher ends.
    pub(crate) drained: Notify,
    subscriptions: AtomicU64,
    pump: tokio::task::JoinHandle<()>,
    /// One queue per publishing task; publishes take turns (see [`PUBLISHING_TASKS`]).
    publishes: Vec<mpsc::Sender<Publish>>,
    next_publisher: AtomicUsize,
}

impl Drop for Core {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl Core {
    /// Runs a script on the shared connection.
    pub(crate) async fn invoke<T: FromRedisValue>(&self, what: &str, inv: &ScriptInvocation<'_>) -> Result<T> {
        invoke(&self.conn, what, inv).await
    }

    /// A name for a new subscription's consumer and connection.
    pub(crate) fn next_consumer_name(&self) -> String {
        format!("{}-sub{}", self.name, self.subscriptions.fetch_add(1, Ordering::Relaxed))
    }
}

/// Runs a script on `conn`. If the connection turns out to be broken (killed, server restarted), runs it once
/// more on a fresh connection: every script is safe to repeat (settling checks ownership; a repeated publish is
/// a duplicate, which at-least-once delivery allows).
pub(crate) async fn invoke<T: FromRedisValue>(conn: &Conn, what: &str, inv: &ScriptInvocation<'_>) -> Result<T> {
    let mut c = conn.get().await.map_err(|e| to_error(what, e))?;
    let result = match inv.invoke_async(&mut c).await {
        Err(e) if is_dropped(&e) => {
            let _ = conn.check::<()>(Err(e));
            c = conn.get().await.map_err(|e| to_error(what, e))?;
            inv.invoke_async(&mut c).await
        }
        result => result,
    };
    conn.check(result).map_err(|e| to_error(what, e))
}

impl RedisTransport {
    /// Connects to the Redis server at `url` (`redis://[user:password@]host:port[/db]`; Courier's own settings
    /// come from `options`, not from the URL's query). Fails with a connection error if the server cannot be
    /// reached.
    pub async fn connect(url: &str, options: RedisOptions) -> Result<Self> {
        let shown = redact(url);
        let client = Client::open(url).map_err(|e| {
            Error::config(format!("invalid Redis URL '{shown}': write it like 'redis://127.0.0.1:6379'")).with_source(e)
        })?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("courier-{}-{}", sanitize(&options.prefix), &id[..12]);
        let conn = Arc::new(Conn::new(client.clone(), name.clone(), Some(options.response_timeout)));
        conn.get().await.map_err(|e| {
            Error::connection(format!(
                "cannot connect to Redis at '{shown}': check that the server is running and the URL's host, port \
                 and password are right (start one with: redis-server --port 6379)"
            ))
            .with_source(e)
        })?;
        let keys = Keys { prefix: options.prefix.clone() };
        let scripts = Arc::new(Scripts::new());
        let pump_wake = Arc::new(Notify::new());
        let pump =
            tokio::spawn(pump(conn.clone(), scripts.clone(), keys.clone(), options.pump_interval, pump_wake.clone()));
        let publishes = (0..PUBLISHING_TASKS)
            .map(|_| {
                let (publishes, queued) = mpsc::channel(PUBLISH_BATCH);
                tokio::spawn(publish_batches(conn.clone(), scripts.clone(), keys.clone(), queued));
                publishes
            })
            .collect();
        let subscriptions = AtomicU64::new(0);
        let (draining, drained) = (Default::default(), Notify::new());
        let core = Core {
            client,
            conn,
            keys,
            scripts,
            options,
            pump_wake,
            name,
            draining,
            drained,
            subscriptions,
            pump,
            publishes,
            next_publisher: AtomicUsize::new(0),
        };
        Ok(Self { core: Arc::new(core) })
    }

    /// This transport as an [`Engine`] (transport and admin).
    pub fn into_engine(self) -> Engine {
        Engine::new(Arc::new(self))
    }

    /// The key prefix (namespace) of this transport.
    pub fn prefix(&self) -> &str {
        &self.core.keys.prefix
    }

    /// The `CLIENT SETNAME` of this transport's connections: the shared one has exactly this name, each
    /// subscription's blocking-read connection this name followed by `-sub<n>`. Find them with `CLIENT LIST`.
    pub fn connection_name(&self) -> &str {
        &self.core.name
    }

    async fn schedule(&self, target: Target<'_>, message: &RawMessage, at: DateTime<Utc>) -> Result<()> {
        let headers = encode_headers(&message.headers)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (mode, name) = match target {
            Target::Queue(q) => ("q", q),
            Target::Type(t) => ("t", t),
        };
        let mut inv = self.core.scripts.schedule.prepare_invoke();
        inv.arg(&self.core.keys.prefix)
            .arg(at.timestamp_millis())
            .arg(&id)
            .arg(headers)
            .arg(message.body.as_ref())
            .arg(mode)
            .arg(name);
        self.core.invoke::<i64>("scheduling a message", &inv).await?;
        self.core.pump_wake.notify_one();
        Ok(())
    }
}

enum Target<'a> {
    Queue(&'a str),
    Type(&'a str),
}

fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).take(40).collect()
}

fn is_future(at: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    at.filter(|t| t.timestamp_millis() > now_millis())
}

#[async_trait]
impl Transport for RedisTransport {
    async fn declare_queue(&self, queue: &str) -> Result<()> {
        let mut inv = self.core.scripts.declare.prepare_invoke();
        inv.arg(&self.core.keys.prefix).arg(queue).arg("1");
        self.core.invoke::<i64>(&format!("declaring queue '{queue}'"), &inv).await.map(drop)
    }

    async fn bind(&self, queue: &str, message_type: &str) -> Result<()> {
        let mut inv = self.core.scripts.declare.prepare_invoke();
        inv.arg(&self.core.keys.prefix).arg(queue).arg("1").arg(message_type);
        self.core.invoke::<i64>(&format!("binding queue '{queue}' to '{message_type}'"), &inv).await.map(drop)
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        let mut inv = self.core.scripts.delete_queue.prepare_invoke();
        inv.arg(&self.core.keys.prefix).arg(queue);
        self.core.invoke::<i64>(&format!("deleting queue '{queue}'"), &inv).await.map(drop)
    }

    async fn publish(&self, mut message: RawMessage, deliver_at: Option<DateTime<Utc>>) -> Result<()> {
        if let Some(at) = is_future(deliver_at) {
            let message_type = message.message_type().unwrap_or_default().to_owned();
            // Boxed: scheduling is rare, and its future would make every publish's as large as its own (about
            // 2.5 KB, touched cold on every publish).
            return Box::pin(self.schedule(Target::Type(&message_type), &message, at)).await;
        }
        let (reply, replied) = oneshot::channel();
        let headers = encode_headers(&message.headers)?;
        // Stored in `headers` already: moved out rather than copied.
        let message_type = message.headers.remove(courier_core::attr::TYPE).unwrap_or_default();
        let publish = Publish { message_type, headers, body: message.body, reply };
        let gone = || Error::engine("publishing: the transport is shutting down");
        let turn = self.core.next_publisher.fetch_add(1, Ordering::Relaxed) % self.core.publishes.len();
        self.core.publishes[turn].send(publish).await.map_err(|_| gone())?;
        replied.await.map_err(|_| gone())?
    }

    async fn send(&self, queue: &str, message: RawMessage, deliver_at: Option<DateTime<Utc>>) -> Result<()> {
        if let Some(at) = is_future(deliver_at) {
            return Box::pin(self.schedule(Target::Queue(queue), &message, at)).await;
        }
        let headers = encode_headers(&message.headers)?;
        let mut inv = self.core.scripts.send.prepare_invoke();
        inv.arg(&self.core.keys.prefix).arg(queue).arg(headers).arg(message.body.as_ref());
        self.core.invoke::<i64>(&format!("sending to queue '{queue}'"), &inv).await.map(drop)
    }

    async fn subscribe(&self, queue: &str, options: SubscriptionOptions) -> Result<Box<dyn Subscription>> {
        self.declare_queue(queue).await?;
        Ok(Box::new(RedisSubscription::new(self.core.clone(), queue, options)))
    }

    /// Acknowledgements are sent in batches in the background; this waits until the batchers of subscriptions
    /// already dropped have sent everything their deliveries queued.
    async fn flush(&self) -> Result<()> {
        loop {
            let drained = self.core.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.core.draining.load(Ordering::SeqCst) == 0 {
                return Ok(());
            }
            drained.await;
        }
    }
}

/// Publishing tasks, each with its own batches and its own copy of the bindings; publishes take turns. A task
/// sends one batch at a time, and a publish that reaches it while a batch is on its way waits for that round trip
/// before its own starts. With two tasks, at 5,000 msg/s a publish waited there 110-130 us at the median and
/// 500 us at p99 (timed at each step of a publish), which put Courier's publish-to-handle p99 at 1.2-1.7x the raw
/// client's; with eight, a publish almost always finds its task idle (p50 0 us, p99 230-270 us of waiting) and
/// p50 / p99 fell from 0.43-0.46 / 1.00-1.31 ms to 0.32 / 0.70-0.81 ms, the raw client's figures, while the
/// all-out run kept its throughput (62.9-70.9k against 64.4-72.1k msg/s). Under load each task batches what queued
/// for it. Each task keeps the binding guarantees on its own, and a publisher waits for each publish, so its
/// publishes keep their order whichever task takes them.
const PUBLISHING_TASKS: usize = 8;

/// The bytes of an `XADD`'s fixed arguments (`XADD`, `NOMKSTREAM`, `*`, `h`, `b`).
const XADD_SIZE: usize = 4 + 10 + 1 + 1 + 1;

/// The most publishes sent in one script run, and about the most bytes (a batch stops growing past it).
const PUBLISH_BATCH: usize = 256;
const PUBLISH_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// A publish waiting for its batch.
struct Publish {
    message_type: String,
    headers: Vec<u8>,
    body: Bytes,
    reply: oneshot::Sender<Result<()>>,
}

/// Publishes in batches: whatever publishers queued while the last batch was in flight goes in one transaction
/// (one round trip, not one each). A lone publish goes at once, so nothing waits for a batch to fill. Each
/// publisher hears back when its batch is on the server, or its error.
async fn publish_batches(conn: Arc<Conn>, scripts: Arc<Scripts>, keys: Keys, mut queued: mpsc::Receiver<Publish>) {
    let mut batch: Vec<Publish> = Vec::with_capacity(PUBLISH_BATCH);
    let mut bindings = Bindings::new(keys);
    while let Some(first) = queued.recv().await {
        let mut bytes = first.body.len() + first.headers.len();
        batch.push(first);
        while batch.len() < PUBLISH_BATCH && bytes < PUBLISH_BATCH_BYTES {
            let Ok(next) = queued.try_recv() else { break };
            bytes += next.body.len() + next.headers.len();
            batch.push(next);
        }
        match bindings.publish(&conn, &scripts, &batch).await {
            Ok(()) => batch.drain(..).for_each(|p| drop(p.reply.send(Ok(())))),
            Err(e) => {
                for publish in batch.drain(..) {
                    let _ = publish.reply.send(Err(Error::new(e.kind(), e.to_string())));
                }
            }
        }
    }
}

/// The most times one batch is written (again, to the queues some of its messages missed) before giving up.
const BATCH_WRITES: usize = 16;

/// How long bindings once read are used; past it a batch reads them again first (one script run a second for a
/// busy publisher). A safety net only (every change of bindings moves the version, which each batch checks): it
/// bounds how long a change by a process that does not move the version (an older Courier on the same prefix)
/// goes unseen.
const BINDINGS_MAX_AGE: Duration = Duration::from_secs(1);

/// The queues bound to each message type, as this transport last read them, and the bindings version
/// (`<prefix>:bindver`) they were read at. Owned by the publishing task.
///
/// A batch goes in one transaction: `XADD` to each bound queue's stream (`NOMKSTREAM`, so a queue deleted since
/// is not brought back as a stray stream), then `GET` of the version. Every change of bindings (a new binding; a
/// queue with bindings deleted) sets a new version in the same script that changes them, so if the version read
/// with the batch is the one the bindings were read at, the batch went to exactly the queues bound at that
/// moment. Otherwise the bindings are read again, each message is written to the queues it missed and taken back
/// (best effort: `XDEL`) from queues no longer bound, before its publish returns: a queue bound anywhere before a
/// publish starts receives it, as with one script per publish, and the steady state costs the server plain
/// `XADD`s instead of a Lua call per message (a script per batch spent about 2 us a message in Lua, next to
/// 0.7 us for the `XADD` itself). A bound queue whose stream is gone although the bindings did not change (the key
/// deleted by hand, or evicted) is declared again and written to, so no message is dropped for it.
struct Bindings {
    keys: Keys,
    /// `<prefix>:bindver`, read with every batch.
    version_key: String,
    version: Option<String>,
    read_at: Option<Instant>,
    bound: HashMap<String, Arc<[Bound]>>,
}

/// A queue bound to a message type, and its stream's key.
#[derive(Debug, Clone)]
struct Bound {
    queue: String,
    stream: String,
}

/// Where a message of a batch was written: the queue, its stream and the entry id.
#[derive(Debug, Clone)]
struct Written {
    queue: String,
    stream: String,
    id: Option<String>,
}

impl Bindings {
    fn new(keys: Keys) -> Self {
        Self { version_key: keys.bindings_version(), keys, version: None, read_at: None, bound: HashMap::new() }
    }

    /// Forgets what was read and reads the bindings of `types` with their version, in one script.
    async fn refresh(&mut self, conn: &Conn, scripts: &Scripts, types: &[&str]) -> Result<()> {
        let mut inv = scripts.bindings.prepare_invoke();
        inv.arg(&self.keys.prefix);
        for message_type in types {
            inv.arg(*message_type);
        }
        let reply: Value = invoke(conn, "reading bindings", &inv).await?;
        let mut reply = array(reply).into_iter();
        let version = reply.next().and_then(|v| String::from_redis_value(v).ok());
        let lists: Vec<Value> = reply.collect();
        if version.is_none() || lists.len() != types.len() {
            return Err(Error::engine("reading bindings: Redis answered in an unexpected shape; retry the publish"));
        }
        self.bound.clear();
        for (message_type, queues) in types.iter().zip(lists) {
            let queues: Vec<String> = FromRedisValue::from_redis_value(queues).unwrap_or_default();
            let bound = queues.into_iter().map(|queue| Bound { stream: self.keys.stream(&queue), queue }).collect();
            self.bound.insert((*message_type).to_owned(), bound);
        }
        (self.version, self.read_at) = (version, Some(Instant::now()));
        Ok(())
    }

    /// The queues bound to a type read by the last refresh.
    fn of(&self, message_type: &str) -> Result<Arc<[Bound]>> {
        self.bound.get(message_type).cloned().ok_or_else(|| {
            Error::engine(format!("publishing: the bindings of '{message_type}' were not read; retry the publish"))
        })
    }

    /// Appends each message of `batch` to every queue bound to its type.
    async fn publish(&mut self, conn: &Conn, scripts: &Scripts, batch: &[Publish]) -> Result<()> {
        let stale = self.read_at.is_none_or(|at| at.elapsed() > BINDINGS_MAX_AGE);
        if stale || batch.iter().any(|p| !self.bound.contains_key(&p.message_type)) {
            self.refresh(conn, scripts, &types_of(batch)).await?;
        }
        let mut targets = batch.iter().map(|p| self.of(&p.message_type)).collect::<Result<Vec<_>>>()?;
        // Filled only when a batch is written again: where each message was written.
        let mut written: Vec<Vec<Written>> = Vec::new();
        let writes = targets.iter().map(|t| t.len()).sum::<usize>();
        for _ in 0..BATCH_WRITES {
            let mut pipe = redis::Pipeline::with_capacity(writes + 1);
            pipe.atomic();
            for (publish, queues) in batch.iter().zip(&targets) {
                for bound in queues.iter() {
                    // Sized up front: built argument by argument, a command's buffers grew four or five times.
                    let size = XADD_SIZE + bound.stream.len() + publish.headers.len() + publish.body.len();
                    let mut xadd = redis::Cmd::with_capacity(8, size);
                    xadd.arg("XADD")
                        .arg(&bound.stream)
                        .arg("NOMKSTREAM")
                        .arg("*")
                        .arg("h")
                        .arg(publish.headers.as_slice())
                        .arg("b")
                        .arg(publish.body.as_ref());
                    pipe.add_command(xadd);
                }
            }
            pipe.cmd("GET").arg(&self.version_key);
            let mut replies = array(query(conn, &pipe, "publishing").await?);
            if replies.len() != writes + 1 {
                return Err(Error::engine("publishing: Redis answered in an unexpected shape; retry the publish"));
            }
            let version = replies.pop().and_then(|v| String::from_redis_value(v).ok());
            let unchanged = version.is_some() && version == self.version;
            // `XADD ... NOMKSTREAM` answers nil where the stream does not exist.
            if unchanged && !replies.iter().any(|r| matches!(r, Value::Nil)) {
                return Ok(());
            }
            if written.is_empty() {
                written = vec![Vec::new(); batch.len()];
            }
            let (mut replies, mut vanished) = (replies.into_iter(), Vec::new());
            for (done, queues) in written.iter_mut().zip(&targets) {
                for bound in queues.iter() {
                    match replies.next() {
                        Some(Value::Nil) | None => vanished.push(bound.queue.clone()),
                        Some(id) => {
                            let id = String::from_redis_value(id).ok();
                            done.push(Written { queue: bound.queue.clone(), stream: bound.stream.clone(), id });
                        }
                    }
                }
            }
            if unchanged {
                // Still bound, and no change of bindings: the stream went some other way. Declare the queue
                // again (stream and consumer group), as a subscriber would, unless the bindings moved meanwhile.
                vanished.sort_unstable();
                vanished.dedup();
                for queue in vanished {
                    let mut inv = scripts.revive.prepare_invoke();
                    inv.arg(&self.keys.prefix).arg(&queue).arg(self.version.as_deref().unwrap_or_default());
                    invoke::<i64>(conn, &format!("declaring queue '{queue}' again"), &inv).await?;
                }
            } else {
                self.refresh(conn, scripts, &types_of(batch)).await?;
                self.take_back_strays(conn, batch, &mut written).await?;
            }
            targets = batch
                .iter()
                .zip(&written)
                .map(|(p, done)| {
                    let bound = self.of(&p.message_type)?;
                    Ok(bound.iter().filter(|b| !done.iter().any(|w| w.queue == b.queue)).cloned().collect())
                })
                .collect::<Result<Vec<Arc<[Bound]>>>>()?;
            if targets.iter().all(|t| t.is_empty()) {
                return Ok(());
            }
        }
        Err(Error::engine(format!(
            "publishing: {BATCH_WRITES} writes of one batch did not reach every bound queue (the bindings kept \
             changing); retry the publish"
        )))
    }

    /// Deletes the entries a batch wrote to queues no longer bound to their message's type (unbound while the
    /// batch was on its way), so such a queue sees the publish as one made after it was unbound. Best effort: a
    /// consumer may have read an entry already.
    async fn take_back_strays(&self, conn: &Conn, batch: &[Publish], written: &mut [Vec<Written>]) -> Result<()> {
        let mut pipe = redis::pipe();
        let mut strays = 0;
        for (publish, done) in batch.iter().zip(written.iter_mut()) {
            let bound = self.of(&publish.message_type)?;
            done.retain(|w| {
                let still_bound = bound.iter().any(|b| b.queue == w.queue);
                if let (false, Some(id)) = (still_bound, &w.id) {
                    pipe.cmd("XDEL").arg(&w.stream).arg(id).ignore();
                    strays += 1;
                }
                still_bound
            });
        }
        if strays > 0
            && let Err(e) = query(conn, &pipe, "taking back messages from queues unbound meanwhile").await
        {
            tracing::warn!(error = %e, messages = strays, "messages published as their queue was unbound stay in it");
        }
        Ok(())
    }
}

/// The distinct message types of a batch.
fn types_of(batch: &[Publish]) -> Vec<&str> {
    let mut types: Vec<&str> = batch.iter().map(|p| p.message_type.as_str()).collect();
    types.sort_unstable();
    types.dedup();
    types
}

/// Runs a pipeline on `conn`, once more on a fresh connection if the connection turns out to be broken.
async fn query(conn: &Conn, pipe: &redis::Pipeline, what: &str) -> Result<Value> {
    let mut c = conn.get().await.map_err(|e| to_error(what, e))?;
    let result = match pipe.query_async::<Value>(&mut c).await {
        Err(e) if is_dropped(&e) => {
            let _ = conn.check::<()>(Err(e));
            c = conn.get().await.map_err(|e| to_error(what, e))?;
            pipe.query_async(&mut c).await
        }
        result => result,
    };
    conn.check(result).map_err(|e| to_error(what, e))
}

/// Moves due delayed messages to their queues. Several processes may run it on one prefix: each move is atomic.
async fn pump(conn: Arc<Conn>, scripts: Arc<Scripts>, keys: Keys, interval: Duration, wake: Arc<Notify>) {
    const LIMIT: i64 = 512;
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut inv = scripts.pump.prepare_invoke();
        inv.arg(&keys.prefix).arg(now_millis()).arg(LIMIT);
        let mut wait = interval;
        match invoke::<(i64, i64)>(&conn, "moving due delayed messages", &inv).await {
            Ok((moved, _)) if moved >= LIMIT => continue,
            Ok((_, next)) if next >= 0 => {
                let until = Duration::from_millis((next - now_millis()).max(0) as u64);
                wait = wait.min(until);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "the delayed-message pump failed; retrying"),
        }
        if !wait.is_zero() {
            let _ = tokio::time::timeout(wait, notified).await;
        }
    }
}
