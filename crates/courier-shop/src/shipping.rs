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
use courier::prelude::*;
use courier::{BusBuilder, HandlerError};
use courier_http::Problem;
use rusqlite::{OptionalExtension, params};

use crate::messages::{OrderConfirmed, OrderShipped};
use crate::store::{self, ServiceDb};
use crate::{Faults, Stats};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS shipments (order_id TEXT PRIMARY KEY, email TEXT NOT NULL, tracking TEXT NOT NULL,
    shipped_at INTEGER NOT NULL);
";

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
    pub(crate) async fn open(dir: &std::path::Path, faults: Faults, stats: Arc<Stats>) -> anyhow::Result<Self> {
        Ok(Self { db: store::open(dir, "shipping", SCHEMA).await?, faults, stats })
    }

    /// Makes the order's shipment unless it exists (the HTTP path); returns its tracking number.
    async fn ship(&self, order_id: Uuid, email: String) -> anyhow::Result<String> {
        let (tracking, made) = store::transaction(&self.db, move |tx| make_shipment(tx, order_id, &email)).await?;
        if !made {
            self.stats.duplicate();
        }
        Ok(tracking)
    }

    /// The bus path: the shipment and the message's inbox record commit together; a redelivered message is
    /// skipped by the inbox, and its shipment's tracking number is read back so `OrderShipped` still goes out.
    async fn ship_once(&self, event: &OrderConfirmed, ctx: &Context) -> anyhow::Result<String> {
        let (order_id, email) = (event.order_id, event.email.clone());
        let made = self.db.once(ctx, move |tx| make_shipment(tx, order_id, &email)).await?;
        match made {
            Some((tracking, made)) => {
                if !made {
                    self.stats.duplicate();
                }
                Ok(tracking)
            }
            None => {
                self.stats.duplicate();
                let id = order_id.to_string();
                Ok(self
                    .db
                    .with_conn(move |c| {
                        c.query_row("SELECT tracking FROM shipments WHERE order_id = ?1", [id], |r| r.get(0))
                    })
                    .await?)
            }
        }
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

/// Makes the order's shipment unless it exists: `(tracking, made now)`.
fn make_shipment(tx: &rusqlite::Connection, order_id: Uuid, email: &str) -> rusqlite::Result<(String, bool)> {
    let id = order_id.to_string();
    let existing: Option<String> =
        tx.query_row("SELECT tracking FROM shipments WHERE order_id = ?1", [&id], |r| r.get(0)).optional()?;
    if let Some(tracking) = existing {
        return Ok((tracking, false));
    }
    let tracking = format!("TRK{}", &order_id.simple().to_string()[20..]).to_uppercase();
    tx.execute(
        "INSERT INTO shipments (order_id, email, tracking, shipped_at) VALUES (?1, ?2, ?3, ?4)",
        params![id, email, tracking, chrono::Utc::now().timestamp_millis()],
    )?;
    Ok((tracking, true))
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
    let id = order_id.to_string();
    let tracking: Option<String> = shipping
        .db
        .with_conn(move |c| {
            c.query_row("SELECT tracking FROM shipments WHERE order_id = ?1", [id], |r| r.get(0)).optional()
        })
        .await
        .map_err(|e| Problem::internal(format!("shipping database: {e}")))?;
    match tracking {
        Some(tracking) => Ok(Json(Shipment { order_id, tracking })),
        None => Err(Problem::not_found(format!("no shipment for order {order_id}"))),
    }
}
