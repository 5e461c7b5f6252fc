//! [`RabbitMqTransport`]: Courier's queues as RabbitMQ queues, message types as fanout exchanges.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use courier_core::{Engine, Error, RawMessage, Result, Subscription, SubscriptionOptions, Transport};
use lapin::BasicProperties;
use lapin::options::QueueDeleteOptions;

use crate::headers::{self, DELAY_TO, long};
use crate::link::{Link, Route, engine_error};
use crate::names::bucket;
use crate::options::RabbitMqOptions;
use crate::registry;
use crate::subscription::RabbitSubscription;

/// The RabbitMQ transport (AMQP 0-9-1): publisher confirms, persistent messages, manual acks, delayed redelivery
/// through TTL queues, a dead-letter queue per queue, and reconnection with backoff. Also the engine's
/// [`Admin`](courier_core::Admin).
///
/// A cheap handle: clones share one connection. See the [crate docs](crate) for topology and guarantees.
///
/// ```no_run
/// # async fn demo() -> courier_core::Result<()> {
/// use courier_rabbitmq::{RabbitMqOptions, RabbitMqTransport};
/// let options = RabbitMqOptions::new("amqp://guest:guest@127.0.0.1:5672/%2f").namespace("shop");
/// let engine = RabbitMqTransport::connect(options).await?.into_engine();
/// # let _ = engine; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RabbitMqTransport {
    pub(crate) link: Arc<Link>,
}

impl RabbitMqTransport {
    /// Connects to the broker. An unreachable broker is an
    /// [`ErrorKind::Connection`](courier_core::ErrorKind::Connection) error naming the URL.
    pub async fn connect(options: RabbitMqOptions) -> Result<Self> {
        Ok(Self { link: Link::connect(options).await? })
    }

    /// Connects with settings from an engine URL (see [`RabbitMqOptions::from_url`]).
    pub async fn connect_url(url: &str) -> Result<Self> {
        Self::connect(RabbitMqOptions::from_url(url)?).await
    }

    /// This transport as an [`Engine`].
    pub fn into_engine(self) -> Engine {
        Engine::new(Arc::new(self))
    }

    /// The settings in use.
    pub fn options(&self) -> &RabbitMqOptions {
        &self.link.options
    }

    /// Deletes everything this namespace holds on the broker: its queues (with their messages and dead letters),
    /// the exchanges of its message types, its delay queues, the delayed exchange and the registry. For tests and
    /// for decommissioning; consumers of the namespace stop receiving.
    pub async fn delete_namespace(&self) -> Result<()> {
        let names = &self.link.names;
        let recorded = registry::read(&self.link).await?;
        let channel = self.link.channel().await?;
        for record in &recorded {
            let result = if let Some(queue) = record.strip_prefix("q/") {
                let q = channel.queue_delete(names.queue(queue).as_str().into(), QueueDeleteOptions::default()).await;
                self.link.forget_queue(queue);
                q.and(channel.queue_delete(names.dlq(queue).as_str().into(), QueueDeleteOptions::default()).await)
                    .map(drop)
            } else if let Some(queue) = record.strip_prefix("d/") {
                channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await.map(drop)
            } else if let Some(exchange) = record.strip_prefix("x/") {
                channel.exchange_delete(exchange.into(), Default::default()).await
            } else {
                Ok(())
            };
            result.map_err(|e| engine_error(&format!("deleting '{record}'"), e))?;
        }
        let delayed = names.delayed_exchange();
        channel
            .exchange_delete(delayed.as_str().into(), Default::default())
            .await
            .map_err(|e| engine_error("deleting the delayed exchange", e))?;
        channel
            .queue_delete(names.registry().as_str().into(), QueueDeleteOptions::default())
            .await
            .map_err(|e| engine_error("deleting the registry", e))?;
        let _ = channel.close(200, "OK".into()).await;
        Ok(())
    }

    /// Closes the connection. Deliveries not yet settled go back to their queues.
    pub async fn close(&self) {
        self.link.close().await;
    }

    async fn ensure_queue(&self, queue: &str) -> Result<()> {
        if self.link.knows_queue(queue) { Ok(()) } else { self.declare_queue(queue).await }
    }

    async fn ensure_exchange(&self, message_type: &str) -> Result<String> {
        let exchange = self.link.names.exchange(message_type)?;
        if !self.link.knows_exchange(&exchange) {
            self.link.declare_exchange(&exchange).await?;
            registry::append(&self.link, &format!("+x/{exchange}")).await?;
        }
        Ok(exchange)
    }
}

/// How long until `deliver_at`, if it is in the future.
fn delay_until(deliver_at: Option<DateTime<Utc>>) -> Option<Duration> {
    let at = deliver_at?;
    (at - Utc::now()).to_std().ok().filter(|d| !d.is_zero())
}

/// Publishes to `target` (`q:<amqp queue>` or `e:<exchange>`) after `delay`, through a delay queue.
pub(crate) async fn publish_delayed(
    link: &Link,
    target: &str,
    delay: Duration,
    body: &[u8],
    props: &BasicProperties,
) -> Result<()> {
    let ms = bucket(delay);
    let props = headers::with_headers(props, |t| {
        t.insert(DELAY_TO.into(), long(target));
    });
    for _ in 0..2 {
        let known = link.knows_delay(ms);
        let queue = link.delay_queue(ms).await?;
        if !known {
            registry::append(link, &format!("+d/{queue}")).await?;
        }
        if link.publish(Route::Queue(&queue), body, &props).await? {
            return Ok(());
        }
        // The delay queue expired after this process last declared it: declare it again.
        link.forget_delay(ms);
    }
    Err(Error::engine(format!("the delay queue for {ms} ms could not be declared")))
}

/// Sends to a Courier queue now, declaring it again if it was deleted behind this process's back.
pub(crate) async fn send_now(link: &Link, queue: &str, body: &[u8], props: &BasicProperties) -> Result<()> {
    let name = link.names.queue(queue);
    if link.publish(Route::Queue(&name), body, props).await? {
        return Ok(());
    }
    link.declare_queue(queue).await?;
    registry::append(link, &format!("+q/{queue}")).await?;
    if link.publish(Route::Queue(&name), body, props).await? {
        return Ok(());
    }
    Err(Error::engine(format!("queue '{name}' disappeared while sending to it")))
}

#[async_trait]
impl Transport for RabbitMqTransport {
    async fn declare_queue(&self, queue: &str) -> Result<()> {
        self.link.names.check_queue(queue)?;
        let known = self.link.knows_queue(queue);
        self.link.declare_queue(queue).await?;
        if !known && let Err(e) = registry::append(&self.link, &format!("+q/{queue}")).await {
            self.link.forget_queue(queue);
            return Err(e);
        }
        Ok(())
    }

    async fn bind(&self, queue: &str, message_type: &str) -> Result<()> {
        self.ensure_queue(queue).await?;
        let exchange = self.ensure_exchange(message_type).await?;
        self.link.bind(queue, &exchange).await
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        let names = &self.link.names;
        self.link.forget_queue(queue);
        let channel = self.link.channel().await?;
        channel
            .queue_delete(names.queue(queue).as_str().into(), QueueDeleteOptions::default())
            .await
            .map_err(|e| engine_error(&format!("deleting queue '{queue}'"), e))?;
        // The dead-letter queue goes too if it is empty; dead letters stay for `courier dlq` otherwise.
        let if_empty = QueueDeleteOptions { if_empty: true, ..Default::default() };
        let dlq_gone = channel.queue_delete(names.dlq(queue).as_str().into(), if_empty).await.is_ok();
        let _ = channel.close(200, "OK".into()).await;
        if dlq_gone {
            registry::append(&self.link, &format!("-q/{queue}")).await?;
        }
        Ok(())
    }

    async fn publish(&self, message: RawMessage, deliver_at: Option<DateTime<Utc>>) -> Result<()> {
        let Some(message_type) = message.message_type() else {
            return Err(Error::envelope("a published message needs a 'type' header: it names the exchange"));
        };
        let exchange = self.ensure_exchange(message_type).await?;
        let props = headers::to_amqp(&message);
        match delay_until(deliver_at) {
            Some(delay) => {
                self.link.bind_delayed_exchange(&exchange).await?;
                publish_delayed(&self.link, &format!("e:{exchange}"), delay, &message.body, &props).await
            }
            None => self.link.publish(Route::Exchange(&exchange), &message.body, &props).await.map(drop),
        }
    }

    async fn send(&self, queue: &str, message: RawMessage, deliver_at: Option<DateTime<Utc>>) -> Result<()> {
        self.ensure_queue(queue).await?;
        let props = headers::to_amqp(&message);
        match delay_until(deliver_at) {
            Some(delay) => {
                let target = format!("q:{}", self.link.names.queue(queue));
                publish_delayed(&self.link, &target, delay, &message.body, &props).await
            }
            None => send_now(&self.link, queue, &message.body, &props).await,
        }
    }

    async fn subscribe(&self, queue: &str, options: SubscriptionOptions) -> Result<Box<dyn Subscription>> {
        self.ensure_queue(queue).await?;
        Ok(Box::new(RabbitSubscription::new(self.link.clone(), queue, options.prefetch)))
    }
}
