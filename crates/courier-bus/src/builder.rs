//! Configuring and starting a bus.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_core::{Engine, EngineRegistry, Error, Message, Result, SubscriptionOptions};
use tokio_util::sync::CancellationToken;

use crate::bus::{Inner, Replies};
use crate::consumer::{ConsumerGate, Endpoint, Handlers, run_endpoint};
use crate::handler::{Registered, Typed, handler_name};
use crate::middleware::{HandlerMetrics, ImmediateRetry, Inbox, InboxStore, Timing, Tracing};
use crate::{Bus, BusObserver, Handler, MemoryEngineFactory, Middleware, Retry};

enum EngineChoice {
    Unset,
    Url(String, EngineRegistry),
    Engine(Engine),
}

/// Configures a bus: the engine, the handlers of this service's queue and their settings.
///
/// Defaults: queue named after the service, prefetch 64, concurrency 16, [`Retry::default`], visibility timeout
/// 30 s, shutdown timeout 30 s, request timeout 30 s.
#[must_use = "a builder does nothing until .start()"]
pub struct BusBuilder {
    service: String,
    queue: Option<String>,
    engine: EngineChoice,
    handlers: HashMap<String, Registered>,
    middleware: Vec<Arc<dyn Middleware>>,
    inbox: Option<Arc<dyn InboxStore>>,
    observers: Vec<Arc<dyn BusObserver>>,
    gates: Vec<Arc<dyn ConsumerGate>>,
    retry: Retry,
    prefetch: usize,
    concurrency: usize,
    visibility_timeout: Duration,
    shutdown_timeout: Duration,
    request_timeout: Duration,
    duplicate_handler: Option<String>,
}

impl std::fmt::Debug for BusBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusBuilder")
            .field("service", &self.service)
            .field("handlers", &self.handlers.keys().collect::<Vec<_>>())
            .field("retry", &self.retry)
            .field("prefetch", &self.prefetch)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

impl BusBuilder {
    pub(crate) fn new(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            queue: None,
            engine: EngineChoice::Unset,
            handlers: HashMap::new(),
            middleware: Vec::new(),
            inbox: None,
            observers: Vec::new(),
            gates: Vec::new(),
            retry: Retry::default(),
            prefetch: 64,
            concurrency: 16,
            visibility_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            duplicate_handler: None,
        }
    }

    /// Uses the engine at `url`, looked up in `registry` (the `courier` crate's `.engine(url)` passes every engine
    /// compiled in). Resolved at [`start`](Self::start).
    pub fn engine_with(mut self, url: impl Into<String>, registry: EngineRegistry) -> Self {
        self.engine = EngineChoice::Url(url.into(), registry);
        self
    }

    /// Uses `memory://...` URLs only (what this crate alone knows).
    pub fn engine_url(self, url: impl Into<String>) -> Self {
        self.engine_with(url, EngineRegistry::new().with(MemoryEngineFactory))
    }

    /// Uses an engine already connected (share one between several buses in a process).
    pub fn engine_instance(mut self, engine: Engine) -> Self {
        self.engine = EngineChoice::Engine(engine);
        self
    }

    /// Names this service's queue (default: the service name).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Handles messages of type `M` on this service's queue, and subscribes the queue to published `M`s.
    pub fn consume<M: Message, H: Handler<M>>(mut self, handler: H) -> Self {
        let registered = Registered {
            name: handler_name::<H>().into(),
            handler: Arc::new(Typed::<M, H>::new(handler)),
            metrics: None,
        };
        if self.handlers.insert(M::NAME.to_owned(), registered).is_some() {
            self.duplicate_handler = Some(M::NAME.to_owned());
        }
        self
    }

    /// The retry policy for failed handlers (immediate retries, delayed redelivery, then the dead-letter queue).
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// The most messages held unsettled at once by this service's consumer.
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// The most handlers running at once.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// How long a taken message stays hidden before the engine assumes this consumer died (engines with leases).
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = timeout;
        self
    }

    /// How long shutdown waits for in-flight handlers before releasing their messages.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// How long [`Bus::request`] waits for a reply.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Adds a middleware, below tracing and timing and above retries and the inbox (added order = outer first).
    pub fn middleware(mut self, middleware: impl Middleware) -> Self {
        self.middleware.push(Arc::new(middleware));
        self
    }

    /// Skips messages this service's consumer already handled, recorded in `store`.
    pub fn inbox(mut self, store: impl InboxStore) -> Self {
        self.inbox = Some(Arc::new(store));
        self
    }

    /// Watches what the bus publishes and consumes.
    pub fn observer(mut self, observer: Arc<dyn BusObserver>) -> Self {
        self.observers.push(observer);
        self
    }

    /// Pauses consuming while `gate` is closed (e.g. while a circuit breaker on a dependency is open): messages
    /// wait in the queue instead of burning their retries.
    pub fn gate(mut self, gate: Arc<dyn ConsumerGate>) -> Self {
        self.gates.push(gate);
        self
    }

    fn validate(&self) -> Result<()> {
        if self.service.trim().is_empty() || self.service.contains(char::is_whitespace) {
            return Err(Error::config(format!("service name '{}' must be non-empty and without spaces", self.service)));
        }
        if let Some(name) = &self.duplicate_handler {
            return Err(Error::config(format!("two handlers for '{name}' on service '{}'; keep one", self.service)));
        }
        for (key, value) in [("prefetch", self.prefetch), ("concurrency", self.concurrency)] {
            if value == 0 {
                return Err(Error::config(format!("{key} must be at least 1 (service '{}')", self.service)));
            }
        }
        Ok(())
    }

    /// Connects the engine, declares the queue and its bindings, and starts consuming.
    pub async fn start(self) -> Result<Bus> {
        self.validate()?;
        let engine = match self.engine {
            EngineChoice::Unset => {
                return Err(Error::config(format!(
                    "no engine for service '{}': call .engine(\"sqlite://./data/courier.db\") or .engine(\"memory://\")",
                    self.service
                )));
            }
            EngineChoice::Url(url, registry) => registry.connect(&url).await?,
            EngineChoice::Engine(engine) => engine,
        };
        let queue = self.queue.unwrap_or_else(|| self.service.clone());
        let shutdown = CancellationToken::new();
        let bus = Bus {
            inner: Arc::new(Inner {
                service: self.service,
                transport: engine.transport.clone(),
                admin: engine.admin.clone(),
                observers: self.observers,
                request_timeout: self.request_timeout,
                shutdown: shutdown.clone(),
                tasks: Mutex::new(Vec::new()),
                replies: Replies::default(),
            }),
        };
        if self.handlers.is_empty() {
            return Ok(bus);
        }
        engine.transport.declare_queue(&queue).await?;
        for message_type in self.handlers.keys() {
            engine.transport.bind(&queue, message_type).await?;
        }
        let mut stack: Vec<Arc<dyn Middleware>> = vec![Arc::new(Tracing), Arc::new(Timing)];
        stack.extend(self.middleware);
        // Without immediate retries the layer would only wrap each call in one more boxed future.
        if self.retry.immediate_retries() > 0 {
            stack.push(Arc::new(ImmediateRetry::new(self.retry.clone())));
        }
        if let Some(store) = self.inbox {
            stack.push(Arc::new(Inbox::new(store)));
        }
        let queue_label: Arc<str> = Arc::from(queue.as_str());
        let mut handlers = self.handlers;
        for (message_type, registered) in handlers.iter_mut() {
            registered.metrics = Some(Arc::new(HandlerMetrics::new(&queue_label, message_type)));
        }
        let endpoint = Arc::new(Endpoint {
            queue: queue_label,
            handlers: Handlers::new(handlers),
            middleware: stack,
            retry: self.retry,
            prefetch: self.prefetch,
            concurrency: self.concurrency,
            shutdown_timeout: self.shutdown_timeout,
        });
        let options = SubscriptionOptions { prefetch: self.prefetch, visibility_timeout: self.visibility_timeout };
        let subscription = engine.transport.subscribe(&queue, options).await?;
        let task = tokio::spawn(run_endpoint(bus.clone(), endpoint, subscription, self.gates, shutdown));
        bus.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(task);
        tracing::info!(service = %bus.service(), queue, "consuming");
        Ok(bus)
    }
}
