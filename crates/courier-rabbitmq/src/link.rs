//! The connection: connects, reconnects with backoff, re-declares topology, and publishes with confirms.
//!
//! One [`Link`] per transport. Operations take the current connection with [`Link::live`]; when it has dropped,
//! the first caller reconnects (doubling the wait from `min_backoff` to `max_backoff`) and re-declares every
//! exchange, queue and binding this process declared, while the others wait for it. An operation that fails
//! because the connection dropped is tried again on the new connection until `reconnect_timeout`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use courier_core::{Error, Result};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::time::Instant;

use crate::headers::{DELAY_TO, long};
use crate::names::Names;
use crate::options::RabbitMqOptions;

/// One open connection and its publishing channels.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) generation: u64,
    pub(crate) connection: Connection,
    publishers: Mutex<Vec<Channel>>,
    next: AtomicUsize,
}

impl Live {
    fn is_open(&self) -> bool {
        self.connection.status().connected()
    }

    /// A publishing channel (confirms on), replaced if a channel error closed it.
    async fn publisher(&self) -> lapin::Result<Channel> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (slot, channel) = {
            let channels = self.publishers.lock().unwrap_or_else(|p| p.into_inner());
            let slot = n % channels.len();
            (slot, channels[slot].clone())
        };
        if channel.status().connected() || !self.is_open() {
            return Ok(channel);
        }
        let fresh = confirm_channel(&self.connection).await?;
        self.publishers.lock().unwrap_or_else(|p| p.into_inner())[slot] = fresh.clone();
        Ok(fresh)
    }
}

async fn confirm_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
}

/// What this process declared, to re-declare after a reconnection.
#[derive(Debug, Default)]
struct Topology {
    queues: BTreeSet<String>,
    exchanges: BTreeSet<String>,
    bindings: BTreeSet<(String, String)>,
    delayed_exchanges: BTreeSet<String>,
    /// Delay bucket (ms) -> when it was last declared (its idle expiry restarts then).
    delays: BTreeMap<u64, Instant>,
}

/// The connection to the broker, shared by the transport, its subscriptions and ackers.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) options: RabbitMqOptions,
    pub(crate) names: Names,
    current: RwLock<Option<Arc<Live>>>,
    reconnecting: tokio::sync::Mutex<()>,
    generations: AtomicU64,
    topology: Mutex<Topology>,
}

/// Where a publish goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Route<'a> {
    /// A queue, through the default exchange (`mandatory`: tell us if it does not exist).
    Queue(&'a str),
    /// An exchange.
    Exchange(&'a str),
}

impl Link {
    /// Connects once (an unreachable broker fails at once, naming the URL).
    pub(crate) async fn connect(options: RabbitMqOptions) -> Result<Arc<Self>> {
        let names = Names::new(&options.namespace);
        let link = Arc::new(Self {
            options,
            names,
            current: RwLock::new(None),
            reconnecting: tokio::sync::Mutex::new(()),
            generations: AtomicU64::new(0),
            topology: Mutex::new(Topology::default()),
        });
        let live = link.open().await.map_err(|e| {
            Error::connection(format!(
                "cannot connect to RabbitMQ at '{}': check that the broker is running and reachable, and the \
                 credentials and vhost in the URL",
                link.options.redacted_url()
            ))
            .with_source(e)
        })?;
        *link.current.write().unwrap_or_else(|p| p.into_inner()) = Some(live);
        Ok(link)
    }

    async fn open(&self) -> lapin::Result<Arc<Live>> {
        let props = ConnectionProperties::default()
            .with_connection_name(LongString::from(self.options.connection_name.as_bytes().to_vec()));
        let connection = Connection::connect(&self.options.url, props).await?;
        let mut publishers = Vec::new();
        for _ in 0..self.options.publish_channels.max(1) {
            publishers.push(confirm_channel(&connection).await?);
        }
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Arc::new(Live { generation, connection, publishers: Mutex::new(publishers), next: AtomicUsize::new(0) }))
    }

    /// The open connection, reconnecting (with backoff, until `reconnect_timeout`) if it dropped.
    pub(crate) async fn live(&self) -> Result<Arc<Live>> {
        if let Some(live) = self.current.read().unwrap_or_else(|p| p.into_inner()).as_ref().filter(|l| l.is_open()) {
            return Ok(live.clone());
        }
        let _one_at_a_time = self.reconnecting.lock().await;
        if let Some(live) = self.current.read().unwrap_or_else(|p| p.into_inner()).as_ref().filter(|l| l.is_open()) {
            return Ok(live.clone());
        }
        let deadline = Instant::now() + self.options.reconnect_timeout;
        let mut wait = self.options.min_backoff;
        loop {
            let attempt = async {
                let live = self.open().await?;
                self.redeclare(&live).await?;
                Ok::<_, lapin::Error>(live)
            };
            match attempt.await {
                Ok(live) => {
                    tracing::info!(url = %self.options.redacted_url(), generation = live.generation, "reconnected to RabbitMQ");
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(live.clone());
                    return Ok(live);
                }
                Err(e) if Instant::now() + wait < deadline => {
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot reconnect to RabbitMQ");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(self.options.max_backoff);
                }
                Err(e) => {
                    return Err(Error::connection(format!(
                        "lost the connection to RabbitMQ at '{}' and could not reconnect within {:?}; check that \
                         the broker is running",
                        self.options.redacted_url(),
                        self.options.reconnect_timeout
                    ))
                    .with_source(e));
                }
            }
        }
    }

    /// Runs `op` on the open connection; if it fails because the connection dropped, reconnects and runs it again.
    pub(crate) async fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: Fn(Arc<Live>) -> Fut,
        Fut: Future<Output = lapin::Result<T>>,
    {
        let deadline = Instant::now() + self.options.reconnect_timeout;
        loop {
            let live = self.live().await?;
            match op(live.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if !live.is_open() && Instant::now() < deadline => {
                    tracing::debug!(error = %e, what, "connection dropped during an operation; trying again");
                    tokio::time::sleep(self.options.min_backoff).await;
                }
                Err(e) => return Err(engine_error(what, e)),
            }
        }
    }

    /// Publishes and waits for the broker's confirm. `Ok(false)` when a queue route was returned unroutable.
    pub(crate) async fn publish(&self, route: Route<'_>, body: &[u8], props: &BasicProperties) -> Result<bool> {
        let (exchange, key, mandatory) = match route {
            Route::Queue(q) => ("", q, true),
            Route::Exchange(x) => (x, "", false),
        };
        let confirmed = self
            .run("publishing", |live| async move {
                let channel = live.publisher().await?;
                let confirm = channel
                    .basic_publish(
                        exchange.into(),
                        key.into(),
                        BasicPublishOptions { mandatory, immediate: false },
                        body,
                        props.clone(),
                    )
                    .await?
                    .await?;
                Ok(if confirm.is_nack() { None } else { Some(confirm.take_message().is_none()) })
            })
            .await?;
        confirmed.ok_or_else(|| {
            Error::engine("RabbitMQ refused the message (publisher confirm was a nack); it was not stored")
        })
    }

    /// A channel for one-off work (admin, declarations); closed when dropped by every holder.
    pub(crate) async fn channel(&self) -> Result<Channel> {
        self.run("opening a channel", |live| async move { live.connection.create_channel().await }).await
    }

    /// Declares a Courier queue, its DLQ, and its binding on the delayed exchange; recorded for reconnection.
    pub(crate) async fn declare_queue(&self, queue: &str) -> Result<()> {
        self.run("declaring a queue", |live| async move { self.declare_queue_on(&live.connection, queue).await })
            .await?;
        self.topology().queues.insert(queue.to_owned());
        Ok(())
    }

    async fn declare_queue_on(&self, connection: &Connection, queue: &str) -> lapin::Result<()> {
        let channel = connection.create_channel().await?;
        let (name, dlq, delayed) = (self.names.queue(queue), self.names.dlq(queue), self.names.delayed_exchange());
        channel.queue_declare(name.as_str().into(), QueueDeclareOptions::durable(), FieldTable::default()).await?;
        channel.queue_declare(dlq.as_str().into(), QueueDeclareOptions::durable(), FieldTable::default()).await?;
        declare_delayed_exchange(&channel, &delayed).await?;
        channel
            .queue_bind(
                name.as_str().into(),
                delayed.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                delay_match(&format!("q:{name}")),
            )
            .await?;
        let _ = channel.close(200, "OK".into()).await;
        Ok(())
    }

    /// Declares the fanout exchange of a message type; recorded for reconnection.
    pub(crate) async fn declare_exchange(&self, exchange: &str) -> Result<()> {
        if self.topology().exchanges.contains(exchange) {
            return Ok(());
        }
        self.run("declaring an exchange", |live| async move {
            let channel = live.connection.create_channel().await?;
            declare_fanout(&channel, exchange).await?;
            let _ = channel.close(200, "OK".into()).await;
            Ok(())
        })
        .await?;
        self.topology().exchanges.insert(exchange.to_owned());
        Ok(())
    }

    /// Binds a Courier queue to a message type's exchange; recorded for reconnection.
    pub(crate) async fn bind(&self, queue: &str, exchange: &str) -> Result<()> {
        self.declare_exchange(exchange).await?;
        let name = self.names.queue(queue);
        self.run("binding a queue", |live| {
            let name = name.clone();
            async move {
                let channel = live.connection.create_channel().await?;
                channel
                    .queue_bind(
                        name.as_str().into(),
                        exchange.into(),
                        "".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                let _ = channel.close(200, "OK".into()).await;
                Ok(())
            }
        })
        .await?;
        self.topology().bindings.insert((queue.to_owned(), exchange.to_owned()));
        Ok(())
    }

    /// Lets delayed messages reach `exchange` through the delayed exchange.
    pub(crate) async fn bind_delayed_exchange(&self, exchange: &str) -> Result<()> {
        if self.topology().delayed_exchanges.contains(exchange) {
            return Ok(());
        }
        self.declare_exchange(exchange).await?;
        let delayed = self.names.delayed_exchange();
        self.run("binding an exchange for delayed delivery", |live| {
            let delayed = delayed.clone();
            async move {
                let channel = live.connection.create_channel().await?;
                declare_delayed_exchange(&channel, &delayed).await?;
                bind_exchange(&channel, &delayed, exchange).await?;
                let _ = channel.close(200, "OK".into()).await;
                Ok(())
            }
        })
        .await?;
        self.topology().delayed_exchanges.insert(exchange.to_owned());
        Ok(())
    }

    /// Declares the delay queue of `bucket_ms` unless this process did so recently; returns its name.
    ///
    /// A delay queue holds messages for `bucket_ms` (`x-message-ttl`) then dead-letters them to the delayed
    /// exchange, which routes them by their [`DELAY_TO`] header. It deletes itself after being unused for
    /// `2 * bucket + 10 min` (`x-expires`); re-declaring it at least every half of that keeps it alive while it can
    /// hold a message.
    pub(crate) async fn delay_queue(&self, bucket_ms: u64) -> Result<String> {
        let name = self.names.delay_queue(bucket_ms);
        let expires = delay_expiry(bucket_ms);
        let fresh = self.topology().delays.get(&bucket_ms).is_some_and(|at| at.elapsed() < expires / 2);
        if !fresh {
            self.run("declaring a delay queue", |live| {
                let name = name.clone();
                async move { self.declare_delay_on(&live.connection, &name, bucket_ms).await }
            })
            .await?;
            self.topology().delays.insert(bucket_ms, Instant::now());
        }
        Ok(name)
    }

    async fn declare_delay_on(&self, connection: &Connection, name: &str, bucket_ms: u64) -> lapin::Result<()> {
        let channel = connection.create_channel().await?;
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(bucket_ms as i64));
        args.insert("x-expires".into(), AMQPValue::LongLongInt(delay_expiry(bucket_ms).as_millis() as i64));
        args.insert("x-dead-letter-exchange".into(), long(&self.names.delayed_exchange()));
        declare_delayed_exchange(&channel, &self.names.delayed_exchange()).await?;
        channel.queue_declare(name.into(), QueueDeclareOptions::durable(), args).await?;
        let _ = channel.close(200, "OK".into()).await;
        Ok(())
    }

    /// Forgets a deleted queue, so it is not re-declared after a reconnection.
    pub(crate) fn forget_queue(&self, queue: &str) {
        let mut topology = self.topology();
        topology.queues.remove(queue);
        topology.bindings.retain(|(q, _)| q != queue);
    }

    /// Whether this process declared `exchange`.
    pub(crate) fn knows_exchange(&self, exchange: &str) -> bool {
        self.topology().exchanges.contains(exchange)
    }

    /// Whether this process declared the delay queue of `bucket_ms`.
    pub(crate) fn knows_delay(&self, bucket_ms: u64) -> bool {
        self.topology().delays.contains_key(&bucket_ms)
    }

    /// Forgets a delay queue, so the next use declares it again.
    pub(crate) fn forget_delay(&self, bucket_ms: u64) {
        self.topology().delays.remove(&bucket_ms);
    }

    /// Whether this process declared `queue`.
    pub(crate) fn knows_queue(&self, queue: &str) -> bool {
        self.topology().queues.contains(queue)
    }

    fn topology(&self) -> std::sync::MutexGuard<'_, Topology> {
        self.topology.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn redeclare(&self, live: &Live) -> lapin::Result<()> {
        let (queues, exchanges, bindings, delayed, delays) = {
            let t = self.topology();
            (
                t.queues.clone(),
                t.exchanges.clone(),
                t.bindings.clone(),
                t.delayed_exchanges.clone(),
                t.delays.keys().copied().collect::<Vec<_>>(),
            )
        };
        for queue in &queues {
            self.declare_queue_on(&live.connection, queue).await?;
        }
        let channel = live.connection.create_channel().await?;
        for exchange in &exchanges {
            declare_fanout(&channel, exchange).await?;
        }
        for (queue, exchange) in &bindings {
            let name = self.names.queue(queue);
            channel
                .queue_bind(
                    name.as_str().into(),
                    exchange.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        let delayed_exchange = self.names.delayed_exchange();
        for exchange in &delayed {
            declare_delayed_exchange(&channel, &delayed_exchange).await?;
            bind_exchange(&channel, &delayed_exchange, exchange).await?;
        }
        let _ = channel.close(200, "OK".into()).await;
        for bucket in delays {
            self.declare_delay_on(&live.connection, &self.names.delay_queue(bucket), bucket).await?;
            self.topology().delays.insert(bucket, Instant::now());
        }
        Ok(())
    }

    /// Closes the connection (deliveries not yet settled are requeued by the broker).
    pub(crate) async fn close(&self) {
        let live = self.current.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(live) = live {
            let _ = live.connection.close(200, "OK".into()).await;
        }
    }
}

fn delay_expiry(bucket_ms: u64) -> Duration {
    Duration::from_millis(bucket_ms.saturating_mul(2)) + Duration::from_secs(600)
}

async fn declare_fanout(channel: &Channel, exchange: &str) -> lapin::Result<()> {
    let options = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel.exchange_declare(exchange.into(), ExchangeKind::Fanout, options, FieldTable::default()).await
}

async fn declare_delayed_exchange(channel: &Channel, exchange: &str) -> lapin::Result<()> {
    let options = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel.exchange_declare(exchange.into(), ExchangeKind::Headers, options, FieldTable::default()).await
}

async fn bind_exchange(channel: &Channel, delayed: &str, exchange: &str) -> lapin::Result<()> {
    channel
        .exchange_bind(
            exchange.into(),
            delayed.into(),
            "".into(),
            ExchangeBindOptions::default(),
            delay_match(&format!("e:{exchange}")),
        )
        .await
}

/// Binding arguments of the delayed (headers) exchange: match messages whose [`DELAY_TO`] header is `target`.
fn delay_match(target: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-match".into(), long("all"));
    args.insert(DELAY_TO.into(), long(target));
    args
}

/// A lapin error as a Courier error: connection trouble is retryable, the rest is the engine's.
pub(crate) fn engine_error(what: &str, e: lapin::Error) -> Error {
    if e.is_io_error() || e.is_amqp_hard_error() {
        Error::connection(format!("{what} failed: the connection to RabbitMQ broke")).with_source(e)
    } else {
        Error::engine(format!("{what} failed on RabbitMQ")).with_source(e)
    }
}
