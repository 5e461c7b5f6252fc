//! Delayed delivery: scheduled messages and delayed redeliveries wait on `<ns>.delay.<queue>` until due, then move
//! to `<ns>.q.<queue>`.
//!
//! JetStream 2.9 has no per-message delivery time, so every transport that consumes or schedules runs this mover
//! on one shared durable consumer (so the work is shared and survives any one process). A message taken before
//! it is due is nak'd with the time left (`-NAK {"delay": ..}`), so the server hands it back when due; a due
//! message is published to its queue (acknowledged publish) and only then acked. A crash in between can at worst
//! duplicate it, never lose it. The check is made against this machine's clock, so a message never reaches its
//! queue before its time.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer};
use courier_core::now_millis;
use futures::StreamExt;

use crate::names::{DELIVER_AT, Names};
use crate::transport::Shared;

/// How many delayed messages one mover handles at once.
const CONCURRENCY: usize = 256;

#[derive(Debug, Clone)]
struct Mover {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    names: Names,
}

/// Starts the mover; it runs until the returned task is aborted.
pub(crate) fn spawn(shared: &Shared) -> tokio::task::JoinHandle<()> {
    let mover = Mover { js: shared.js.clone(), stream: shared.queue_stream.clone(), names: shared.names.clone() };
    tokio::spawn(mover.run())
}

impl Mover {
    async fn consumer(&self) -> Result<consumer::PullConsumer, String> {
        let name = self.names.scheduler_consumer();
        if let Ok(consumer) = self.stream.get_consumer(name).await {
            return Ok(consumer);
        }
        let config = consumer::pull::Config {
            durable_name: Some(name.to_owned()),
            description: Some("Courier scheduler: moves due delayed messages to their queues".to_owned()),
            filter_subject: format!("{}>", self.names.delay_prefix()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_deliver: -1,
            max_ack_pending: -1,
            ..Default::default()
        };
        match self.stream.create_consumer(config).await {
            Ok(consumer) => Ok(consumer),
            Err(e) => self.stream.get_consumer(name).await.map_err(|_| e.to_string()),
        }
    }

    async fn run(self) {
        loop {
            match self.consumer().await {
                Ok(consumer) => {
                    match consumer
                        .stream()
                        .max_messages_per_batch(CONCURRENCY)
                        .heartbeat(Duration::from_secs(5))
                        .expires(Duration::from_secs(30))
                        .messages()
                        .await
                    {
                        Ok(messages) => {
                            messages
                                .take_while(|m| {
                                    let go = match m {
                                        Ok(_) => true,
                                        Err(e) => {
                                            tracing::debug!(error = %e, "the scheduler's message stream failed");
                                            false
                                        }
                                    };
                                    std::future::ready(go)
                                })
                                .for_each_concurrent(CONCURRENCY, |m| async {
                                    if let Ok(m) = m {
                                        self.handle(m).await;
                                    }
                                })
                                .await;
                        }
                        Err(e) => tracing::warn!(error = %e, "the scheduler cannot take delayed messages"),
                    }
                }
                Err(e) => tracing::warn!(error = %e, "the scheduler cannot create its consumer"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn handle(&self, message: jetstream::Message) {
        let due = message
            .headers
            .as_ref()
            .and_then(|h| h.get(DELIVER_AT))
            .and_then(|v| v.as_str().parse::<i64>().ok())
            .unwrap_or(0);
        let now = now_millis();
        if due > now {
            let wait = Duration::from_millis((due - now) as u64);
            if let Err(e) = message.ack_with(AckKind::Nak(Some(wait))).await {
                tracing::debug!(error = %e, "could not defer a delayed message; its ack deadline brings it back");
            }
            return;
        }
        let Some(queue_token) = message.subject.as_str().strip_prefix(&self.names.delay_prefix()) else {
            tracing::warn!(subject = %message.subject, "dropping a message on an unexpected delay subject");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        };
        let subject = format!("{}{queue_token}", self.names.queue_prefix());
        let mut headers = HeaderMap::new();
        if let Some(original) = message.headers.as_ref() {
            for (name, values) in original.iter() {
                let name: &str = name.as_ref();
                if name == DELIVER_AT {
                    continue;
                }
                for value in values {
                    headers.append(name, value.clone());
                }
            }
        }
        let publish = jetstream::message::PublishMessage::build().payload(message.payload.clone()).headers(headers);
        let stored = match self.js.send_publish(subject, publish).await {
            Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match stored {
            Ok(()) => {
                if let Err(e) = message.ack().await {
                    tracing::debug!(error = %e, "could not ack a moved delayed message; it may be moved twice");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not move a due message to its queue; retrying in 1 s");
                let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
        }
    }
}
