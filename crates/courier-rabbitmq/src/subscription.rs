//! Consuming: a channel with a prefetch limit per subscription, manual acks, and resumption after reconnection.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use courier_core::{Acker, Annotations, Delivery, Error, Result, Subscription, now_millis};
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Consumer};

use crate::headers::{self, DEAD_AT, DELAY_TO, DELIVERIES, ENTRY, FROM_QUEUE, PREFIX, long};
use crate::link::{Link, Route, engine_error};
use crate::transport::{publish_delayed, send_now};

/// Takes messages from one queue. After the connection drops it waits for the link to reconnect and consumes
/// again; messages it held unsettled are redelivered by the broker.
#[derive(Debug)]
pub(crate) struct RabbitSubscription {
    link: Arc<Link>,
    queue: Arc<str>,
    prefetch: u16,
    current: Option<(Channel, Consumer)>,
    reopened: bool,
}

impl RabbitSubscription {
    pub(crate) fn new(link: Arc<Link>, queue: &str, prefetch: usize) -> Self {
        let prefetch = prefetch.clamp(1, usize::from(u16::MAX)) as u16;
        Self { link, queue: Arc::from(queue), prefetch, current: None, reopened: false }
    }

    async fn open(&self) -> Result<(Channel, Consumer)> {
        let name = self.link.names.queue(&self.queue);
        let prefetch = self.prefetch;
        self.link
            .run("subscribing", |live| {
                let name = name.clone();
                async move {
                    let channel = live.connection.create_channel().await?;
                    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
                    let consumer = channel
                        .basic_consume(
                            name.as_str().into(),
                            "".into(),
                            BasicConsumeOptions::default(),
                            FieldTable::default(),
                        )
                        .await?;
                    Ok((channel, consumer))
                }
            })
            .await
    }

    fn delivery(&self, channel: &Channel, d: lapin::message::Delivery) -> Delivery {
        let body = Bytes::from(d.data);
        let (message, before) = headers::from_amqp(&d.properties, body.clone());
        let count = before.saturating_add(1);
        let acker = RabbitAcker {
            link: self.link.clone(),
            channel: channel.clone(),
            acker: d.acker,
            queue: self.queue.clone(),
            props: d.properties,
            body,
            count,
        };
        Delivery::new(self.queue.clone(), message, count, Box::new(acker))
    }
}

#[async_trait]
impl Subscription for RabbitSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>> {
        loop {
            if self.current.is_none() {
                if self.reopened {
                    tokio::time::sleep(self.link.options.min_backoff).await;
                }
                self.current = Some(self.open().await?);
                self.reopened = true;
            }
            let Some((channel, consumer)) = self.current.as_mut() else { continue };
            match consumer.next().await {
                Some(Ok(first)) => {
                    let channel = channel.clone();
                    let mut raw = vec![first];
                    while raw.len() < max.max(1) {
                        match consumer.next().now_or_never() {
                            Some(Some(Ok(d))) => raw.push(d),
                            _ => break,
                        }
                    }
                    self.reopened = false;
                    return Ok(raw.into_iter().map(|d| self.delivery(&channel, d)).collect());
                }
                Some(Err(e)) => {
                    tracing::warn!(queue = %self.queue, error = %e, "consumer interrupted; consuming again");
                    self.current = None;
                }
                None => {
                    tracing::debug!(queue = %self.queue, "consumer cancelled; consuming again");
                    self.current = None;
                }
            }
        }
    }
}

/// Settles one delivery. Holds its channel open until settled, so a subscription dropped at shutdown does not
/// requeue the messages its handlers are still working on.
#[derive(Debug)]
struct RabbitAcker {
    link: Arc<Link>,
    channel: Channel,
    acker: lapin::Acker,
    queue: Arc<str>,
    props: BasicProperties,
    body: Bytes,
    count: u32,
}

impl RabbitAcker {
    fn settled(&self, what: &str, result: lapin::Result<bool>) -> Result<()> {
        match result {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::connection(format!(
                "could not {what} a message from '{}': its channel closed (the connection dropped); the broker \
                 redelivers it",
                self.queue
            ))),
            Err(e) => Err(engine_error(&format!("{what} on '{}'", self.queue), e)),
        }
    }

    async fn ack_now(&self) -> Result<()> {
        self.settled("ack", self.acker.ack(BasicAckOptions::default()).await)
    }
}

fn annotate(table: &mut FieldTable, annotations: &Annotations) {
    for (k, v) in annotations {
        table.insert(format!("{PREFIX}{k}").into(), long(v));
    }
}

#[async_trait]
impl Acker for RabbitAcker {
    async fn ack(&self) -> Result<()> {
        self.ack_now().await
    }

    async fn retry(&self, delay: Duration, annotations: Annotations) -> Result<()> {
        let count = self.count;
        let props = headers::with_headers(&self.props, |t| {
            annotate(t, &annotations);
            t.insert(DELIVERIES.into(), AMQPValue::LongLongInt(i64::from(count)));
        });
        if delay.is_zero() {
            send_now(&self.link, &self.queue, &self.body, &props).await?;
        } else {
            let target = format!("q:{}", self.link.names.queue(&self.queue));
            publish_delayed(&self.link, &target, delay, &self.body, &props).await?;
        }
        self.ack_now().await
    }

    async fn dead_letter(&self, annotations: Annotations) -> Result<()> {
        let entry =
            headers::message_id(&self.props).unwrap_or_else(|| format!("courier-{}", uuid::Uuid::now_v7().simple()));
        let queue = self.queue.clone();
        let props = headers::with_headers(&self.props, |t| {
            annotate(t, &annotations);
            t.insert(ENTRY.into(), long(&entry));
            t.insert(FROM_QUEUE.into(), long(&queue));
            t.insert(DEAD_AT.into(), AMQPValue::LongLongInt(now_millis()));
            t.insert(DELAY_TO.into(), AMQPValue::Void);
        });
        let dlq = self.link.names.dlq(&self.queue);
        if !self.link.publish(Route::Queue(&dlq), &self.body, &props).await? {
            self.link.declare_queue(&self.queue).await?;
            if !self.link.publish(Route::Queue(&dlq), &self.body, &props).await? {
                return Err(Error::engine(format!("dead-letter queue '{dlq}' disappeared while writing to it")));
            }
        }
        self.ack_now().await
    }

    async fn release(&self) -> Result<()> {
        let options = BasicNackOptions { requeue: true, multiple: false };
        self.settled("release", self.acker.nack(options).await)
    }

    fn release_on_drop(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (acker, channel) = (self.acker.clone(), self.channel.clone());
        runtime.spawn(async move {
            let _ = acker.nack(BasicNackOptions { requeue: true, multiple: false }).await;
            drop(channel);
        });
    }
}
