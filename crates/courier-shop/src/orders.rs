//! Orders: owns orders and runs their fulfilment.
//!
//! - **Hybrid** (the default): `POST /orders` saves the order and its `OrderPlaced` event in one transaction (the
//!   outbox) and answers `202 Accepted` at once. The fulfilment saga then drives it over the bus: reserve stock
//!   (inventory) -> charge the card (the payment worker calls the payments API through the resilience pipeline,
//!   with the order id as idempotency key; its circuit breaker pauses the worker's consumer while open) -> ship
//!   (shipping) -> `Completed` when `OrderShipped` arrives. A rejected reservation cancels the order; a declined
//!   card releases the stock and cancels it, each with its reason.
//! - **Sync chain** (the comparison): `POST /orders` calls inventory, payments, shipping and email over HTTP one
//!   after another and answers when all did; if one fails it undoes what was done and the client gets the error.
//!
//! `GET /orders/{id}` answers `{order_id, status, reason}`; `GET /orders` counts orders by status.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::routing::get;
use axum::{Json, Router};
use courier::postgres::sqlx;
use courier::postgres::{PgOutbox, PgSagaStore};
use courier::prelude::*;
use courier::saga::{Actions, Saga, SagaState};
use courier::sqlite::{SqliteOutbox, SqliteSagaStore};
use courier::{BusBuilder, HandlerError, OutboxRelay, SagaStore};
use courier_http::client::{CircuitBreakerConfig, HttpClient, RetryPolicy, Window};
use courier_http::{HttpError, Problem};
use http::StatusCode;
use rusqlite::{OptionalExtension, params};

use crate::email::EmailRequest;
use crate::messages::*;
use crate::payments::{Charge, ChargeRequest, RefundRequest};
use crate::shipping::{Shipment, ShipmentRequest};
use crate::store::Place;
use crate::{Addresses, Mode};

/// The saga's stored name.
pub const SAGA: &str = "order-fulfilment";
/// The queue of the payment worker (prefixed by [`ShopConfig::namespace`](crate::ShopConfig::namespace)).
pub const PAYMENT_WORKER: &str = "orders-payments";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, email TEXT NOT NULL, lines TEXT NOT NULL,
    total_cents BIGINT NOT NULL, card TEXT NOT NULL, status TEXT NOT NULL, reason TEXT, placed_at BIGINT NOT NULL);
";
/// Saves a new order (no row if it exists: a retried request is the same order).
const PLACE: &str = "INSERT INTO orders (id, email, lines, total_cents, card, status, placed_at)
    VALUES ($1, $2, $3, $4, $5, 'Placed', $6) ON CONFLICT (id) DO NOTHING";
/// Saves an order's end in the sync chain.
const SAVE_FINAL: &str = "INSERT INTO orders (id, email, lines, total_cents, card, status, reason, placed_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    ON CONFLICT (id) DO UPDATE SET status = excluded.status, reason = excluded.reason";
const STATUS: &str = "SELECT status, reason FROM orders WHERE id = $1";
const STATUSES: &str = "SELECT id, status FROM orders";

/// What the edge sends to place an order (already validated and priced there).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewOrder {
    /// The order's id, chosen by the edge (so a retried request is the same order).
    pub order_id: Uuid,
    /// The customer's email address.
    pub email: String,
    /// What is ordered.
    pub lines: Vec<Line>,
    /// The amount to charge.
    pub total_cents: u64,
    /// The card.
    pub card: String,
}

/// An order's state as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderStatus {
    /// The order.
    pub order_id: Uuid,
    /// `Placed`, `Reserved`, `Paid`, `Completed` or `Cancelled`.
    pub status: String,
    /// Why it was cancelled.
    pub reason: Option<String>,
}

impl OrderStatus {
    /// Whether the order reached an end (`Completed` or `Cancelled`).
    pub fn is_final(&self) -> bool {
        self.status == "Completed" || self.status == "Cancelled"
    }
}

/// The fulfilment saga's state: facts about the order, from which its status follows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Fulfilment {
    /// The order as placed (set by `OrderPlaced`).
    pub placed: Option<OrderPlaced>,
    /// Stock is held.
    pub reserved: bool,
    /// The card was charged.
    pub charged: bool,
    /// The order was shipped.
    pub shipped: bool,
    /// Why it was cancelled, if it was.
    pub cancelled: Option<String>,
}

impl SagaState for Fulfilment {
    fn status(&self) -> String {
        match self {
            Self { cancelled: Some(_), .. } => "Cancelled",
            Self { shipped: true, .. } => "Completed",
            Self { charged: true, .. } => "Paid",
            Self { reserved: true, .. } => "Reserved",
            _ => "Placed",
        }
        .to_owned()
    }

    fn is_finished(&self) -> bool {
        self.cancelled.is_some() || self.shipped
    }
}

fn id_of(order_id: &Uuid) -> String {
    order_id.to_string()
}

/// The queues the saga sends commands to.
#[derive(Debug, Clone)]
pub(crate) struct Queues {
    /// Inventory's queue.
    pub(crate) inventory: String,
    /// The payment worker's queue.
    pub(crate) payment_worker: String,
}

/// The saga: each transition records a fact and sends what comes next.
fn fulfilment(store: impl SagaStore, queues: Queues) -> Saga<Fulfilment> {
    let (reserve_to, release_to, charge_to) =
        (queues.inventory.clone(), queues.inventory.clone(), queues.payment_worker.clone());
    Saga::<Fulfilment>::new(SAGA, store)
        .on(
            |e: &OrderPlaced| id_of(&e.order_id),
            move |state, e, actions| {
                state.placed = Some(e.clone());
                actions.send(&reserve_to, &ReserveStock { order_id: e.order_id, lines: e.lines.clone() })
            },
        )
        .on(
            |e: &StockReserved| id_of(&e.order_id),
            move |state: &mut Fulfilment, e, actions| {
                state.reserved = true;
                let Some(placed) = &state.placed else {
                    return Err(HandlerError::transient("stock reserved before the order is known; retrying"));
                };
                let charge =
                    ChargePayment { order_id: e.order_id, card: placed.card.clone(), amount_cents: placed.total_cents };
                actions.send(&charge_to, &charge).map_err(HandlerError::from)
            },
        )
        .on(
            |e: &StockRejected| id_of(&e.order_id),
            |state, e, _actions: &mut Actions<'_>| {
                state.cancelled = Some(e.reason.clone());
                Ok::<(), HandlerError>(())
            },
        )
        .on(
            |e: &PaymentCharged| id_of(&e.order_id),
            |state: &mut Fulfilment, e, actions| {
                state.charged = true;
                let Some(placed) = &state.placed else {
                    return Err(HandlerError::transient("payment charged before the order is known; retrying"));
                };
                let confirmed =
                    OrderConfirmed { order_id: e.order_id, email: placed.email.clone(), lines: placed.lines.clone() };
                actions.publish(&confirmed).map_err(HandlerError::from)
            },
        )
        .on(
            |e: &PaymentDeclined| id_of(&e.order_id),
            move |state, e, actions| {
                state.cancelled = Some(format!("payment declined: {}", e.reason));
                actions.send(&release_to, &ReleaseStock { order_id: e.order_id })
            },
        )
        .on(
            |e: &OrderShipped| id_of(&e.order_id),
            |state, _e, _actions: &mut Actions<'_>| {
                state.shipped = true;
                Ok::<(), HandlerError>(())
            },
        )
}

/// The orders database: orders, the outbox and the sagas, in one SQLite file or one PostgreSQL schema.
#[derive(Debug, Clone)]
enum OrdersDb {
    Sqlite { outbox: SqliteOutbox, sagas: SqliteSagaStore },
    Postgres { outbox: PgOutbox, sagas: PgSagaStore },
}

impl OrdersDb {
    async fn open(place: &Place) -> anyhow::Result<Self> {
        Ok(match place {
            Place::Sqlite(path) => {
                let outbox = SqliteOutbox::open(path, "orders").await?;
                outbox.transaction(|tx| tx.execute_batch(SCHEMA)).await?;
                let sagas = SqliteSagaStore::open(&outbox).await?;
                Self::Sqlite { outbox, sagas }
            }
            Place::Postgres { pool, schema } => {
                let outbox = PgOutbox::with_pool(pool.clone(), schema, "orders").await?;
                sqlx::raw_sql(SCHEMA).execute(pool).await?;
                let sagas = PgSagaStore::new(&outbox);
                Self::Postgres { outbox, sagas }
            }
        })
    }

    fn sagas(&self) -> &dyn SagaStore {
        match self {
            Self::Sqlite { sagas, .. } => sagas,
            Self::Postgres { sagas, .. } => sagas,
        }
    }

    /// Saves a new order and, if it is new, its `OrderPlaced` in the same transaction; `true` if it was new.
    async fn place(&self, order: NewOrder) -> anyhow::Result<bool> {
        let (id, lines) = (order.order_id.to_string(), serde_json::to_string(&order.lines)?);
        let (total, now) = (i64::try_from(order.total_cents)?, chrono::Utc::now().timestamp_millis());
        let event = OrderPlaced {
            order_id: order.order_id,
            email: order.email,
            lines: order.lines,
            total_cents: order.total_cents,
            card: order.card,
        };
        match self {
            Self::Sqlite { outbox, .. } => Ok(outbox
                .transaction(move |tx| {
                    let params = params![id, event.email, lines, total, event.card, now];
                    let inserted = tx.execute(PLACE, params)? == 1;
                    if inserted {
                        tx.publish(&event).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                    }
                    Ok::<_, rusqlite::Error>(inserted)
                })
                .await?),
            Self::Postgres { outbox, .. } => {
                let mut tx = outbox.begin().await?;
                let place = sqlx::query(PLACE).bind(id).bind(&event.email).bind(lines).bind(total).bind(&event.card);
                let inserted = place.bind(now).execute(&mut **tx).await?.rows_affected() == 1;
                if inserted {
                    tx.publish(&event).await?;
                }
                tx.commit().await?;
                Ok(inserted)
            }
        }
    }

    /// Saves the end of a sync-chain order.
    async fn save_final(&self, order: NewOrder, status: &'static str, reason: Option<String>) -> anyhow::Result<()> {
        let (id, lines) = (order.order_id.to_string(), serde_json::to_string(&order.lines)?);
        let (total, now) = (i64::try_from(order.total_cents)?, chrono::Utc::now().timestamp_millis());
        match self {
            Self::Sqlite { outbox, .. } => {
                outbox
                    .transaction(move |tx| {
                        tx.execute(SAVE_FINAL, params![id, order.email, lines, total, order.card, status, reason, now])
                    })
                    .await?;
            }
            Self::Postgres { outbox, .. } => {
                let save = sqlx::query(SAVE_FINAL).bind(id).bind(order.email).bind(lines).bind(total);
                save.bind(order.card).bind(status).bind(reason).bind(now).execute(outbox.pool()).await?;
            }
        }
        Ok(())
    }

    /// The orders table's status and reason of an order.
    async fn status(&self, order_id: Uuid) -> anyhow::Result<Option<(String, Option<String>)>> {
        let id = order_id.to_string();
        Ok(match self {
            Self::Sqlite { outbox, .. } => {
                outbox
                    .transaction(move |tx| tx.query_row(STATUS, [id], |r| Ok((r.get(0)?, r.get(1)?))).optional())
                    .await?
            }
            Self::Postgres { outbox, .. } => sqlx::query_as(STATUS).bind(id).fetch_optional(outbox.pool()).await?,
        })
    }

    /// Every order's id and status as the orders table has it.
    async fn statuses(&self) -> anyhow::Result<Vec<(String, String)>> {
        Ok(match self {
            Self::Sqlite { outbox, .. } => {
                outbox
                    .transaction(|tx| {
                        let mut stmt = tx.prepare(STATUSES)?;
                        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<Vec<_>>>()
                    })
                    .await?
            }
            Self::Postgres { outbox, .. } => sqlx::query_as(STATUSES).fetch_all(outbox.pool()).await?,
        })
    }
}

/// The orders service.
#[derive(Debug, Clone)]
pub(crate) struct Orders {
    db: OrdersDb,
    queues: Queues,
    mode: Mode,
    inventory: HttpClient,
    payments: HttpClient,
    shipping: HttpClient,
    email: HttpClient,
}

impl Orders {
    pub(crate) async fn open(place: &Place, mode: Mode, addresses: &Addresses, queues: Queues) -> anyhow::Result<Self> {
        let db = OrdersDb::open(place).await?;
        let call = |url: &str, deadline_ms: u64| {
            HttpClient::builder(url)
                .deadline(Duration::from_millis(deadline_ms))
                .attempt_timeout(Duration::from_millis(deadline_ms * 4 / 5))
                .retry(RetryPolicy::budgeted())
                .build()
        };
        // Payments gets a breaker: the payment worker's consumer pauses while it is open.
        let payments = HttpClient::builder(&addresses.payments)
            .name("payments")
            .deadline(Duration::from_millis(1500))
            .attempt_timeout(Duration::from_millis(1000))
            .retry(RetryPolicy::budgeted().max_attempts(2))
            .circuit_breaker(
                CircuitBreakerConfig::failure_rate(0.5)
                    .window(Window::Count(20))
                    .minimum_calls(10)
                    .open_for(Duration::from_secs(2))
                    .half_open_calls(3),
            )
            .build()?;
        Ok(Self {
            db,
            queues,
            mode,
            inventory: call(&addresses.inventory, 1000)?,
            payments,
            shipping: call(&addresses.shipping, 1000)?,
            email: call(&addresses.email, 1000)?,
        })
    }

    /// The relay that publishes what the outbox holds through `bus`.
    pub(crate) fn relay(&self, bus: Bus) -> OutboxRelay {
        match &self.db {
            OrdersDb::Sqlite { outbox, .. } => OutboxRelay::new(outbox.clone(), bus),
            OrdersDb::Postgres { outbox, .. } => OutboxRelay::new(outbox.clone(), bus),
        }
    }

    /// The saga and its bus consumers (queue `orders`).
    pub(crate) fn saga_consumers(&self, builder: BusBuilder) -> BusBuilder {
        let queues = self.queues.clone();
        match &self.db {
            OrdersDb::Sqlite { sagas, .. } => fulfilment(sagas.clone(), queues).attach(builder),
            OrdersDb::Postgres { sagas, .. } => fulfilment(sagas.clone(), queues).attach(builder),
        }
    }

    /// The payment worker (queue `orders-payments`): charges through the payments API, paused while its breaker
    /// is open.
    pub(crate) fn payment_worker(&self, builder: BusBuilder) -> BusBuilder {
        let payments = self.payments.clone();
        let builder = match self.payments.circuit_breaker() {
            Some(breaker) => builder.gate(std::sync::Arc::new(breaker.clone())),
            None => builder,
        };
        builder.consume(move |command: ChargePayment, ctx: Context| {
            let payments = payments.clone();
            async move {
                let order_id = command.order_id;
                let request = ChargeRequest { order_id, card: command.card, amount_cents: command.amount_cents };
                match charge(&payments, request).await {
                    Ok(charge) => ctx.publish(PaymentCharged { order_id, charge_id: charge.charge_id }).await?,
                    Err(e) if e.status() == Some(StatusCode::PAYMENT_REQUIRED) => {
                        let reason = e.problem().and_then(|p| p.detail.clone()).unwrap_or_else(|| e.to_string());
                        ctx.publish(PaymentDeclined { order_id, reason }).await?
                    }
                    Err(e) if e.is_client_error() => return Err(HandlerError::permanent(e)),
                    Err(e) => return Err(HandlerError::transient(e)),
                }
                Ok::<(), HandlerError>(())
            }
        })
    }

    /// Places an order as the mode says; `Ok(status)` when accepted.
    async fn place(&self, order: NewOrder) -> Result<(StatusCode, OrderStatus), Problem> {
        match self.mode {
            Mode::Hybrid => self.place_hybrid(order).await,
            Mode::SyncChain => self.place_sync(order).await,
        }
    }

    async fn place_hybrid(&self, order: NewOrder) -> Result<(StatusCode, OrderStatus), Problem> {
        let order_id = order.order_id;
        let inserted = self.db.place(order).await.map_err(|e| Problem::internal(format!("orders database: {e}")))?;
        let status = if inserted { StatusCode::ACCEPTED } else { StatusCode::OK };
        Ok((
            status,
            self.status(order_id).await?.unwrap_or(OrderStatus { order_id, status: "Placed".into(), reason: None }),
        ))
    }

    /// The sync chain: every step over HTTP, in the request; on failure, undo and report.
    async fn place_sync(&self, order: NewOrder) -> Result<(StatusCode, OrderStatus), Problem> {
        let order_id = order.order_id;
        let reserve = serde_json::json!({ "order_id": order_id, "lines": order.lines });
        if let Err(e) = self.inventory.post("/reservations").json(&reserve).idempotency_key(order_id).send().await {
            if e.status() == Some(StatusCode::CONFLICT) {
                let reason = e.problem().and_then(|p| p.detail.clone()).unwrap_or_else(|| e.to_string());
                return self.save_final(&order, "Cancelled", Some(reason)).await;
            }
            return Err(upstream("inventory", e));
        }
        let request = ChargeRequest { order_id, card: order.card.clone(), amount_cents: order.total_cents };
        match charge(&self.payments, request).await {
            Ok(_) => {}
            Err(e) if e.status() == Some(StatusCode::PAYMENT_REQUIRED) => {
                self.release_sync(order_id).await;
                let reason = e.problem().and_then(|p| p.detail.clone()).unwrap_or_else(|| e.to_string());
                return self.save_final(&order, "Cancelled", Some(format!("payment declined: {reason}"))).await;
            }
            Err(e) => {
                self.release_sync(order_id).await;
                return Err(upstream("payments", e));
            }
        }
        let shipment = ShipmentRequest { order_id, email: order.email.clone() };
        let shipped = self.shipping.post("/shipments").json(&shipment).idempotency_key(order_id).send().await;
        let tracking = match shipped.and_then(|r| r.json::<Shipment>()) {
            Ok(shipment) => shipment.tracking,
            Err(e) => {
                let refund = RefundRequest { order_id };
                let _ = self.payments.post("/refunds").json(&refund).idempotency_key(order_id).send().await;
                self.release_sync(order_id).await;
                return Err(upstream("shipping", e));
            }
        };
        let email = EmailRequest { order_id, email: order.email.clone(), tracking };
        if let Err(e) = self.email.post("/emails").json(&email).idempotency_key(order_id).send().await {
            // The goods are on their way; a missing email does not cancel the order. It is logged, and lost.
            tracing::warn!(%order_id, error = %e, "sync chain: the confirmation email failed");
        }
        self.save_final(&order, "Completed", None).await
    }

    async fn release_sync(&self, order_id: Uuid) {
        if let Err(e) = self.inventory.delete(&format!("/reservations/{order_id}")).send().await {
            tracing::warn!(%order_id, error = %e, "sync chain: could not release stock");
        }
    }

    async fn save_final(
        &self,
        order: &NewOrder,
        status: &'static str,
        reason: Option<String>,
    ) -> Result<(StatusCode, OrderStatus), Problem> {
        self.db
            .save_final(order.clone(), status, reason.clone())
            .await
            .map_err(|e| Problem::internal(format!("orders database: {e}")))?;
        Ok((StatusCode::CREATED, OrderStatus { order_id: order.order_id, status: status.into(), reason }))
    }

    /// The order's status: the saga's, else the orders table's; `None` if there is no such order.
    pub(crate) async fn status(&self, order_id: Uuid) -> Result<Option<OrderStatus>, Problem> {
        let db = |e: anyhow::Error| Problem::internal(format!("orders database: {e}"));
        if let Some(record) = self.db.sagas().load(SAGA, &order_id.to_string()).await.map_err(|e| db(e.into()))? {
            let state: Fulfilment = serde_json::from_str(&record.state).unwrap_or_default();
            return Ok(Some(OrderStatus { order_id, status: state.status(), reason: state.cancelled }));
        }
        let row = self.db.status(order_id).await.map_err(db)?;
        Ok(row.map(|(status, reason)| OrderStatus { order_id, status, reason }))
    }

    /// Orders by status (the saga's status where it has one).
    pub(crate) async fn counts(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let mut counts = BTreeMap::new();
        let records = self.db.sagas().list(Some(SAGA), usize::MAX / 2).await?;
        let mut in_saga = std::collections::HashSet::new();
        for record in records {
            in_saga.insert(record.id);
            *counts.entry(record.status).or_insert(0) += 1;
        }
        let rows = self.db.statuses().await?;
        for (id, status) in rows {
            if !in_saga.contains(&id) {
                *counts.entry(status).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }

    pub(crate) fn router(&self) -> Router {
        Router::new()
            .route("/orders", axum::routing::post(place).get(counts))
            .route("/orders/{order_id}", get(show))
            .with_state(self.clone())
    }
}

async fn charge(payments: &HttpClient, request: ChargeRequest) -> Result<Charge, HttpError> {
    let key = request.order_id;
    payments.post("/charges").json(&request).idempotency_key(key).send_json().await
}

fn upstream(service: &str, e: HttpError) -> Problem {
    let status = if e.is_timeout() { StatusCode::GATEWAY_TIMEOUT } else { StatusCode::BAD_GATEWAY };
    Problem::new(status).with_title(format!("{service} failed")).with_detail(e.to_string())
}

async fn place(
    State(orders): State<Orders>,
    Json(order): Json<NewOrder>,
) -> Result<(StatusCode, Json<OrderStatus>), Problem> {
    let (status, order) = orders.place(order).await?;
    Ok((status, Json(order)))
}

async fn show(State(orders): State<Orders>, UrlPath(order_id): UrlPath<Uuid>) -> Result<Json<OrderStatus>, Problem> {
    match orders.status(order_id).await? {
        Some(status) => Ok(Json(status)),
        None => Err(Problem::not_found(format!("no order {order_id}"))),
    }
}

async fn counts(State(orders): State<Orders>) -> Result<Json<BTreeMap<String, u64>>, Problem> {
    orders.counts().await.map(Json).map_err(|e| Problem::internal(format!("orders database: {e}")))
}
