//! The reference shop: the system the microservices literature draws, built only on Courier's public API.
//!
//! ```text
//!                 HTTP                      HTTP (outbox tx)
//!  client ───────────────► edge ─────────────────────────► orders ──┐ fulfilment saga
//!                           │  GET /stock (sync: need the   │       │ (SQLite saga store)
//!                           │  answer now)                  │       │
//!                           ▼                               │  HTTP + idempotency key, through
//!                       inventory ◄── ReserveStock ─────────┤  deadline / retry budget / breaker
//!                           │     ──► StockReserved ───────►│ ────────────────► payments (fake card processor)
//!                           │                               │
//!                           │        OrderConfirmed ────────┼──► shipping ──► OrderShipped ──► email
//!                           │                               │                      │
//!                           └───────────── bus (SQLite by default; RabbitMQ, NATS, Redis, PostgreSQL by URL)
//! ```
//!
//! Sync where the caller needs the answer now (the client placing an order, the stock check, the card charge);
//! async between internal services, so a service that is down delays work instead of failing it. Every service
//! has its own database ([`Databases`]: a SQLite file each in a directory, or a schema each in PostgreSQL), which
//! also holds its inbox (and for orders its outbox and sagas); the bus engine is chosen by URL.
//!
//! [`Mode::SyncChain`] runs the same shop as a chain of HTTP calls instead (orders calls inventory, payments,
//! shipping and email and waits), for the comparison `courier demo` makes.
//!
//! ```no_run
//! use courier_shop::{Databases, Mode, Shop, ShopConfig};
//!
//! # #[tokio::main] async fn main() -> anyhow::Result<()> {
//! // A SQLite file per service in ./data/shop; `Databases::parse("postgres://...")`: a schema each in PostgreSQL.
//! let databases = Databases::parse("./data/shop")?;
//! let shop = Shop::start(ShopConfig::new(databases, "sqlite://./data/shop/bus.db", Mode::Hybrid)).await?;
//! println!("the shop's API: {}/orders", shop.addresses().edge);
//! shop.shutdown().await;
//! # Ok(()) }
//! ```

// Handlers return `Result<_, Problem>`: the problem is the response, and boxing it would only add noise.
#![allow(clippy::result_large_err)]

mod catalog;
pub mod demo;
mod edge;
mod email;
mod faults;
mod inventory;
pub mod messages;
mod orders;
mod payments;
mod shipping;
mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use courier::{Bus, Engine, RelayHandle, Retry};
use courier_http::server::{Edge as EdgeLayers, HealthChecks, health};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use edge::PlaceOrder;
pub use email::{Email, EmailRequest};
pub use faults::Faults;
pub use inventory::{Product, Reservation};
pub use orders::{Fulfilment, NewOrder, OrderStatus, PAYMENT_WORKER, SAGA};
pub use payments::{Charge, ChargeRequest, DECLINED_CARD, RefundRequest};
pub use shipping::{Shipment, ShipmentRequest};
pub use store::Databases;

use store::Place;

/// How orders are fulfilled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Accept at the edge, fulfil through events and commands on the bus (the outbox, a saga, idempotent
    /// consumers).
    Hybrid,
    /// Orders calls inventory, payments, shipping and email over HTTP, in the client's request.
    SyncChain,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Hybrid => "hybrid",
            Mode::SyncChain => "sync chain",
        })
    }
}

use serde::{Deserialize, Serialize};

/// One of the shop's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// The API gateway.
    Edge,
    /// Orders and the fulfilment saga.
    Orders,
    /// Stock.
    Inventory,
    /// The card processor's front.
    Payments,
    /// Shipments.
    Shipping,
    /// Customer emails.
    Email,
}

impl Service {
    /// All of them.
    pub const ALL: [Service; 6] =
        [Service::Edge, Service::Orders, Service::Inventory, Service::Payments, Service::Shipping, Service::Email];

    /// The service's name (also its queue).
    pub fn name(self) -> &'static str {
        match self {
            Service::Edge => "edge",
            Service::Orders => "orders",
            Service::Inventory => "inventory",
            Service::Payments => "payments",
            Service::Shipping => "shipping",
            Service::Email => "email",
        }
    }

    /// The service named `name`; the error lists the names.
    pub fn from_name(name: &str) -> anyhow::Result<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| {
            anyhow::anyhow!("no service '{name}'; choose one of: edge, orders, inventory, payments, shipping, email")
        })
    }

    /// The port it listens on by default when run on its own.
    pub fn default_port(self) -> u16 {
        match self {
            Service::Edge => 8080,
            Service::Orders => 8081,
            Service::Inventory => 8082,
            Service::Payments => 8083,
            Service::Shipping => 8084,
            Service::Email => 8085,
        }
    }
}

/// The port inventory's gRPC server listens on when run on its own.
pub const INVENTORY_GRPC_PORT: u16 = 9082;

/// Where each service's HTTP API is (base URLs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addresses {
    /// The edge.
    pub edge: String,
    /// Orders.
    pub orders: String,
    /// Inventory (HTTP).
    pub inventory: String,
    /// Inventory's gRPC stock check.
    pub inventory_grpc: String,
    /// Payments.
    pub payments: String,
    /// Shipping.
    pub shipping: String,
    /// Email.
    pub email: String,
}

impl Addresses {
    /// Every service on `host` at its default port.
    pub fn defaults(host: &str) -> Self {
        let url = |s: Service| format!("http://{host}:{}", s.default_port());
        Self {
            edge: url(Service::Edge),
            orders: url(Service::Orders),
            inventory: url(Service::Inventory),
            inventory_grpc: format!("http://{host}:{INVENTORY_GRPC_PORT}"),
            payments: url(Service::Payments),
            shipping: url(Service::Shipping),
            email: url(Service::Email),
        }
    }

    /// The base URL of `service`.
    pub fn of(&self, service: Service) -> &str {
        match service {
            Service::Edge => &self.edge,
            Service::Orders => &self.orders,
            Service::Inventory => &self.inventory,
            Service::Payments => &self.payments,
            Service::Shipping => &self.shipping,
            Service::Email => &self.email,
        }
    }
}

/// Counts the shop keeps about itself.
#[derive(Debug, Default)]
pub struct Stats {
    duplicates: AtomicU64,
}

impl Stats {
    /// A repeated delivery or request that changed nothing.
    pub(crate) fn duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    /// Repeats absorbed so far (by inventory, shipping and email).
    pub fn duplicates_absorbed(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }
}

/// How to run the shop.
#[derive(Debug, Clone)]
pub struct ShopConfig {
    /// Where the services' databases go (created if missing).
    pub databases: Databases,
    /// The bus engine's URL (`sqlite://...`, `amqp://...`, `nats://...`, `redis://...`, `postgres://...`).
    pub engine_url: String,
    /// How orders are fulfilled.
    pub mode: Mode,
    /// The faults in force (change them while it runs).
    pub faults: Faults,
    /// Prefixes every queue name (`<namespace>-orders`, ...), so runs sharing a broker do not mix; empty: none.
    pub namespace: String,
}

impl ShopConfig {
    /// A configuration with no faults. `databases`: a directory (a SQLite file per service) or [`Databases`].
    pub fn new(databases: impl Into<Databases>, engine_url: impl Into<String>, mode: Mode) -> Self {
        Self {
            databases: databases.into(),
            engine_url: engine_url.into(),
            mode,
            faults: Faults::none(),
            namespace: String::new(),
        }
    }

    /// With queue names prefixed by `namespace`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The queue of the service or worker `name`.
    pub fn queue(&self, name: &str) -> String {
        if self.namespace.is_empty() { name.to_owned() } else { format!("{}-{name}", self.namespace) }
    }

    /// With these faults.
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }
}

/// A running shop (all services, or those [`Shop::start_services`] was given).
#[derive(Debug)]
pub struct Shop {
    addresses: Addresses,
    stats: Arc<Stats>,
    buses: Vec<Bus>,
    relay: Option<RelayHandle>,
    servers: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

/// What `/health/ready` checks: the service's database answers a query; the edge also needs inventory and orders
/// to be live.
fn readiness(service: Service, place: &Place, addresses: &Addresses) -> anyhow::Result<HealthChecks> {
    let mut checks = HealthChecks::new().timeout(Duration::from_secs(2));
    if service != Service::Edge {
        let place = place.clone();
        checks = checks.check("database", move || {
            let place = place.clone();
            async move { place.ping().await }
        });
    } else {
        for dependency in [Service::Inventory, Service::Orders] {
            let client = courier_http::client::HttpClient::builder(addresses.of(dependency))
                .name(dependency.name())
                .deadline(Duration::from_secs(1))
                .build()?;
            checks = checks.check(dependency.name(), move || {
                let client = client.clone();
                async move { client.get("/health/live").send().await.map(|_| ()) }
            });
        }
    }
    Ok(checks)
}

/// Retries for the shop's consumers: quick first, then backing off to at most 2 s between tries, for about a
/// minute, before the dead-letter queue.
fn retry() -> Retry {
    Retry::immediate(1).then_backoff(40, Duration::from_millis(100)).max_delay(Duration::from_secs(2))
}

impl Shop {
    /// Starts every service in this process, each HTTP API on its own port of 127.0.0.1.
    pub async fn start(config: ShopConfig) -> anyhow::Result<Self> {
        let mut listeners = Vec::new();
        for _ in Service::ALL {
            listeners.push(TcpListener::bind("127.0.0.1:0").await?);
        }
        let grpc = TcpListener::bind("127.0.0.1:0").await?;
        let url = |l: &TcpListener| l.local_addr().map(|a| format!("http://{a}"));
        let addresses = Addresses {
            edge: url(&listeners[0])?,
            orders: url(&listeners[1])?,
            inventory: url(&listeners[2])?,
            inventory_grpc: url(&grpc)?,
            payments: url(&listeners[3])?,
            shipping: url(&listeners[4])?,
            email: url(&listeners[5])?,
        };
        let services = Service::ALL.into_iter().zip(listeners).collect();
        Self::start_services(config, addresses, services, Some(grpc)).await
    }

    /// Starts the given services, each serving HTTP on its listener (and inventory gRPC on `inventory_grpc`, if
    /// inventory is among them); the others are reached at `addresses`.
    pub async fn start_services(
        config: ShopConfig,
        addresses: Addresses,
        services: Vec<(Service, TcpListener)>,
        mut inventory_grpc: Option<TcpListener>,
    ) -> anyhow::Result<Self> {
        config.databases.prepare()?;
        let engine = courier::connect(&config.engine_url).await?;
        let stats = Arc::new(Stats::default());
        let (stop, _) = watch::channel(false);
        let mut shop = Shop {
            addresses: addresses.clone(),
            stats: stats.clone(),
            buses: Vec::new(),
            relay: None,
            servers: Vec::new(),
            stop,
        };
        for (service, listener) in services {
            let place = Place::of(&config.databases, &config.namespace, service.name()).await?;
            if service == Service::Inventory
                && let Some(grpc) = inventory_grpc.take()
            {
                let inventory = inventory::Inventory::open(&place, stats.clone()).await?;
                let mut stopped = shop.stop.subscribe();
                shop.servers.push(tokio::spawn(async move {
                    let served = tonic::transport::Server::builder()
                        .layer(courier_grpc::server::TraceContextLayer::new())
                        .add_service(courier_grpc::example::InventoryServer::new(inventory))
                        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(grpc), async move {
                            let _ = stopped.wait_for(|stop| *stop).await;
                        })
                        .await;
                    if let Err(e) = served {
                        tracing::error!(error = %e, "inventory's gRPC server failed");
                    }
                }));
            }
            let router = shop.start_service(service, &config, &place, &engine).await?;
            let checks = readiness(service, &place, &addresses)?;
            let app = EdgeLayers::new().apply(router.merge(health::router(checks)));
            let mut stopped = shop.stop.subscribe();
            let signal = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            shop.servers.push(tokio::spawn(async move {
                if let Err(e) =
                    courier_http::server::serve_with_drain(listener, app, signal, Duration::from_secs(5)).await
                {
                    tracing::error!(service = service.name(), error = %e, "the HTTP server failed");
                }
            }));
        }
        Ok(shop)
    }

    async fn start_service(
        &mut self,
        service: Service,
        config: &ShopConfig,
        place: &Place,
        engine: &Engine,
    ) -> anyhow::Result<axum::Router> {
        let bus = |name: &str| Bus::builder(config.queue(name)).engine_instance(engine.clone()).retry(retry());
        let hybrid = config.mode == Mode::Hybrid;
        Ok(match service {
            Service::Edge => edge::Edge::new(place, &self.addresses).await?.router(),
            Service::Orders => {
                let queues = orders::Queues {
                    inventory: config.queue(Service::Inventory.name()),
                    payment_worker: config.queue(orders::PAYMENT_WORKER),
                };
                let orders = orders::Orders::open(place, config.mode, &self.addresses, queues).await?;
                if hybrid {
                    let saga = orders.saga_consumers(bus("orders")).start().await?;
                    let worker = orders.payment_worker(bus(orders::PAYMENT_WORKER)).concurrency(16).start().await?;
                    let relay = orders.relay(saga.clone()).start();
                    self.buses.extend([saga, worker]);
                    self.relay = Some(relay);
                }
                orders.router()
            }
            Service::Inventory => {
                let inventory = inventory::Inventory::open(place, self.stats.clone()).await?;
                if hybrid {
                    self.buses.push(inventory.consumers(bus("inventory")).start().await?);
                }
                inventory.router()
            }
            Service::Payments => payments::Payments::open(place, config.faults.clone()).await?.router(),
            Service::Shipping => {
                let shipping = shipping::Shipping::open(place, config.faults.clone(), self.stats.clone()).await?;
                if hybrid {
                    self.buses.push(shipping.consumers(bus("shipping")).start().await?);
                }
                shipping.router()
            }
            Service::Email => {
                let mailer = email::Mailer::open(place, self.stats.clone()).await?;
                if hybrid {
                    self.buses.push(mailer.consumers(bus("email")).start().await?);
                }
                mailer.router()
            }
        })
    }

    /// Where the services are.
    pub fn addresses(&self) -> &Addresses {
        &self.addresses
    }

    /// The shop's own counts.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Waits until `signal`, then shuts down.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }

    /// Stops taking messages and requests, finishes what is in flight, and stops.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        if let Some(relay) = self.relay {
            relay.shutdown().await;
        }
        for bus in &self.buses {
            bus.shutdown().await;
        }
        for server in self.servers {
            let _ = server.await;
        }
    }
}
