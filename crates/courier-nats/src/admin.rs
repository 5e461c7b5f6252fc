//! [`Admin`] for NATS: queue depths from consumer and stream state, dead letters read by sequence from the
//! dead-letter stream.

use std::collections::{BTreeMap, HashMap};

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream;
use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use courier_core::{
    Admin, DeadLetter, DeadLetterFilter, Error, QueueStats, RawMessage, Result, strip_failure_annotations,
};
use futures::{StreamExt, TryStreamExt};

use crate::headers;
use crate::transport::{NatsTransport, Shared, js_error};

/// When JetStream stored a message.
fn stored_at(message: &StreamMessage) -> DateTime<Utc> {
    let nanos = message.time.unix_timestamp_nanos();
    Utc.timestamp_nanos(nanos.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
}

impl Shared {
    /// Message counts per queue for the subjects under `prefix` of `stream`.
    async fn counts(&self, stream: &stream::Stream, prefix: &str) -> Result<HashMap<String, u64>> {
        let mut info = stream
            .info_builder()
            .subjects(format!("{prefix}>"))
            .fetch()
            .await
            .map_err(|e| js_error("cannot read stream state", e))?;
        let mut counts = HashMap::new();
        while let Some((subject, count)) = info.try_next().await.map_err(|e| js_error("cannot read stream state", e))? {
            if let Some(queue) = self.names.queue_of_subject(prefix, &subject) {
                counts.insert(queue, count as u64);
            }
        }
        Ok(counts)
    }

    /// Every dead letter of one queue's subject, oldest first.
    async fn dead_letters_of(&self, subject: &str, queue: &str, out: &mut Vec<DeadLetter>) -> Result<()> {
        let mut next = 1;
        loop {
            let found = self.dlq_stream.raw_message_builder().sequence(next).next_by_subject(subject).send().await;
            let message = match found {
                Ok(message) => message,
                Err(e) => {
                    let text = e.to_string().to_ascii_lowercase();
                    if text.contains("not found") || text.contains("no message") {
                        return Ok(());
                    }
                    return Err(js_error(&format!("cannot read the dead letters of '{queue}'"), e));
                }
            };
            next = message.sequence + 1;
            out.push(self.dead_letter(queue, message).await);
        }
    }

    async fn dead_letter(&self, queue: &str, message: StreamMessage) -> DeadLetter {
        let at = stored_at(&message);
        let (mut headers, _) = headers::from_nats(Some(&message.headers));
        let payload = self.body(&mut headers, message.payload.clone()).await;
        DeadLetter {
            entry_id: message.sequence.to_string(),
            queue: queue.to_owned(),
            dead_lettered_at: at,
            message: RawMessage { headers, body: payload },
        }
    }

    async fn dead_letter_by_id(&self, entry_id: &str) -> Result<Option<DeadLetter>> {
        let Ok(seq) = entry_id.parse::<u64>() else { return Ok(None) };
        match self.dlq_stream.get_raw_message(seq).await {
            Ok(message) => {
                let prefix = self.names.dlq_prefix();
                let Some(queue) = self.names.queue_of_subject(&prefix, message.subject.as_str()) else {
                    return Ok(None);
                };
                Ok(Some(self.dead_letter(&queue, message).await))
            }
            Err(e) => {
                let text = e.to_string().to_ascii_lowercase();
                if text.contains("not found") || text.contains("no message") {
                    Ok(None)
                } else {
                    Err(js_error(&format!("cannot read dead letter {entry_id}"), e))
                }
            }
        }
    }
}

#[async_trait]
impl Admin for NatsTransport {
    async fn queues(&self) -> Result<Vec<QueueStats>> {
        let shared = &self.shared;
        let delayed = shared.counts(&shared.queue_stream, &shared.names.delay_prefix()).await?;
        let dead = shared.counts(&shared.dlq_stream, &shared.names.dlq_prefix()).await?;
        let mut consumers = shared.queue_stream.consumers();
        let mut stats = BTreeMap::new();
        while let Some(info) = consumers.next().await {
            let info = info.map_err(|e| js_error("cannot list the queues", e))?;
            let Some(queue) = shared.names.queue_of_consumer(&info.name) else { continue };
            stats.insert(
                queue.clone(),
                QueueStats {
                    ready: info.num_pending,
                    in_flight: info.num_ack_pending as u64,
                    delayed: delayed.get(&queue).copied().unwrap_or(0),
                    dead_lettered: dead.get(&queue).copied().unwrap_or(0),
                    name: queue,
                },
            );
        }
        Ok(stats.into_values().collect())
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        let shared = &self.shared;
        let mut found = Vec::new();
        if !filter.entry_ids.is_empty() {
            for id in &filter.entry_ids {
                if let Some(dl) = shared.dead_letter_by_id(id).await? {
                    found.push(dl);
                }
            }
        } else {
            let prefix = shared.names.dlq_prefix();
            let queues: Vec<String> = match &filter.queue {
                Some(queue) => vec![queue.clone()],
                None => shared.counts(&shared.dlq_stream, &prefix).await?.into_keys().collect(),
            };
            for queue in queues {
                shared.dead_letters_of(&shared.names.dlq_subject(&queue), &queue, &mut found).await?;
            }
        }
        found.retain(|dl| filter.matches(dl));
        found.sort_by_key(|dl| dl.entry_id.parse::<u64>().unwrap_or(u64::MAX));
        if let Some(limit) = filter.limit {
            found.truncate(limit);
        }
        Ok(found)
    }

    async fn replay_dead_letter(&self, entry_id: &str) -> Result<()> {
        let shared = &self.shared;
        let Some(dl) = shared.dead_letter_by_id(entry_id).await? else {
            return Err(Error::not_found(format!(
                "no dead letter with id '{entry_id}' in namespace '{}' (already replayed or purged?)",
                shared.options.namespace
            )));
        };
        let mut headers = dl.message.headers;
        strip_failure_annotations(&mut headers);
        let nats_headers = headers::to_nats(&headers, &[]);
        shared.publish_acked(shared.names.queue_subject(&dl.queue), nats_headers, dl.message.body).await?;
        let seq: u64 = entry_id.parse().unwrap_or_default();
        shared
            .dlq_stream
            .delete_message(seq)
            .await
            .map_err(|e| js_error(&format!("replayed dead letter {entry_id} but cannot remove it"), e))?;
        Ok(())
    }

    async fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64> {
        let shared = &self.shared;
        let mut purged = 0;
        for dl in self.dead_letters(filter).await? {
            let seq: u64 = dl.entry_id.parse().unwrap_or_default();
            match shared.dlq_stream.delete_message(seq).await {
                Ok(true) => purged += 1,
                Ok(false) => {}
                Err(e) if e.to_string().to_ascii_lowercase().contains("not found") => {}
                Err(e) => return Err(js_error(&format!("cannot purge dead letter {seq}"), e)),
            }
        }
        Ok(purged)
    }
}
