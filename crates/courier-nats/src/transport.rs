//! [`NatsTransport`]: connecting, declaring queues and publishing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{HeaderMap, ServerAddr, Subject};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use courier_core::{Engine, Error, RawMessage, Result, Subscription, SubscriptionOptions, Transport, now_millis};
use futures::future::try_join_all;

use crate::bindings::Bindings;
use crate::headers;
use crate::names::{DELIVER_AT, Names};
use crate::options::{NatsOptions, Storage};
use crate::subscription::NatsSubscription;

/// The NATS JetStream transport: one stream of work queues per namespace, a durable pull consumer per queue,
/// explicit acks, acknowledged publishes, dead letters in a stream of their own. Also the [`Admin`](courier_core::Admin)
/// view of the namespace (`courier queues`, `courier dlq`).
///
/// A cheap handle: clones share one connection, which reconnects by itself.
///
/// ```no_run
/// # async fn demo() -> courier_core::Result<()> {
/// use courier_nats::{NatsOptions, NatsTransport};
/// let engine = NatsTransport::connect("nats://127.0.0.1:4222", NatsOptions::default()).await?.into_engine();
/// # let _ = engine; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct NatsTransport {
    pub(crate) shared: Arc<Shared>,
}

/// What every handle, subscription and acker of one transport shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The server list, without credentials, for messages.
    pub(crate) url: String,
    pub(crate) options: NatsOptions,
    pub(crate) names: Names,
    pub(crate) js: jetstream::Context,
    pub(crate) client: async_nats::Client,
    pub(crate) queue_stream: stream::Stream,
    pub(crate) dlq_stream: stream::Stream,
    pub(crate) blob_stream: stream::Stream,
    pub(crate) bindings: Bindings,
    declared: Mutex<HashSet<String>>,
    /// Each queue's subject, encoded once (see [`Shared::queue_subject`]).
    subjects: RwLock<HashMap<String, Subject>>,
    scheduler: OnceLock<tokio::task::JoinHandle<()>>,
}

/// How many queue subjects [`Shared::queue_subject`] keeps; past that it starts again (a process that sends to
/// ever new queue names, such as reply queues, must not grow it forever).
const KEPT_SUBJECTS: usize = 4096;

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(task) = self.scheduler.get() {
            task.abort();
        }
    }
}

/// Removes `user:password@` from each server of a URL list, for messages and logs.
fn redact(servers: &str) -> String {
    servers
        .split(',')
        .map(|s| match (s.split_once("://"), s.rsplit_once('@')) {
            (Some((scheme, _)), Some((_, host))) => format!("{scheme}://***@{host}"),
            _ => s.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `get_or_create_stream`, tried again a few times when the server fails to create the stream's store. NATS 2.9
/// removes an account's stream directory when its last stream is deleted; a stream created at that moment fails
/// with "error creating store for stream" (error code 10049, "could not create storage directory" in the server's
/// log), seen when one process deletes a namespace while another connects.
pub(crate) async fn get_or_create_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> std::result::Result<stream::Stream, jetstream::context::CreateStreamError> {
    let mut attempt = 0;
    loop {
        match js.get_or_create_stream(config.clone()).await {
            Err(e) if attempt < 4 && e.to_string().contains("error creating store") => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            result => return result,
        }
    }
}

pub(crate) fn js_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    let error = if lower.contains("timed out") || lower.contains("timeout") {
        Error::timeout(format!("{what}: NATS did not answer in time ({text})"))
    } else if lower.contains("no responders") {
        Error::engine(format!(
            "{what}: no JetStream stream answered ({text}); was the namespace deleted, or is JetStream off?"
        ))
    } else if lower.contains("disconnect") || lower.contains("connection") || lower.contains("broken pipe") {
        Error::connection(format!("{what}: {text}"))
    } else {
        Error::engine(format!("{what}: {text}"))
    };
    error.with_source(e)
}

fn storage(options: &NatsOptions) -> stream::StorageType {
    match options.storage {
        Storage::File => stream::StorageType::File,
        Storage::Memory => stream::StorageType::Memory,
    }
}

impl NatsTransport {
    /// Connects to the servers (`nats://host:4222`, several separated by commas) and creates the namespace's
    /// streams and bindings bucket if they do not exist.
    ///
    /// Fails with [`ErrorKind::Config`](courier_core::ErrorKind::Config) for a bad server address or option, and
    /// with [`ErrorKind::Connection`](courier_core::ErrorKind::Connection), naming the URL, when no server answers
    /// or JetStream is not enabled.
    pub async fn connect(servers: &str, options: NatsOptions) -> Result<Self> {
        options.validate()?;
        let url = redact(servers);
        let addrs = servers
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<ServerAddr>()
                    .map_err(|e| Error::config(format!("invalid NATS server address '{}' in '{url}': {e}", redact(s))))
            })
            .collect::<Result<Vec<_>>>()?;
        let event_url = url.clone();
        let client = async_nats::ConnectOptions::new()
            .name(&options.connection_name)
            .connection_timeout(options.connect_timeout)
            .request_timeout(Some(options.request_timeout))
            .max_reconnects(None)
            .event_callback(move |event| {
                let url = event_url.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => tracing::info!(%url, "connected to NATS"),
                        async_nats::Event::Disconnected => {
                            tracing::warn!(%url, "disconnected from NATS; reconnecting")
                        }
                        other => tracing::debug!(%url, event = %other, "NATS connection event"),
                    }
                }
            })
            .connect(addrs)
            .await
            .map_err(|e| {
                Error::connection(format!(
                    "cannot connect to NATS at '{url}': is nats-server running there with JetStream enabled \
                     (`nats-server -js`)? Check the host, port and credentials in the engine URL"
                ))
                .with_source(e)
            })?;
        let js = jetstream::ContextBuilder::new().timeout(options.request_timeout).build(client.clone());
        let names = Names::new(&options.namespace);
        let queue_stream = get_or_create_stream(
            &js,
            stream::Config {
                name: names.queue_stream(),
                description: Some(format!("Courier queues of namespace '{}'", options.namespace)),
                subjects: vec![format!("{}>", names.queue_prefix()), format!("{}>", names.delay_prefix())],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: storage(&options),
                num_replicas: options.replicas,
                max_consumers: -1,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| {
            if e.to_string().to_ascii_lowercase().contains("no responders") {
                Error::connection(format!(
                    "NATS at '{url}' answered but JetStream is not available: start nats-server with JetStream \
                         enabled (`nats-server -js`) or enable it for the account"
                ))
                .with_source(e)
            } else {
                js_error(&format!("cannot create the queue stream on '{url}'"), e)
            }
        })?;
        let dlq_stream = get_or_create_stream(
            &js,
            stream::Config {
                name: names.dlq_stream(),
                description: Some(format!("Courier dead letters of namespace '{}'", options.namespace)),
                subjects: vec![format!("{}>", names.dlq_prefix())],
                retention: stream::RetentionPolicy::Limits,
                storage: storage(&options),
                num_replicas: options.replicas,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| js_error(&format!("cannot create the dead-letter stream on '{url}'"), e))?;
        let blob_stream =
            get_or_create_stream(&js, crate::blobs::stream_config(&names, storage(&options), options.replicas))
                .await
                .map_err(|e| js_error(&format!("cannot create the large-body stream on '{url}'"), e))?;
        let bindings = Bindings::open(&js, &names, &options).await?;
        Ok(Self {
            shared: Arc::new(Shared {
                url,
                options,
                names,
                js,
                client,
                queue_stream,
                dlq_stream,
                blob_stream,
                bindings,
                declared: Mutex::new(HashSet::new()),
                subjects: RwLock::new(HashMap::new()),
                scheduler: OnceLock::new(),
            }),
        })
    }

    /// This transport as an [`Engine`].
    pub fn into_engine(self) -> Engine {
        Engine::new(Arc::new(self))
    }

    /// The namespace this transport works in.
    pub fn namespace(&self) -> &str {
        &self.shared.options.namespace
    }

    /// The underlying NATS client (for health checks or other subjects).
    pub fn client(&self) -> &async_nats::Client {
        &self.shared.client
    }

    /// Deletes the namespace from the server: its queues, delayed messages, dead letters and bindings. For tests
    /// and tear-down; the transport is unusable afterwards.
    pub async fn delete_namespace(&self) -> Result<()> {
        let shared = &self.shared;
        if let Some(task) = shared.scheduler.get() {
            task.abort();
        }
        shared.bindings.stop();
        for name in [
            shared.names.queue_stream(),
            shared.names.dlq_stream(),
            shared.names.bindings_stream(),
            shared.names.blob_stream(),
        ] {
            if let Err(e) = shared.js.delete_stream(&name).await
                && !e.to_string().to_ascii_lowercase().contains("not found")
            {
                return Err(js_error(&format!("cannot delete stream '{name}'"), e));
            }
        }
        Ok(())
    }
}

impl Shared {
    /// The queue's durable consumer config; `ack_wait` is the visibility timeout.
    fn consumer_config(&self, queue: &str, ack_wait: Duration) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(self.names.consumer(queue)),
            description: Some(format!("Courier queue '{queue}'")),
            filter_subject: self.names.queue_subject(queue),
            ack_policy: consumer::AckPolicy::Explicit,
            deliver_policy: consumer::DeliverPolicy::All,
            ack_wait,
            max_deliver: -1,
            max_ack_pending: self.options.max_ack_pending,
            memory_storage: self.options.storage == Storage::Memory,
            ..Default::default()
        }
    }

    /// Gets the queue's consumer, creating it if needed; with `ack_wait`, makes it the consumer's.
    pub(crate) async fn queue_consumer(
        &self,
        queue: &str,
        ack_wait: Option<Duration>,
    ) -> Result<consumer::PullConsumer> {
        let name = self.names.consumer(queue);
        let found = self.queue_stream.get_consumer::<consumer::pull::Config>(&name).await;
        let consumer = match found {
            Ok(consumer) => consumer,
            Err(get_error) => {
                let config = self.consumer_config(queue, ack_wait.unwrap_or(Duration::from_secs(30)));
                match self.queue_stream.create_consumer(config).await {
                    Ok(consumer) => consumer,
                    // Another process may have created it meanwhile.
                    Err(create_error) => match self.queue_stream.get_consumer(&name).await {
                        Ok(consumer) => consumer,
                        Err(_) => {
                            tracing::debug!(error = %get_error, "queue consumer lookup failed before create");
                            return Err(js_error(
                                &format!("cannot create the consumer of queue '{queue}' on '{}'", self.url),
                                create_error,
                            ));
                        }
                    },
                }
            }
        };
        self.declared.lock().unwrap_or_else(|p| p.into_inner()).insert(queue.to_owned());
        if let Some(wait) = ack_wait
            && consumer.cached_info().config.ack_wait != wait
        {
            let config = self.consumer_config(queue, wait);
            // JetStream 2.9 updates a durable consumer created again with a changed config.
            match self.queue_stream.create_consumer(config).await {
                Ok(updated) => return Ok(updated),
                Err(e) => tracing::warn!(
                    queue,
                    error = %e,
                    "cannot change the queue's visibility timeout (ack_wait); keeping the consumer's"
                ),
            }
        }
        Ok(consumer)
    }

    /// The body of a message whose headers may name a stored large body.
    pub(crate) async fn body(&self, headers: &mut courier_core::Headers, body: Bytes) -> Bytes {
        let Some(claim) = headers.remove(crate::blobs::BLOB) else { return body };
        match crate::blobs::load(&self.blob_stream, &self.names, &claim).await {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(error = %e, "delivering a message without its large body");
                body
            }
        }
    }

    pub(crate) fn forget_declared(&self, queue: &str) {
        self.declared.lock().unwrap_or_else(|p| p.into_inner()).remove(queue);
    }

    /// Publishes one message and returns the future of its acknowledgement.
    pub(crate) async fn start_publish(
        &self,
        subject: impl Into<Subject>,
        mut headers: HeaderMap,
        mut body: Bytes,
    ) -> Result<jetstream::context::PublishAckFuture> {
        let header_len = || -> usize {
            headers
                .iter()
                .map(|(n, v)| AsRef::<str>::as_ref(n).len() + v.iter().map(|v| v.as_str().len() + 4).sum::<usize>())
                .sum()
        };
        if body.len() > 4096 && crate::blobs::too_big(&self.client, body.len(), header_len()) {
            // Boxed: the rare path would otherwise make every publish's future as large as its own.
            let claim = Box::pin(crate::blobs::store(&self.js, &self.names, &body)).await?;
            headers.insert(crate::blobs::BLOB, claim.as_str());
            body = Bytes::new();
        }
        self.js
            .send_publish(subject.into(), jetstream::message::PublishMessage::build().payload(body).headers(headers))
            .await
            .map_err(|e| js_error(&format!("cannot publish to NATS at '{}'", self.url), e))
    }

    /// Publishes one message and waits until JetStream stored it.
    pub(crate) async fn publish_acked(
        &self,
        subject: impl Into<Subject>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<u64> {
        let ack = self.start_publish(subject, headers, body).await?;
        let ack = ack.await.map_err(|e| js_error(&format!("NATS at '{}' did not store a publish", self.url), e))?;
        Ok(ack.sequence)
    }

    /// Starts the scheduler that moves due delayed messages to their queues, once per transport.
    pub(crate) fn ensure_scheduler(&self) {
        self.scheduler.get_or_init(|| crate::scheduler::spawn(self));
    }

    /// Puts a message on each queue, now or (via the delay subject) at `deliver_at`; waits for every ack.
    async fn enqueue(&self, queues: &[String], message: RawMessage, deliver_at: Option<DateTime<Utc>>) -> Result<()> {
        let due = deliver_at.map(|t| t.timestamp_millis()).filter(|due| *due > now_millis());
        let mut extra = Vec::new();
        if let Some(due) = due {
            extra.push((DELIVER_AT, due.to_string()));
            self.ensure_scheduler();
        }
        let nats_headers = headers::to_nats(&message.headers, &extra);
        let subject = |queue: &str| {
            if due.is_some() { Subject::from(self.names.delay_subject(queue)) } else { self.queue_subject(queue) }
        };
        match queues {
            [] => Ok(()),
            [queue] => self.publish_acked(subject(queue), nats_headers, message.body).await.map(drop),
            // Boxed: fanning out is rarer than one queue, and its future is the larger.
            many => Box::pin(self.fan_out(many.iter().map(|q| subject(q)), nats_headers, message.body)).await,
        }
    }

    /// Publishes one message to several subjects, all acks awaited together.
    async fn fan_out(
        &self,
        subjects: impl Iterator<Item = Subject>,
        nats_headers: HeaderMap,
        body: Bytes,
    ) -> Result<()> {
        let mut acks = Vec::with_capacity(subjects.size_hint().0);
        for subject in subjects {
            acks.push(self.start_publish(subject, nats_headers.clone(), body.clone()).await?);
        }
        try_join_all(acks.into_iter().map(std::future::IntoFuture::into_future))
            .await
            .map_err(|e| js_error(&format!("NATS at '{}' did not store a publish", self.url), e))
            .map(drop)
    }

    /// `<ns>.q.<queue>`, encoded once per queue name rather than at every publish.
    pub(crate) fn queue_subject(&self, queue: &str) -> Subject {
        if let Some(subject) = self.subjects.read().unwrap_or_else(|p| p.into_inner()).get(queue) {
            return subject.clone();
        }
        let subject = Subject::from(self.names.queue_subject(queue));
        let mut subjects = self.subjects.write().unwrap_or_else(|p| p.into_inner());
        if subjects.len() >= KEPT_SUBJECTS {
            subjects.clear();
        }
        subjects.insert(queue.to_owned(), subject.clone());
        subject
    }
}

#[async_trait]
impl Transport for NatsTransport {
    async fn declare_queue(&self, queue: &str) -> Result<()> {
        let known = self.shared.declared.lock().unwrap_or_else(|p| p.into_inner()).contains(queue);
        if !known {
            self.shared.queue_consumer(queue, None).await?;
        }
        Ok(())
    }

    async fn bind(&self, queue: &str, message_type: &str) -> Result<()> {
        self.declare_queue(queue).await?;
        self.shared.bindings.bind(&self.shared.names, queue, message_type).await
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        let shared = &self.shared;
        shared.forget_declared(queue);
        shared.bindings.unbind_queue(&shared.names, queue).await?;
        let name = shared.names.consumer(queue);
        if let Err(e) = shared.queue_stream.delete_consumer(&name).await
            && !e.to_string().to_ascii_lowercase().contains("not found")
        {
            return Err(js_error(&format!("cannot delete the consumer of queue '{queue}'"), e));
        }
        for subject in [shared.names.queue_subject(queue), shared.names.delay_subject(queue)] {
            shared
                .queue_stream
                .purge()
                .filter(subject)
                .await
                .map_err(|e| js_error(&format!("cannot purge queue '{queue}'"), e))?;
        }
        Ok(())
    }

    async fn publish(&self, message: RawMessage, deliver_at: Option<DateTime<Utc>>) -> Result<()> {
        let message_type = message.message_type().unwrap_or_default();
        let queues = self.shared.bindings.queues(message_type);
        self.shared.enqueue(&queues, message, deliver_at).await
    }

    async fn send(&self, queue: &str, message: RawMessage, deliver_at: Option<DateTime<Utc>>) -> Result<()> {
        self.shared.enqueue(std::slice::from_ref(&queue.to_owned()), message, deliver_at).await
    }

    async fn subscribe(&self, queue: &str, options: SubscriptionOptions) -> Result<Box<dyn Subscription>> {
        let ack_wait = options.visibility_timeout.max(Duration::from_secs(1));
        let consumer = self.shared.queue_consumer(queue, Some(ack_wait)).await?;
        self.shared.ensure_scheduler();
        Ok(Box::new(NatsSubscription::new(self.shared.clone(), queue, consumer, options.prefetch, ack_wait)))
    }
}
