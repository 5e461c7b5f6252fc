//! What a handler knows about the message it handles, and how it sends more.

use std::sync::Arc;

use courier_core::{Envelope, Message, Result, TraceParent};

use crate::Bus;
use crate::middleware::HandlerMetrics;

/// The handler's view of the message being handled: ids, headers, attempt, and a way to publish, send and reply
/// that carries correlation, causation and trace context forward. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

struct Inner {
    envelope: Envelope,
    queue: Arc<str>,
    delivery_count: u32,
    /// Made on first use: most handlings never ask for it when no tracing subscriber records spans.
    trace: std::sync::OnceLock<TraceParent>,
    bus: Bus,
    metrics: Option<Arc<HandlerMetrics>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("message_id", &self.message_id())
            .field("message_type", &self.message_type())
            .field("queue", &self.inner.queue)
            .field("attempt", &self.inner.delivery_count)
            .finish()
    }
}

impl Context {
    pub(crate) fn new(
        envelope: Envelope,
        queue: Arc<str>,
        delivery_count: u32,
        bus: Bus,
        metrics: Option<Arc<HandlerMetrics>>,
    ) -> Self {
        let trace = std::sync::OnceLock::new();
        Self { inner: Arc::new(Inner { envelope, queue, delivery_count, trace, bus, metrics }) }
    }

    /// Takes the envelope back once the handler is done (no copy unless the handler kept a clone of the context).
    pub(crate) fn into_envelope(self) -> Envelope {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner.envelope,
            Err(shared) => shared.envelope.clone(),
        }
    }

    /// The whole envelope (attributes, extensions and body).
    pub fn envelope(&self) -> &Envelope {
        &self.inner.envelope
    }

    /// The message id.
    pub fn message_id(&self) -> &str {
        &self.inner.envelope.id
    }

    /// The message type name.
    pub fn message_type(&self) -> &str {
        &self.inner.envelope.message_type
    }

    /// The correlation id: the one the message carried, or its own id if it started the conversation.
    pub fn correlation_id(&self) -> &str {
        self.inner.envelope.correlation_id.as_deref().unwrap_or(&self.inner.envelope.id)
    }

    /// The id of the message that caused this one, if any.
    pub fn causation_id(&self) -> Option<&str> {
        self.inner.envelope.causation_id.as_deref()
    }

    /// The service that produced the message.
    pub fn source(&self) -> &str {
        &self.inner.envelope.source
    }

    /// Extension headers (anything that is not a CloudEvents attribute Courier models).
    pub fn headers(&self) -> &courier_core::Headers {
        &self.inner.envelope.extensions
    }

    /// One extension header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.inner.envelope.extensions.get(name).map(String::as_str)
    }

    /// The delivery attempt, 1 on first delivery (immediate retries within one delivery share it).
    pub fn attempt(&self) -> u32 {
        self.inner.delivery_count
    }

    /// The queue the message came from.
    pub fn queue(&self) -> &str {
        &self.inner.queue
    }

    /// The consumer's name, the key the inbox records ids under: the queue (one handler per message type and
    /// queue, so queue + message id identifies one handling).
    pub fn consumer(&self) -> &str {
        &self.inner.queue
    }

    /// Metric handles for this handler, made once at start.
    pub(crate) fn handler_metrics(&self) -> Option<&HandlerMetrics> {
        self.inner.metrics.as_deref()
    }

    /// The trace context of this handling (a child of the message's `traceparent`).
    pub fn trace(&self) -> TraceParent {
        *self.inner.trace.get_or_init(|| {
            let parent = self.inner.envelope.traceparent.as_deref().and_then(TraceParent::parse);
            parent.map_or_else(TraceParent::new_root, |parent| parent.child())
        })
    }

    /// The bus this handler runs on.
    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    /// Stamps an outgoing envelope with this message's correlation, causation and trace.
    pub(crate) fn stamp(&self, out: &mut Envelope) {
        out.correlation_id = Some(self.correlation_id().to_owned());
        out.causation_id = Some(self.message_id().to_owned());
        out.traceparent = Some(self.trace().child().to_header());
        out.tracestate.clone_from(&self.inner.envelope.tracestate);
    }

    /// Publishes an event caused by this message (fan-out to every subscriber).
    pub async fn publish<M: Message>(&self, message: M) -> Result<()> {
        self.bus().publish_with(&message, |env| self.stamp(env)).await
    }

    /// Sends a command caused by this message to one endpoint.
    pub async fn send<M: Message>(&self, endpoint: &str, message: M) -> Result<()> {
        self.bus().send_with(endpoint, &message, |env| self.stamp(env)).await
    }

    /// Replies to a request. Fails with a configuration error if the message did not ask for a reply.
    pub async fn reply<M: Message>(&self, message: M) -> Result<()> {
        let Some(reply_to) = self.inner.envelope.reply_to.clone() else {
            return Err(courier_core::Error::config(format!(
                "message {} ({}) has no 'replyto': it was published or sent, not requested, so there is nobody to \
                 reply to",
                self.message_id(),
                self.message_type()
            )));
        };
        self.bus().send_with(&reply_to, &message, |env| self.stamp(env)).await
    }
}

impl courier_core::MessageRef for Context {
    fn message_id(&self) -> &str {
        Context::message_id(self)
    }
    fn consumer(&self) -> &str {
        Context::consumer(self)
    }
}
