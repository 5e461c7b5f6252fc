//! Email: writes the "your order is on its way" message it would send to its own `emails` table (one per order:
//! the inbox skips a redelivered message, and the table's key makes a second `OrderShipped` for an order a no-op). Consumes `OrderShipped` (queue `email`); in the sync chain,
//! `POST /emails` does the same over HTTP. `GET /emails/{order_id}` lists what an order's customer was sent.

use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use courier::postgres::sqlx::{self, PgConnection};
use courier::prelude::*;
use courier::{BusBuilder, HandlerError};
use courier_http::Problem;
use rusqlite::params;

use crate::Stats;
use crate::messages::OrderShipped;
use crate::store::{Place, ServiceDb};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS emails (order_id TEXT NOT NULL, kind TEXT NOT NULL, recipient TEXT NOT NULL,
    subject TEXT NOT NULL, body TEXT NOT NULL, sent_at BIGINT NOT NULL, PRIMARY KEY (order_id, kind));
";
/// Writes an email unless the order has one of its kind (no row then).
const WRITE: &str = "INSERT INTO emails (order_id, kind, recipient, subject, body, sent_at)
    VALUES ($1, 'shipped', $2, $3, $4, $5) ON CONFLICT (order_id, kind) DO NOTHING";
const EMAILS_OF: &str = "SELECT kind, recipient, subject, body FROM emails WHERE order_id = $1 ORDER BY sent_at";

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
    pub(crate) async fn open(place: &Place, stats: Arc<Stats>) -> anyhow::Result<Self> {
        Ok(Self { db: ServiceDb::open(place, SCHEMA).await?, stats })
    }

    /// The HTTP path: writes the email unless the order has one.
    async fn send_shipped(&self, order_id: Uuid, to: String, tracking: String) -> anyhow::Result<()> {
        let email = ShippedEmail::new(order_id, &to, &tracking);
        let written = match &self.db {
            ServiceDb::Sqlite(db) => db.with_conn(move |c| email.write_sqlite(c)).await?,
            ServiceDb::Postgres(db) => email.write_pg(&mut *db.pool().acquire().await?).await?,
        };
        if written == 0 {
            self.stats.duplicate();
        }
        Ok(())
    }

    /// The bus path: the email and the message's inbox record commit together; a redelivery is skipped.
    async fn send_shipped_once(&self, event: OrderShipped, ctx: &Context) -> anyhow::Result<()> {
        let email = ShippedEmail::new(event.order_id, &event.email, &event.tracking);
        let written = match &self.db {
            ServiceDb::Sqlite(db) => db.once(ctx, move |tx| email.write_sqlite(tx)).await?,
            ServiceDb::Postgres(db) => match db.begin_once(ctx).await? {
                Some(mut tx) => {
                    let written = email.write_pg(&mut tx).await?;
                    tx.commit().await?;
                    Some(written)
                }
                None => None,
            },
        };
        if written.is_none_or(|n| n == 0) {
            self.stats.duplicate();
        }
        Ok(())
    }

    /// The emails written for an order.
    pub(crate) async fn emails_of(&self, order_id: Uuid) -> anyhow::Result<Vec<Email>> {
        let id = order_id.to_string();
        let rows: Vec<(String, String, String, String)> = match &self.db {
            ServiceDb::Sqlite(db) => {
                db.with_conn(move |c| {
                    let mut stmt = c.prepare(EMAILS_OF)?;
                    stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?.collect()
                })
                .await?
            }
            ServiceDb::Postgres(db) => sqlx::query_as(EMAILS_OF).bind(id).fetch_all(db.pool()).await?,
        };
        Ok(rows
            .into_iter()
            .map(|(kind, recipient, subject, body)| Email { order_id, kind, recipient, subject, body })
            .collect())
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

/// The "on its way" email of an order.
struct ShippedEmail {
    order_id: String,
    recipient: String,
    subject: String,
    body: String,
    at: i64,
}

impl ShippedEmail {
    fn new(order_id: Uuid, to: &str, tracking: &str) -> Self {
        let order_id = order_id.to_string();
        Self {
            subject: format!("Your order {} is on its way", &order_id[..8]),
            body: format!("Track it with {tracking}. Thank you for shopping with us."),
            order_id,
            recipient: to.to_owned(),
            at: chrono::Utc::now().timestamp_millis(),
        }
    }

    /// Writes it unless the order has one; returns the rows written (0 or 1).
    fn write_sqlite(self, c: &rusqlite::Connection) -> rusqlite::Result<u64> {
        let written = c.execute(WRITE, params![self.order_id, self.recipient, self.subject, self.body, self.at])?;
        Ok(written as u64)
    }

    /// The same on PostgreSQL.
    async fn write_pg(self, c: &mut PgConnection) -> sqlx::Result<u64> {
        let write = sqlx::query(WRITE).bind(self.order_id).bind(self.recipient).bind(self.subject);
        Ok(write.bind(self.body).bind(self.at).execute(c).await?.rows_affected())
    }
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
