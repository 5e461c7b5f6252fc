//! Sagas: typed state machines for business processes that span services and time (order fulfilment: reserve
//! stock, charge the card, ship; on failure release the stock and refund).
//!
//! A saga is a state type plus transitions, one per message type that moves it. Each instance is correlated by an
//! id taken from the message, persisted in a [`SagaStore`] (SQLite or PostgreSQL) with optimistic concurrency, and
//! every transition's new state, history step and outgoing messages commit in one transaction (the store's
//! outbox), so a crash never leaves a state change without its messages or the other way round.
//!
//! - **Duplicates** are recognised by message id and change nothing.
//! - **Concurrent** deliveries for one instance (competing consumers) conflict on the version; the loser reloads
//!   the fresh state and runs its transition again (never retried on a stale copy).
//! - **Out of order**: any message may create its instance, so a state machine written over facts (`paid`,
//!   `reserved`) rather than over arrival order ends in the same state whatever the order.
//! - **Timeouts** are scheduled messages ([`Actions::schedule`]); **compensation** is a transition that sends the
//!   undoing commands; a **terminal** state ([`SagaState::is_finished`]) ignores later messages.
//!
//! ```no_run
//! use courier_bus::{Bus, HandlerError};
//! use courier_core::{Json, Message};
//! use courier_saga::{Saga, SagaState};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct PaymentCharged { order_id: String }
//! impl Message for PaymentCharged { const NAME: &'static str = "shop.payment.charged.v1"; type Codec = Json; }
//!
//! #[derive(Debug, Clone, Default, Serialize, Deserialize)]
//! struct Fulfilment { paid: bool }
//! impl SagaState for Fulfilment {
//!     fn status(&self) -> String { if self.paid { "Completed".into() } else { "Pending".into() } }
//!     fn is_finished(&self) -> bool { self.paid }
//! }
//!
//! # async fn demo(store: courier_sqlite::SqliteSagaStore, engine: courier_core::Engine) -> courier_core::Result<()> {
//! let saga = Saga::<Fulfilment>::new("order-fulfilment", store)
//!     .on(|e: &PaymentCharged| e.order_id.clone(), |state, _e, _actions| {
//!         state.paid = true;
//!         Ok::<(), HandlerError>(())
//!     });
//! let bus = saga.attach(Bus::builder("orders-saga").engine_instance(engine)).start().await?;
//! # let _ = bus; Ok(()) }
//! ```

mod actions;
mod saga;

pub use actions::Actions;
pub use courier_core::{SagaRecord, SagaStore, SagaTransition};
pub use saga::{Saga, SagaState};
