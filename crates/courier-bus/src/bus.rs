//! The bus handle: publish, send, request, schedule, shut down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use courier_core::{
    Admin, Envelope, Error, ErrorKind, Message, Request, Result, SubscriptionOptions, TraceParent, Transport,
};
use metrics::SharedString;
use serde::{Deserialize, Serialize};
use tokio::sync::{OnceCell, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::BusBuilder;
use crate::observer::{BusObserver, Consumed};

/// A running bus: the handle a service publishes, sends and requests through. Cheap to clone; all clones share
/// one set of consumers, stopped by [`shutdown`](Bus::shutdown).
///
/// ```
/// # use courier_bus::{Bus, MemoryTransport};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> courier_core::Result<()> {
/// let bus = Bus::builder("orders").engine_instance(MemoryTransport::new().into_engine()).start().await?;
/// assert_eq!(bus.service(), "orders");
/// bus.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bus {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) service: String,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) admin: Arc<dyn Admin>,
    pub(crate) observers: Vec<Arc<dyn BusObserver>>,
    pub(crate) request_timeout: Duration,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) replies: Replies,
}

#[derive(Default)]
pub(crate) struct Replies {
    queue: OnceCell<String>,
    pending: Mutex<HashMap<String, oneshot::Sender<Envelope>>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("service", &self.inner.service).field("transport", &self.inner.transport).finish()
    }
}

/// The body of a fault reply: a request whose handler gave up answers its requester with this.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    /// The failure.
    pub error: String,
}

impl Message for Fault {
    const NAME: &'static str = "courier.fault.v1";
    type Codec = courier_core::Json;
}

impl Bus {
    /// Starts configuring a bus for the service named `service` (its queue is named after it).
    pub fn builder(service: impl Into<String>) -> BusBuilder {
        BusBuilder::new(service)
    }

    /// This service's name.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// The transport underneath.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.inner.transport
    }

    /// The engine's admin view (queue depths, dead letters).
    pub fn admin(&self) -> &Arc<dyn Admin> {
        &self.inner.admin
    }

    fn envelope<M: Message>(&self, message: &M, stamp: impl FnOnce(&mut Envelope)) -> Result<Envelope> {
        let mut envelope = Envelope::for_message(&self.inner.service, message)?;
        envelope.traceparent = Some(TraceParent::new_root().to_header());
        stamp(&mut envelope);
        Ok(envelope)
    }

    /// Publishes an event to every service that subscribes to its type. Returns once the engine has it.
    pub async fn publish<M: Message>(&self, message: M) -> Result<()> {
        self.publish_with(&message, |_| {}).await
    }

    /// Sends a command to one endpoint's queue (competing consumers there share the load).
    pub async fn send<M: Message>(&self, endpoint: &str, message: M) -> Result<()> {
        self.send_with(endpoint, &message, |_| {}).await
    }

    /// Publishes an event to be delivered at `at` (or now if `at` is past).
    pub async fn schedule<M: Message>(&self, message: M, at: DateTime<Utc>) -> Result<()> {
        let envelope = self.envelope(&message, |_| {})?;
        self.publish_envelope(envelope, Some(at)).await
    }

    /// Sends a command to `endpoint`, to be delivered at `at`.
    pub async fn schedule_send<M: Message>(&self, endpoint: &str, message: M, at: DateTime<Utc>) -> Result<()> {
        let envelope = self.envelope(&message, |_| {})?;
        self.send_envelope(endpoint, envelope, Some(at)).await
    }

    /// Publishes a ready-made envelope (for relays and bridges).
    pub async fn publish_envelope(&self, envelope: Envelope, deliver_at: Option<DateTime<Utc>>) -> Result<()> {
        let label = SharedString::from(envelope.message_type.clone());
        self.deliver(None, envelope, deliver_at, label).await
    }

    /// Sends a ready-made envelope to `endpoint`.
    pub async fn send_envelope(
        &self,
        endpoint: &str,
        envelope: Envelope,
        deliver_at: Option<DateTime<Utc>>,
    ) -> Result<()> {
        let label = SharedString::from(envelope.message_type.clone());
        self.deliver(Some(endpoint), envelope, deliver_at, label).await
    }

    /// Hands an envelope to the transport: published (`endpoint` is `None`) or sent; counts it and tells observers.
    ///
    /// Not an `async fn` taking the envelope: its future would keep the envelope (and the observers' copy) inline
    /// across the engine's await, a few hundred bytes more to touch on every publish. The copy is boxed, and the
    /// envelope becomes the transport's message before the future starts.
    fn deliver<'a>(
        &'a self,
        endpoint: Option<&'a str>,
        envelope: Envelope,
        deliver_at: Option<DateTime<Utc>>,
        type_label: SharedString,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'a {
        let observed = (!self.inner.observers.is_empty()).then(|| Box::new(envelope.clone()));
        let raw = envelope.into_raw();
        self.deliver_raw(endpoint, raw, observed, deliver_at, type_label)
    }

    async fn deliver_raw(
        &self,
        endpoint: Option<&str>,
        raw: courier_core::RawMessage,
        observed: Option<Box<Envelope>>,
        deliver_at: Option<DateTime<Utc>>,
        type_label: SharedString,
    ) -> Result<()> {
        match endpoint {
            None => {
                self.inner.transport.publish(raw, deliver_at).await?;
                metrics::counter!("courier_published_total", "type" => type_label).increment(1);
            }
            Some(queue) => {
                self.inner.transport.send(queue, raw, deliver_at).await?;
                metrics::counter!("courier_sent_total", "type" => type_label).increment(1);
            }
        }
        if let Some(envelope) = observed {
            for o in &self.inner.observers {
                o.published(&envelope, endpoint);
            }
        }
        Ok(())
    }

    pub(crate) async fn publish_with<M: Message>(&self, message: &M, stamp: impl FnOnce(&mut Envelope)) -> Result<()> {
        let envelope = self.envelope(message, stamp)?;
        self.deliver(None, envelope, None, SharedString::const_str(M::NAME)).await
    }

    pub(crate) async fn send_with<M: Message>(
        &self,
        endpoint: &str,
        message: &M,
        stamp: impl FnOnce(&mut Envelope),
    ) -> Result<()> {
        let envelope = self.envelope(message, stamp)?;
        self.deliver(Some(endpoint), envelope, None, SharedString::const_str(M::NAME)).await
    }

    /// Sends a request to `endpoint` and waits for its reply, up to the bus's request timeout (30 s by default).
    pub async fn request<R: Request>(&self, endpoint: &str, request: R) -> Result<R::Response> {
        self.request_with_timeout(endpoint, request, self.inner.request_timeout).await
    }

    /// Sends a request and waits for its reply up to `timeout`. A request whose handler gives up (dead-letters it)
    /// fails here at once with an [`ErrorKind::Engine`] error carrying the handler's error.
    pub async fn request_with_timeout<R: Request>(
        &self,
        endpoint: &str,
        request: R,
        timeout: Duration,
    ) -> Result<R::Response> {
        let reply_queue = self.reply_queue().await?;
        let mut envelope = self.envelope(&request, |_| {})?;
        envelope.reply_to = Some(reply_queue.to_owned());
        envelope.expires_at = chrono::Duration::from_std(timeout).ok().map(|t| Utc::now() + t);
        let id = envelope.id.clone();
        let (tx, rx) = oneshot::channel();
        self.pending().insert(id.clone(), tx);
        let result = async {
            self.send_envelope(endpoint, envelope, None).await?;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(reply)) if reply.message_type == Fault::NAME => {
                    let fault: Fault = reply.decode()?;
                    Err(Error::engine(format!("request to '{endpoint}' failed in its handler: {}", fault.error)))
                }
                Ok(Ok(reply)) => reply.decode::<R::Response>(),
                Ok(Err(_)) => Err(Error::closed("the bus shut down while waiting for a reply")),
                Err(_) => Err(Error::timeout(format!(
                    "no reply to '{}' from endpoint '{endpoint}' within {timeout:?}; is a consumer of that endpoint \
                     running and does its handler call ctx.reply(...)?",
                    R::NAME
                ))),
            }
        }
        .await;
        self.pending().remove(&id);
        result
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Envelope>>> {
        self.inner.replies.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The per-instance reply queue, declared and consumed on first use.
    async fn reply_queue(&self) -> Result<&str> {
        let queue = self
            .inner
            .replies
            .queue
            .get_or_try_init(|| async {
                if self.inner.shutdown.is_cancelled() {
                    return Err(Error::closed("the bus is shut down"));
                }
                let short = uuid::Uuid::now_v7().simple().to_string();
                let queue = format!("{}.replies.{}", self.inner.service, &short[short.len() - 12..]);
                self.inner.transport.declare_queue(&queue).await?;
                let options = SubscriptionOptions { prefetch: 256, ..SubscriptionOptions::default() };
                let subscription = self.inner.transport.subscribe(&queue, options).await?;
                let task = tokio::spawn(crate::replies::run(
                    Arc::downgrade(&self.inner),
                    subscription,
                    self.inner.shutdown.clone(),
                ));
                self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(task);
                Ok::<_, Error>(queue)
            })
            .await?;
        Ok(queue.as_str())
    }

    pub(crate) fn deliver_reply(&self, reply: Envelope) {
        let Some(request_id) = reply.causation_id.clone() else {
            tracing::warn!(message.id = %reply.id, "reply without 'causationid' ignored");
            return;
        };
        match self.pending().remove(&request_id) {
            Some(waiter) => {
                let _ = waiter.send(reply);
            }
            None => tracing::debug!(request = %request_id, "late reply (the requester gave up) discarded"),
        }
    }

    /// Tells a requester its request failed, so it does not wait for its timeout.
    pub(crate) async fn fault_reply(&self, request: &Envelope, error: &str) {
        let Some(reply_to) = &request.reply_to else { return };
        let result = async {
            let mut envelope = Envelope::for_message(&self.inner.service, &Fault { error: error.to_owned() })?;
            envelope.causation_id = Some(request.id.clone());
            envelope.correlation_id = request.correlation_id.clone().or_else(|| Some(request.id.clone()));
            self.send_envelope(reply_to, envelope, None).await
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "could not send a fault reply");
        }
    }

    /// Tells the observers, building the event only if there are any.
    pub(crate) fn observe(&self, event: impl FnOnce() -> Consumed) {
        if self.inner.observers.is_empty() {
            return;
        }
        let event = event();
        for o in &self.inner.observers {
            o.consumed(&event);
        }
    }

    /// Stops taking messages, lets in-flight handlers finish within the shutdown timeout, releases the rest for
    /// redelivery, and removes this instance's reply queue. Idempotent.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let tasks: Vec<_> = std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
        // Acknowledgements an engine sends in the background: on the engine before this returns.
        match tokio::time::timeout(FLUSH_TIMEOUT, self.inner.transport.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not send every acknowledgement; those messages return"),
            Err(_) => tracing::warn!("acknowledgements still unsent after {FLUSH_TIMEOUT:?}; those messages return"),
        }
        if let Some(queue) = self.inner.replies.queue.get()
            && let Err(e) = self.inner.transport.delete_queue(queue).await
        {
            tracing::debug!(queue, error = %e, "could not delete the reply queue");
        }
        self.pending().clear();
    }

    /// Runs until Ctrl-C (or SIGTERM on Unix), then shuts down gracefully.
    pub async fn run_until_shutdown(&self) -> Result<()> {
        wait_for_signal()
            .await
            .map_err(|e| Error::new(ErrorKind::Engine, "cannot listen for signals").with_source(e))?;
        tracing::info!(service = %self.inner.service, "shutting down: finishing in-flight messages");
        self.shutdown().await;
        Ok(())
    }

    /// Whether [`shutdown`](Bus::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }
}

/// How long shutdown waits for the engine to send acknowledgements still queued.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

async fn wait_for_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
