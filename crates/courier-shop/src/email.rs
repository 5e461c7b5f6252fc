//! Email: writes the "your order is on its way" message it would send to its own `emails` table (one per order:
//! the inbox skips a redelivered message, and the table's key makes a second `OrderShipped` for an order a no-op). Consumes `OrderShipped` (queue `email`); in the sync chain,
//! `POST /emails` does the same over HTTP. `GET /emails/{order_id}` lists what an order's customer was sent.

use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use courier::prelude::*;
use courier::{BusBuilder, HandlerError};
use courier_http::Problem;
use rusqlite::params;

use crate::Stats;
use crate::messages::OrderShipped;
use crate::store::{self, ServiceDb};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS emails (order_id TEXT NOT NULL, kind TEXT NOT NULL, recipient TEXT NOT NULL,
    subject TEXT NOT NULL, body TEXT NOT NULL, sent_at INTEGER NOT NULL, PRIMARY KEY (order_id, kind));
";

/// An email as written to the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email {
    /// The order.
    pub order_id: Uuid,
    /// What kind (`shipped`).
    pub kind: String,
    /// To whom.
    pub recipient: String,
    /// The subject line.
    pub subject: String,
    /// The text.
    pub body: String,
}

/// `POST /emails` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmailRequest {
    /// The order.
    pub order_id: Uuid,
    /// To whom.
    pub email: String,
    /// The tracking number.
    pub tracking: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Mailer {
    db: ServiceDb,
    stats: Arc<Stats>,
}

impl Mailer {
    pub(crate) async fn open(dir: &std::path::Path, stats: Arc<Stats>) -> anyhow::Result<Self> {
        Ok(Self { db: store::open(dir, "email", SCHEMA).await?, stats })
    }

    /// The HTTP path: writes the email unless the order has one.
    async fn send_shipped(&self, order_id: Uuid, to: String, tracking: String) -> anyhow::Result<()> {
        let written = self.db.with_conn(move |c| write_shipped(c, order_id, &to, &tracking)).await?;
        if written == 0 {
            self.stats.duplicate();
        }
        Ok(())
    }

    /// The bus path: the email and the message's inbox record commit together; a redelivery is skipped.
    async fn send_shipped_once(&self, event: OrderShipped, ctx: &Context) -> anyhow::Result<()> {
        let written =
            self.db.once(ctx, move |tx| write_shipped(tx, event.order_id, &event.email, &event.tracking)).await?;
        if written.is_none_or(|n| n == 0) {
            self.stats.duplicate();
        }
        Ok(())
    }

    /// The emails written for an order.
    pub(crate) async fn emails_of(&self, order_id: Uuid) -> anyhow::Result<Vec<Email>> {
        let id = order_id.to_string();
        Ok(self
            .db
            .with_conn(move |c| {
                let mut stmt = c.prepare(
                    "SELECT kind, recipient, subject, body FROM emails WHERE order_id = ?1 ORDER BY sent_at",
                )?;
                stmt.query_map([id], |r| {
                    Ok(Email { order_id, kind: r.get(0)?, recipient: r.get(1)?, subject: r.get(2)?, body: r.get(3)? })
                })?
                .collect()
            })
            .await?)
    }

    pub(crate) fn router(&self) -> Router {
        Router::new().route("/emails", post(create)).route("/emails/{order_id}", get(list)).with_state(self.clone())
    }

    /// The bus consumer (queue `email`).
    pub(crate) fn consumers(&self, builder: BusBuilder) -> BusBuilder {
        let mailer = self.clone();
        builder.consume(move |event: OrderShipped, ctx: Context| {
            let mailer = mailer.clone();
            async move { mailer.send_shipped_once(event, &ctx).await.map_err(HandlerError::transient) }
        })
    }
}

/// Writes the "on its way" email unless the order has one; returns the rows written (0 or 1).
fn write_shipped(c: &rusqlite::Connection, order_id: Uuid, to: &str, tracking: &str) -> rusqlite::Result<usize> {
    c.execute(
        "INSERT OR IGNORE INTO emails (order_id, kind, recipient, subject, body, sent_at)
         VALUES (?1, 'shipped', ?2, ?3, ?4, ?5)",
        params![
            order_id.to_string(),
            to,
            format!("Your order {} is on its way", &order_id.to_string()[..8]),
            format!("Track it with {tracking}. Thank you for shopping with us."),
            chrono::Utc::now().timestamp_millis()
        ],
    )
}

async fn create(State(mailer): State<Mailer>, Json(request): Json<EmailRequest>) -> Result<Json<bool>, Problem> {
    mailer
        .send_shipped(request.order_id, request.email, request.tracking)
        .await
        .map_err(|e| Problem::internal(format!("email database: {e}")))?;
    Ok(Json(true))
}

async fn list(State(mailer): State<Mailer>, UrlPath(order_id): UrlPath<Uuid>) -> Result<Json<Vec<Email>>, Problem> {
    mailer.emails_of(order_id).await.map(Json).map_err(|e| Problem::internal(format!("email database: {e}")))
}
