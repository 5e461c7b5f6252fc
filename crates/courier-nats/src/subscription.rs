//! Taking messages from a queue's durable pull consumer, and settling them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use async_trait::async_trait;
use courier_core::{Acker, Annotations, Delivery, Error, RawMessage, Result, Subscription, now_millis};
use futures::{FutureExt, StreamExt};

use crate::headers;
use crate::names::{DELIVER_AT, PRIOR_DELIVERIES};
use crate::transport::Shared;

/// Messages held by one subscription, by stream sequence -> reply subject, so their ack deadline can be extended
/// while handlers run.
type Held = Arc<Mutex<HashMap<u64, async_nats::Subject>>>;

/// One consumer loop's stream of deliveries from a queue.
pub(crate) struct NatsSubscription {
    shared: Arc<Shared>,
    queue: Arc<str>,
    consumer: consumer::PullConsumer,
    messages: Option<consumer::pull::Stream>,
    prefetch: usize,
    held: Held,
    renewer: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for NatsSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSubscription")
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .field("open", &self.messages.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for NatsSubscription {
    fn drop(&mut self) {
        self.renewer.abort();
        // Messages pulled but never handed out: put them back rather than wait for their ack deadline.
        if let Some(messages) = self.messages.as_mut() {
            let mut unclaimed = Vec::new();
            while let Some(Some(Ok(message))) = messages.next().now_or_never() {
                unclaimed.push(message);
            }
            if let (false, Ok(runtime)) = (unclaimed.is_empty(), tokio::runtime::Handle::try_current()) {
                let (shared, queue) = (self.shared.clone(), self.queue.clone());
                runtime.spawn(async move {
                    for message in unclaimed {
                        let (_, prior) = headers::from_nats(message.headers.as_ref());
                        let delivered = message.info().map_or(1, |i| i.delivered.max(1) as u32);
                        if let Err(e) = put_back(&shared, &queue, &message, prior + delivered - 1).await {
                            tracing::debug!(error = %e, "could not put back an unclaimed message");
                        }
                    }
                });
            }
        }
    }
}

impl NatsSubscription {
    pub(crate) fn new(
        shared: Arc<Shared>,
        queue: &str,
        consumer: consumer::PullConsumer,
        prefetch: usize,
        ack_wait: Duration,
    ) -> Self {
        let held: Held = Arc::default();
        let renewer = tokio::spawn(renew(shared.client.clone(), held.clone(), ack_wait));
        Self {
            shared,
            queue: Arc::from(queue),
            consumer,
            messages: None,
            prefetch: prefetch.clamp(1, 10_000),
            held,
            renewer,
        }
    }

    async fn open(&mut self) -> Result<&mut consumer::pull::Stream> {
        if self.messages.is_none() {
            let messages = self
                .consumer
                .stream()
                .max_messages_per_batch(self.prefetch)
                .expires(Duration::from_secs(30))
                .heartbeat(Duration::from_secs(5))
                .messages()
                .await
                .map_err(|e| {
                    crate::transport::js_error(&format!("cannot take messages from queue '{}'", self.queue), e)
                })?;
            self.messages = Some(messages);
        }
        Ok(self.messages.as_mut().expect("just opened"))
    }

    /// After the stream failed: drop it, and make sure the consumer still exists (the queue may have been deleted
    /// and declared again).
    async fn reset(&mut self) {
        self.messages = None;
        match self.shared.queue_consumer(&self.queue, None).await {
            Ok(consumer) => self.consumer = consumer,
            Err(e) => tracing::debug!(queue = %self.queue, error = %e, "cannot look up the queue's consumer"),
        }
    }

    async fn delivery(&self, message: jetstream::Message) -> Option<Delivery> {
        let info = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered.max(1) as u32),
            Err(e) => {
                tracing::warn!(queue = %self.queue, error = %e, "ignoring a message without JetStream metadata");
                return None;
            }
        };
        let (seq, delivered) = info;
        let (mut headers, prior) = headers::from_nats(message.headers.as_ref());
        let body = self.shared.body(&mut headers, message.payload.clone()).await;
        if let Some(reply) = message.reply.clone() {
            self.held.lock().unwrap_or_else(|p| p.into_inner()).insert(seq, reply);
        }
        let count = prior.saturating_add(delivered);
        let acker = NatsAcker(Arc::new(AckerState {
            shared: self.shared.clone(),
            queue: self.queue.clone(),
            message,
            seq,
            delivery_count: count,
            held: self.held.clone(),
        }));
        Some(Delivery::new(self.queue.clone(), RawMessage { headers, body }, count, Box::new(acker)))
    }
}

/// Extends the ack deadline of held messages every third of it, so a long handler is not mistaken for a dead one.
async fn renew(client: async_nats::Client, held: Held, ack_wait: Duration) {
    let mut tick = tokio::time::interval(ack_wait / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let replies: Vec<async_nats::Subject> =
            held.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for reply in replies {
            if let Err(e) = client.publish(reply, AckKind::Progress.into()).await {
                tracing::debug!(error = %e, "could not extend an ack deadline");
            }
        }
    }
}

#[async_trait]
impl Subscription for NatsSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>> {
        let max = max.max(1);
        loop {
            let messages = self.open().await?;
            let first = messages.next().await;
            let mut batch = Vec::with_capacity(max.min(256));
            match first {
                Some(Ok(message)) => batch.push(message),
                Some(Err(e)) => {
                    use consumer::pull::MessagesErrorKind as Kind;
                    let fatal = !matches!(e.kind(), Kind::Pull | Kind::Other);
                    let error = Error::connection(format!("taking messages from queue '{}' failed: {e}", self.queue))
                        .with_source(e);
                    if fatal {
                        self.reset().await;
                    }
                    return Err(error);
                }
                None => {
                    self.reset().await;
                    return Err(Error::connection(format!(
                        "the message stream of queue '{}' ended; it will be reopened",
                        self.queue
                    )));
                }
            }
            while batch.len() < max {
                match messages.next().now_or_never() {
                    Some(Some(Ok(message))) => batch.push(message),
                    _ => break,
                }
            }
            let mut deliveries = Vec::with_capacity(batch.len());
            for message in batch {
                deliveries.extend(self.delivery(message).await);
            }
            if !deliveries.is_empty() {
                return Ok(deliveries);
            }
        }
    }

    async fn close(&mut self) {
        // Messages the server already sent for the outstanding pull request keep arriving for a moment after the
        // last take; collect them until the line is quiet, and put them back, instead of leaving them to ack_wait.
        let Some(messages) = self.messages.as_mut() else { return };
        let mut unclaimed = Vec::new();
        while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_millis(50), messages.next()).await {
            unclaimed.push(message);
            if unclaimed.len() >= self.prefetch {
                break;
            }
        }
        self.messages = None;
        for message in unclaimed {
            let (_, prior) = headers::from_nats(message.headers.as_ref());
            let delivered = message.info().map_or(1, |i| i.delivered.max(1) as u32);
            if let Err(e) = put_back(&self.shared, &self.queue, &message, prior + delivered - 1).await {
                tracing::debug!(error = %e, "could not put back a message at close");
            }
        }
    }
}

/// Republishes a taken message to its queue as if untouched (its counted deliveries set to `deliveries`), then acks
/// the taken copy. Used to release without counting a delivery, which a JetStream nak would count.
async fn put_back(shared: &Shared, queue: &str, message: &jetstream::Message, deliveries: u32) -> Result<()> {
    let (headers, _) = headers::from_nats(message.headers.as_ref());
    let nats_headers = headers::to_nats(&headers, &[(PRIOR_DELIVERIES, deliveries.to_string())]);
    shared.publish_acked(shared.queue_subject(queue), nats_headers, message.payload.clone()).await?;
    ack(message).await
}

async fn ack(message: &jetstream::Message) -> Result<()> {
    message.ack().await.map_err(|e| Error::connection(format!("cannot send an ack to NATS: {e}")))
}

/// Settles one delivery.
#[derive(Debug)]
struct NatsAcker(Arc<AckerState>);

#[derive(Debug)]
struct AckerState {
    shared: Arc<Shared>,
    queue: Arc<str>,
    message: jetstream::Message,
    seq: u64,
    delivery_count: u32,
    held: Held,
}

impl AckerState {
    fn forget(&self) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.seq);
    }

    async fn release(&self) -> Result<()> {
        self.forget();
        put_back(&self.shared, &self.queue, &self.message, self.delivery_count.saturating_sub(1)).await
    }
}

#[async_trait]
impl Acker for NatsAcker {
    async fn ack(&self) -> Result<()> {
        self.0.forget();
        ack(&self.0.message).await
    }

    async fn retry(&self, delay: Duration, annotations: Annotations) -> Result<()> {
        let state = &self.0;
        state.forget();
        let (mut headers, _) = headers::from_nats(state.message.headers.as_ref());
        headers.extend(annotations);
        let mut extra = vec![(PRIOR_DELIVERIES, state.delivery_count.to_string())];
        let subject = if delay.is_zero() {
            state.shared.queue_subject(&state.queue)
        } else {
            let due =
                now_millis() + delay.as_millis() as i64 + i64::from(!delay.subsec_nanos().is_multiple_of(1_000_000));
            extra.push((DELIVER_AT, due.to_string()));
            state.shared.ensure_scheduler();
            state.shared.names.delay_subject(&state.queue).into()
        };
        let nats_headers = headers::to_nats(&headers, &extra);
        state.shared.publish_acked(subject, nats_headers, state.message.payload.clone()).await?;
        ack(&state.message).await
    }

    async fn dead_letter(&self, annotations: Annotations) -> Result<()> {
        let state = &self.0;
        state.forget();
        let (mut headers, _) = headers::from_nats(state.message.headers.as_ref());
        headers.extend(annotations);
        let nats_headers = headers::to_nats(&headers, &[]);
        let subject = state.shared.names.dlq_subject(&state.queue);
        state.shared.publish_acked(subject, nats_headers, state.message.payload.clone()).await?;
        ack(&state.message).await
    }

    async fn release(&self) -> Result<()> {
        self.0.release().await
    }

    fn release_on_drop(&self) {
        self.0.forget();
        // Best effort: without a runtime, the ack deadline brings the message back anyway.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let state = self.0.clone();
            runtime.spawn(async move {
                if let Err(e) = state.release().await {
                    tracing::debug!(queue = %state.queue, error = %e, "could not release a dropped delivery");
                }
            });
        }
    }
}
