//! [`SqliteTransport`]: queues in one SQLite file, shared by every process that opens it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use courier_core::{
    Acker, Admin, Annotations, DeadLetter, DeadLetterFilter, Delivery, Engine, Error, Headers, QueueStats, RawMessage,
    Result, Subscription, SubscriptionOptions, Transport, now_millis,
};
use rusqlite::{Connection, params_from_iter};
use tokio::sync::{mpsc, oneshot};

use crate::notify::Wakers;
use crate::options::SqliteOptions;
use crate::schema::{SCHEMA, configure, retry_busy};
use crate::writer::{self, Op, Target};

/// The embedded durable transport: queues, delayed messages and dead letters in one SQLite file (WAL mode).
///
/// - **Durable**: a publish returns after its transaction committed (`synchronous=FULL` by default), so it survives
///   `kill -9` of any process and, with FULL, power loss.
/// - **Fast**: one writer thread per process groups concurrent operations into one transaction (group commit).
/// - **Multi-process**: several processes can open the same file; consumers compete for messages through leases.
///   A message taken by a process that dies becomes visible again after the consumer's visibility timeout; live
///   consumers extend their leases while handlers run.
/// - **Ordering**: first-in first-out per queue, except for retries and competing consumers.
///
/// ```no_run
/// # async fn demo() -> courier_core::Result<()> {
/// use courier_sqlite::{SqliteOptions, SqliteTransport};
/// let engine = SqliteTransport::open("./data/courier.db", SqliteOptions::default()).await?.into_engine();
/// # let _ = engine; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteTransport {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    options: SqliteOptions,
    writer: mpsc::Sender<Op>,
    reader: Mutex<Connection>,
    wakers: Wakers,
}

fn open_error(path: &Path, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::connection(format!(
        "cannot open the SQLite queue file '{}': check that the directory exists and is writable",
        path.display()
    ))
    .with_source(e)
}

impl SqliteTransport {
    /// Opens (creating if needed, with parent directories) the queue file at `path`.
    pub async fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let opened = {
            let (path, display_path) = (path.clone(), path.clone());
            let options = options.clone();
            tokio::task::spawn_blocking(move || -> Result<(Connection, Connection)> {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| open_error(&path, e))?;
                }
                let writer = Connection::open(&path).map_err(|e| open_error(&path, e))?;
                retry_busy(options.busy_timeout, || {
                    configure(&writer, &options)?;
                    writer.execute_batch(SCHEMA)
                })
                .map_err(|e| open_error(&path, e))?;
                let reader = Connection::open(&path).map_err(|e| open_error(&path, e))?;
                retry_busy(options.busy_timeout, || configure(&reader, &options)).map_err(|e| open_error(&path, e))?;
                Ok((writer, reader))
            })
            .await
            .map_err(|e| Error::engine(format!("opening '{}' panicked: {e}", display_path.display())))??
        };
        let (writer_conn, reader) = opened;
        let (tx, rx) = mpsc::channel(options.max_batch * 4);
        let wakers = Wakers::default();
        let max_batch = options.max_batch;
        let thread_wakers = wakers.clone();
        std::thread::Builder::new()
            .name("courier-sqlite-writer".into())
            .spawn(move || writer::run(writer_conn, rx, max_batch, thread_wakers))
            .map_err(|e| Error::engine("cannot start the SQLite writer thread").with_source(e))?;
        Ok(Self { shared: Arc::new(Shared { path, options, writer: tx, reader: Mutex::new(reader), wakers }) })
    }

    /// This transport as an [`Engine`].
    pub fn into_engine(self) -> Engine {
        Engine::new(Arc::new(self))
    }

    /// The file this transport uses.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Op) -> Result<T> {
        call(&self.shared.writer, make).await
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let conn = shared.reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn).map_err(|e| Error::engine("SQLite query failed").with_source(e))
        })
        .await
        .map_err(|e| Error::engine(format!("SQLite query panicked: {e}")))?
    }

    async fn enqueue(&self, target: Target, message: RawMessage, deliver_at: Option<DateTime<Utc>>) -> Result<()> {
        let message_id = message.id().unwrap_or_default().to_owned();
        let headers = encode_headers(&message.headers)?;
        let visible_at = deliver_at.map_or_else(now_millis, |t| t.timestamp_millis());
        self.call(|reply| Op::Enqueue { target, message_id, headers, body: message.body, visible_at, reply }).await
    }
}

async fn call<T>(writer: &mpsc::Sender<Op>, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Op) -> Result<T> {
    let (tx, rx) = oneshot::channel();
    writer.send(make(tx)).await.map_err(|_| Error::closed("the SQLite writer thread has stopped"))?;
    rx.await.map_err(|_| Error::closed("the SQLite writer thread has stopped"))?
}

fn encode_headers(headers: &Headers) -> Result<String> {
    serde_json::to_string(headers).map_err(|e| Error::engine(format!("cannot store headers: {e}")))
}

fn decode_headers(text: &str) -> Headers {
    // Headers were written by us; if the file was edited by hand and they do not parse, the message still
    // reaches the consumer, which dead-letters it as an invalid envelope.
    serde_json::from_str(text).unwrap_or_default()
}

#[async_trait]
impl Transport for SqliteTransport {
    async fn declare_queue(&self, queue: &str) -> Result<()> {
        let queue = queue.to_owned();
        self.call(|reply| Op::Declare { queue, reply }).await
    }

    async fn bind(&self, queue: &str, message_type: &str) -> Result<()> {
        let (queue, message_type) = (queue.to_owned(), message_type.to_owned());
        self.call(|reply| Op::Bind { queue, message_type, reply }).await
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        let queue = queue.to_owned();
        self.call(|reply| Op::DeleteQueue { queue, reply }).await
    }

    async fn publish(&self, message: RawMessage, deliver_at: Option<DateTime<Utc>>) -> Result<()> {
        let message_type = message.message_type().unwrap_or_default().to_owned();
        self.enqueue(Target::Publish(message_type), message, deliver_at).await
    }

    async fn send(&self, queue: &str, message: RawMessage, deliver_at: Option<DateTime<Utc>>) -> Result<()> {
        self.enqueue(Target::Queue(queue.to_owned()), message, deliver_at).await
    }

    async fn subscribe(&self, queue: &str, options: SubscriptionOptions) -> Result<Box<dyn Subscription>> {
        self.declare_queue(queue).await?;
        let held = Arc::new(Mutex::new(HashMap::new()));
        let visibility = options.visibility_timeout.max(Duration::from_millis(100));
        let renewer = tokio::spawn(renew_leases(self.shared.writer.clone(), held.clone(), visibility));
        Ok(Box::new(SqliteSubscription {
            writer: self.shared.writer.clone(),
            notify: self.shared.wakers.get(queue),
            poll: self.shared.options.poll_interval,
            queue: Arc::from(queue),
            visibility,
            held,
            renewer,
        }))
    }
}

/// Leases held by one subscription: seq -> lease token.
type Held = Arc<Mutex<HashMap<i64, i64>>>;

/// Extends the leases of messages still being handled, so a long handler is not mistaken for a dead one.
async fn renew_leases(writer: mpsc::Sender<Op>, held: Held, visibility: Duration) {
    let mut tick = tokio::time::interval(visibility / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let leases: Vec<(i64, i64)> =
            held.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(s, l)| (*s, *l)).collect();
        if leases.is_empty() {
            continue;
        }
        let until = now_millis() + visibility.as_millis() as i64;
        if writer.send(Op::Extend { leases, until }).await.is_err() {
            return;
        }
    }
}

#[derive(Debug)]
struct SqliteSubscription {
    writer: mpsc::Sender<Op>,
    notify: Arc<tokio::sync::Notify>,
    poll: Duration,
    queue: Arc<str>,
    visibility: Duration,
    held: Held,
    renewer: tokio::task::JoinHandle<()>,
}

impl Drop for SqliteSubscription {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

#[async_trait]
impl Subscription for SqliteSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let lease: i64 = rand_lease();
            let lease_until = now_millis() + self.visibility.as_millis() as i64;
            let queue = self.queue.to_string();
            let max = max.max(1);
            let taken = call(&self.writer, |reply| Op::Take { queue, max, lease, lease_until, reply }).await?;
            if !taken.rows.is_empty() {
                let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
                return Ok(taken
                    .rows
                    .into_iter()
                    .map(|row| {
                        held.insert(row.seq, lease);
                        let acker = SqliteAcker {
                            writer: self.writer.clone(),
                            queue: self.queue.clone(),
                            seq: row.seq,
                            lease,
                            held: self.held.clone(),
                        };
                        let message = RawMessage { headers: decode_headers(&row.headers), body: Bytes::from(row.body) };
                        Delivery::new(self.queue.clone(), message, row.deliveries, Box::new(acker))
                    })
                    .collect());
            }
            let mut wait = self.poll;
            if let Some(next) = taken.next_visible_at {
                let until_next = Duration::from_millis((next - now_millis()).max(1) as u64);
                wait = wait.min(until_next);
            }
            let _ = tokio::time::timeout(wait, notified).await;
        }
    }
}

fn rand_lease() -> i64 {
    loop {
        let l = (uuid::Uuid::new_v4().as_u128() as i64) & i64::MAX;
        if l != 0 {
            return l;
        }
    }
}

#[derive(Debug)]
struct SqliteAcker {
    writer: mpsc::Sender<Op>,
    queue: Arc<str>,
    seq: i64,
    lease: i64,
    held: Held,
}

impl SqliteAcker {
    fn forget(&self) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.seq);
    }
}

#[async_trait]
impl Acker for SqliteAcker {
    async fn ack(&self) -> Result<()> {
        self.forget();
        let (seq, lease) = (self.seq, self.lease);
        call(&self.writer, |reply| Op::Ack { seq, lease, reply: Some(reply) }).await
    }

    async fn retry(&self, delay: Duration, annotations: Annotations) -> Result<()> {
        self.forget();
        let (seq, lease) = (self.seq, self.lease);
        let visible_at = now_millis() + delay.as_millis() as i64;
        call(&self.writer, |reply| Op::Retry { seq, lease, visible_at, annotations, reply }).await
    }

    async fn dead_letter(&self, annotations: Annotations) -> Result<()> {
        self.forget();
        let (seq, lease, queue) = (self.seq, self.lease, self.queue.to_string());
        call(&self.writer, |reply| Op::DeadLetter { seq, lease, queue, annotations, reply }).await
    }

    async fn release(&self) -> Result<()> {
        self.forget();
        let (seq, lease) = (self.seq, self.lease);
        call(&self.writer, |reply| Op::Release { seq, lease, reply: Some(reply) }).await
    }

    fn release_on_drop(&self) {
        self.forget();
        // Best effort: if the channel is full or closed, the lease expires and the message comes back anyway.
        let _ = self.writer.try_send(Op::Release { seq: self.seq, lease: self.lease, reply: None });
    }
}

fn millis_to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_else(Utc::now)
}

#[async_trait]
impl Admin for SqliteTransport {
    async fn queues(&self) -> Result<Vec<QueueStats>> {
        self.read(|conn| {
            let now = now_millis();
            let mut stmt = conn.prepare(
                "SELECT q.name,
                        (SELECT COUNT(*) FROM courier_messages m WHERE m.queue = q.name AND m.visible_at <= ?1),
                        (SELECT COUNT(*) FROM courier_messages m WHERE m.queue = q.name AND m.visible_at > ?1
                                                                    AND m.lease IS NOT NULL),
                        (SELECT COUNT(*) FROM courier_messages m WHERE m.queue = q.name AND m.visible_at > ?1
                                                                    AND m.lease IS NULL),
                        (SELECT COUNT(*) FROM courier_dead_letters d WHERE d.queue = q.name)
                 FROM courier_queues q ORDER BY q.name",
            )?;
            let rows = stmt.query_map([now], |r| {
                Ok(QueueStats {
                    name: r.get(0)?,
                    ready: r.get::<_, i64>(1)? as u64,
                    in_flight: r.get::<_, i64>(2)? as u64,
                    delayed: r.get::<_, i64>(3)? as u64,
                    dead_lettered: r.get::<_, i64>(4)? as u64,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        let filter = filter.clone();
        self.read(move |conn| {
            let mut sql = String::from(
                "SELECT entry, queue, headers, body, dead_lettered_at FROM courier_dead_letters WHERE 1 = 1",
            );
            let mut args: Vec<String> = Vec::new();
            if let Some(q) = &filter.queue {
                args.push(q.clone());
                sql.push_str(&format!(" AND queue = ?{}", args.len()));
            }
            if let Some(f) = &filter.fingerprint {
                args.push(f.clone());
                sql.push_str(&format!(" AND fingerprint = ?{}", args.len()));
            }
            if !filter.entry_ids.is_empty() {
                let ids: Vec<i64> = filter.entry_ids.iter().filter_map(|id| id.parse().ok()).collect();
                let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
                sql.push_str(&format!(" AND entry IN ({list})"));
            }
            sql.push_str(" ORDER BY entry");
            if let Some(limit) = filter.limit {
                sql.push_str(&format!(" LIMIT {}", limit.min(i64::MAX as usize)));
            }
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(params_from_iter(args.iter()), |r| {
                Ok(DeadLetter {
                    entry_id: r.get::<_, i64>(0)?.to_string(),
                    queue: r.get(1)?,
                    message: RawMessage {
                        headers: decode_headers(&r.get::<_, String>(2)?),
                        body: Bytes::from(r.get::<_, Vec<u8>>(3)?),
                    },
                    dead_lettered_at: millis_to_time(r.get(4)?),
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn replay_dead_letter(&self, entry_id: &str) -> Result<()> {
        let entry: i64 = entry_id
            .parse()
            .map_err(|_| Error::not_found(format!("'{entry_id}' is not a dead-letter id of this engine (a number)")))?;
        self.call(|reply| Op::Replay { entry, reply }).await
    }

    async fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64> {
        let entries: Vec<i64> =
            self.dead_letters(filter).await?.iter().filter_map(|d| d.entry_id.parse().ok()).collect();
        if entries.is_empty() {
            return Ok(0);
        }
        self.call(|reply| Op::Purge { entries, reply }).await
    }
}
