//! [`Admin`] over AMQP alone (the management plugin is not required): queue names come from the registry
//! stream, depths from passive `queue.declare`, dead letters from `basic.get` without acknowledgement.
//!
//! Reading a dead-letter queue takes its messages unacknowledged and then returns them (closing the channel
//! requeues them in their original order). While one reader holds them, another reader of the same dead-letter
//! queue does not see them, and a consumer of it, if anyone runs one, would not get them.

use std::collections::BTreeSet;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use courier_core::{
    Admin, DeadLetter, DeadLetterFilter, Error, QueueStats, Result, dead_letter_attr as dl, strip_failure_annotations,
};
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::{DeliveryTag, FieldTable};
use std::sync::Arc;

use lapin::Channel;

use crate::headers::{self, DEAD_AT, ENTRY, FROM_QUEUE};
use crate::link::{Link, Live, engine_error};
use crate::registry;
use crate::transport::{RabbitMqTransport, send_now};

/// Depths by passive declaration on one channel, replaced when a missing queue (404) closes it.
struct Counter {
    live: Arc<Live>,
    channel: Channel,
}

impl Counter {
    async fn new(link: &Link) -> Result<Self> {
        let live = link.live().await?;
        let channel = live.connection.create_channel().await.map_err(|e| engine_error("opening a channel", e))?;
        Ok(Self { live, channel })
    }

    /// Ready messages and consumers of `queue`, or `None` if it does not exist.
    async fn count(&mut self, queue: &str) -> Result<Option<(u32, u32)>> {
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        match self.channel.queue_declare(queue.into(), passive, FieldTable::default()).await {
            Ok(q) => Ok(Some((q.message_count(), q.consumer_count()))),
            Err(e) if self.live.connection.status().connected() => {
                tracing::trace!(queue, error = %e, "queue not found");
                self.channel =
                    self.live.connection.create_channel().await.map_err(|e| engine_error("opening a channel", e))?;
                Ok(None)
            }
            Err(e) => Err(engine_error(&format!("counting messages of '{queue}'"), e)),
        }
    }
}

impl RabbitMqTransport {
    async fn recorded_queues(&self) -> Result<BTreeSet<String>> {
        let records = registry::read(&self.link).await?;
        Ok(records.iter().filter_map(|r| r.strip_prefix("q/")).map(str::to_owned).collect())
    }

    async fn filtered_queues(&self, filter: &DeadLetterFilter) -> Result<Vec<String>> {
        Ok(match &filter.queue {
            Some(q) => vec![q.clone()],
            None => self.recorded_queues().await?.into_iter().collect(),
        })
    }

    /// Takes every message of `queue`'s DLQ unacknowledged on a fresh channel; returns the channel (close it to
    /// put back what was not acked) and the entries matching `filter`, oldest first, at most `limit`.
    async fn scan(
        &self,
        queue: &str,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<(Channel, Vec<(DeadLetter, DeliveryTag)>)> {
        let dlq = self.link.names.dlq(queue);
        let mut counter = Counter::new(&self.link).await?;
        let channel = counter.channel.clone();
        let mut found = Vec::new();
        if counter.count(&dlq).await?.is_none_or(|(ready, _)| ready == 0) {
            return Ok((channel, found));
        }
        let fail = |e| engine_error(&format!("reading dead letters of '{queue}'"), e);
        while found.len() < limit {
            let Some(got) =
                channel.basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false }).await.map_err(fail)?
            else {
                break;
            };
            let d = got.delivery;
            let (message, _) = headers::from_amqp(&d.properties, d.data.into());
            let entry_id = headers::internal(&d.properties, ENTRY)
                .or_else(|| message.id().map(str::to_owned))
                .unwrap_or_else(|| format!("tag-{}", d.delivery_tag));
            let from = headers::internal(&d.properties, FROM_QUEUE)
                .or_else(|| message.header(dl::QUEUE).map(str::to_owned))
                .unwrap_or_else(|| queue.to_owned());
            let at = headers::internal(&d.properties, DEAD_AT).and_then(|ms| ms.parse::<i64>().ok());
            let dead_lettered_at = at.and_then(|ms| Utc.timestamp_millis_opt(ms).single()).unwrap_or_else(Utc::now);
            let entry = DeadLetter { entry_id, queue: from, dead_lettered_at, message };
            if filter.matches(&entry) {
                found.push((entry, d.delivery_tag));
            }
        }
        Ok((channel, found))
    }
}

async fn done(channel: Channel) {
    // Closing the channel puts every message taken and not acked back, in its original position.
    let _ = channel.close(200, "OK".into()).await;
}

#[async_trait]
impl Admin for RabbitMqTransport {
    async fn queues(&self) -> Result<Vec<QueueStats>> {
        let mut counter = Counter::new(&self.link).await?;
        let mut stats = Vec::new();
        for queue in self.recorded_queues().await? {
            let main = counter.count(&self.link.names.queue(&queue)).await?;
            let dlq = counter.count(&self.link.names.dlq(&queue)).await?;
            if main.is_none() && dlq.is_none() {
                continue;
            }
            stats.push(QueueStats {
                name: queue,
                ready: main.map_or(0, |(n, _)| u64::from(n)),
                in_flight: 0,
                delayed: 0,
                dead_lettered: dlq.map_or(0, |(n, _)| u64::from(n)),
            });
        }
        let _ = counter.channel.close(200, "OK".into()).await;
        Ok(stats)
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut all = Vec::new();
        for queue in self.filtered_queues(filter).await? {
            let (channel, found) = self.scan(&queue, filter, limit).await?;
            done(channel).await;
            all.extend(found.into_iter().map(|(d, _)| d));
        }
        all.sort_by_key(|d| d.dead_lettered_at);
        all.truncate(limit);
        Ok(all)
    }

    async fn replay_dead_letter(&self, entry_id: &str) -> Result<()> {
        let filter = DeadLetterFilter { entry_ids: vec![entry_id.to_owned()], ..Default::default() };
        for queue in self.recorded_queues().await? {
            let (channel, found) = self.scan(&queue, &filter, 1).await?;
            let Some((entry, tag)) = found.into_iter().next() else {
                done(channel).await;
                continue;
            };
            let mut message = entry.message;
            strip_failure_annotations(&mut message.headers);
            let props = headers::to_amqp(&message);
            let result = async {
                send_now(&self.link, &entry.queue, &message.body, &props).await?;
                channel
                    .basic_ack(tag, BasicAckOptions::default())
                    .await
                    .map_err(|e| engine_error("removing the replayed dead letter", e))
            }
            .await;
            done(channel).await;
            return result;
        }
        Err(Error::not_found(format!(
            "no dead letter with id '{entry_id}' in namespace '{}'",
            self.options().namespace
        )))
    }

    async fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64> {
        let whole = filter.fingerprint.is_none() && filter.entry_ids.is_empty() && filter.limit.is_none();
        let mut purged = 0u64;
        for queue in self.filtered_queues(filter).await? {
            if whole {
                let mut counter = Counter::new(&self.link).await?;
                let dlq = self.link.names.dlq(&queue);
                if counter.count(&dlq).await?.is_some() {
                    let n = counter
                        .channel
                        .queue_purge(dlq.as_str().into(), QueuePurgeOptions::default())
                        .await
                        .map_err(|e| engine_error(&format!("purging '{dlq}'"), e))?;
                    purged += u64::from(n);
                }
                done(counter.channel).await;
                continue;
            }
            let left = filter.limit.map_or(usize::MAX, |l| l.saturating_sub(purged as usize));
            let (channel, found) = self.scan(&queue, filter, left).await?;
            for (_, tag) in &found {
                channel
                    .basic_ack(*tag, BasicAckOptions::default())
                    .await
                    .map_err(|e| engine_error("purging a dead letter", e))?;
                purged += 1;
            }
            done(channel).await;
        }
        Ok(purged)
    }
}
