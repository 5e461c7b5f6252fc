//! Shipping: creates one shipment per confirmed order. Consumes `OrderConfirmed` (queue `shipping`) through its
//! inbox (the message id recorded in the shipment's own transaction) and publishes `OrderShipped`; in the sync chain, `POST /shipments` does the same over HTTP. While the
//! [`Faults`](crate::Faults) say it is down, its API answers 503 and its consumer takes nothing (the messages wait).
//!
//! A shipment is keyed by order, so it is never made twice. `OrderShipped` is published after the shipment
//! commits, also when a redelivery finds it already made: the crash between the two cannot lose the event, and
//! its consumers are idempotent.

use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use courier::postgres::sqlx::{self, PgConnection};
use courier::prelude::*;
use courier::{BusBuilder, HandlerError};
use courier_http::Problem;
use rusqlite::{OptionalExtension, params};

use crate::messages::{OrderConfirmed, OrderShipped};
use crate::store::{Place, ServiceDb};
use crate::{Faults, Stats};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS shipments (order_id TEXT PRIMARY KEY, email TEXT NOT NULL, tracking TEXT NOT NULL,
    shipped_at BIGINT NOT NULL);
";
/// Makes a shipment unless the order has one (no row then).
const SHIP: &str = "INSERT INTO shipments (order_id, email, tracking, shipped_at) VALUES ($1, $2, $3, $4)
    ON CONFLICT (order_id) DO NOTHING";
const TRACKING: &str = "SELECT tracking FROM shipments WHERE order_id = $1";

/// `POST /shipments` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShipmentRequest {
    /// The order.
    pub order_id: Uuid,
    /// The customer's email address.
    pub email: String,
}

/// A shipment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipment {
    /// The order.
    pub order_id: Uuid,
    /// The carrier's tracking number.
    pub tracking: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Shipping {
    db: ServiceDb,
    faults: Faults,
    stats: Arc<Stats>,
}

impl Shipping {
    pub(crate) async fn open(place: &Place, faults: Faults, stats: Arc<Stats>) -> anyhow::Result<Self> {
        Ok(Self { db: ServiceDb::open(place, SCHEMA).await?, faults, stats })
    }

    /// Makes the order's shipment unless it exists (the HTTP path); returns its tracking number.
    async fn ship(&self, order_id: Uuid, email: String) -> anyhow::Result<String> {
        let (tracking, made) = match &self.db {
            ServiceDb::Sqlite(db) => db.with_conn(move |c| make_shipment_sqlite(c, order_id, &email)).await?,
            ServiceDb::Postgres(db) => make_shipment_pg(&mut *db.pool().acquire().await?, order_id, &email).await?,
        };
        if !made {
            self.stats.duplicate();
        }
        Ok(tracking)
    }

    /// The bus path: the shipment and the message's inbox record commit together; a redelivered message is
    /// skipped by the inbox, and its shipment's tracking number is read back so `OrderShipped` still goes out.
    async fn ship_once(&self, event: &OrderConfirmed, ctx: &Context) -> anyhow::Result<String> {
        let (order_id, email) = (event.order_id, event.email.clone());
        let made = match &self.db {
            ServiceDb::Sqlite(db) => db.once(ctx, move |tx| make_shipment_sqlite(tx, order_id, &email)).await?,
            ServiceDb::Postgres(db) => match db.begin_once(ctx).await? {
                Some(mut tx) => {
                    let made = make_shipment_pg(&mut tx, order_id, &email).await?;
                    tx.commit().await?;
                    Some(made)
                }
                None => None,
            },
        };
        match made {
            Some((tracking, true)) => Ok(tracking),
            Some((tracking, false)) => {
                self.stats.duplicate();
                Ok(tracking)
            }
            None => {
                self.stats.duplicate();
                self.tracking(order_id).await?.ok_or_else(|| anyhow::anyhow!("order {order_id}: shipment missing"))
            }
        }
    }

    /// The order's tracking number, if it was shipped.
    async fn tracking(&self, order_id: Uuid) -> anyhow::Result<Option<String>> {
        let id = order_id.to_string();
        Ok(match &self.db {
            ServiceDb::Sqlite(db) => {
                db.with_conn(move |c| c.query_row(TRACKING, [id], |r| r.get(0)).optional()).await?
            }
            ServiceDb::Postgres(db) => sqlx::query_scalar(TRACKING).bind(id).fetch_optional(db.pool()).await?,
        })
    }

    pub(crate) fn router(&self) -> Router {
        Router::new()
            .route("/shipments", post(create))
            .route("/shipments/{order_id}", get(show))
            .with_state(self.clone())
    }

    /// The bus consumer (queue `shipping`), paused while shipping is down.
    pub(crate) fn consumers(&self, builder: BusBuilder) -> BusBuilder {
        let shipping = self.clone();
        builder.gate(self.faults.shipping_gate()).consume(move |event: OrderConfirmed, ctx: Context| {
            let shipping = shipping.clone();
            async move {
                let tracking = shipping.ship_once(&event, &ctx).await.map_err(HandlerError::transient)?;
                ctx.publish(OrderShipped { order_id: event.order_id, email: event.email, tracking }).await?;
                Ok::<(), HandlerError>(())
            }
        })
    }
}

/// The carrier's tracking number of an order's shipment.
fn tracking_number(order_id: Uuid) -> String {
    format!("TRK{}", &order_id.simple().to_string()[20..]).to_uppercase()
}

/// Makes the order's shipment unless it exists: `(tracking, made now)`.
fn make_shipment_sqlite(c: &rusqlite::Connection, order_id: Uuid, email: &str) -> rusqlite::Result<(String, bool)> {
    let (id, now) = (order_id.to_string(), chrono::Utc::now().timestamp_millis());
    let made = c.execute(SHIP, params![id, email, tracking_number(order_id), now])? == 1;
    Ok((c.query_row(TRACKING, [id], |r| r.get(0))?, made))
}

/// The same on PostgreSQL.
async fn make_shipment_pg(c: &mut PgConnection, order_id: Uuid, email: &str) -> sqlx::Result<(String, bool)> {
    let (id, now) = (order_id.to_string(), chrono::Utc::now().timestamp_millis());
    let ship = sqlx::query(SHIP).bind(&id).bind(email).bind(tracking_number(order_id)).bind(now);
    let made = ship.execute(&mut *c).await?.rows_affected() == 1;
    Ok((sqlx::query_scalar(TRACKING).bind(id).fetch_one(&mut *c).await?, made))
}

async fn create(
    State(shipping): State<Shipping>,
    Json(request): Json<ShipmentRequest>,
) -> Result<Json<Shipment>, Problem> {
    if shipping.faults.shipping_down() {
        return Err(Problem::unavailable("shipping is down"));
    }
    let tracking = shipping
        .ship(request.order_id, request.email)
        .await
        .map_err(|e| Problem::internal(format!("shipping database: {e}")))?;
    Ok(Json(Shipment { order_id: request.order_id, tracking }))
}

async fn show(State(shipping): State<Shipping>, UrlPath(order_id): UrlPath<Uuid>) -> Result<Json<Shipment>, Problem> {
    if shipping.faults.shipping_down() {
        return Err(Problem::unavailable("shipping is down"));
    }
    let tracking =
        shipping.tracking(order_id).await.map_err(|e| Problem::internal(format!("shipping database: {e}")))?;
    match tracking {
        Some(tracking) => Ok(Json(Shipment { order_id, tracking })),
        None => Err(Problem::not_found(format!("no shipment for order {order_id}"))),
    }
}
