//! Courier core: the small, stable vocabulary every other Courier crate speaks.
//!
//! - [`Message`]: a typed message with a stable, versioned name (`shop.order.placed.v1`).
//! - [`Codec`]: how a message body is encoded ([`Json`] by default).
//! - [`Envelope`] and [`RawMessage`]: the CloudEvents 1.0 envelope, in binary content mode on every transport;
//!   [`Headers`] carry its attributes.
//! - [`Transport`], [`Subscription`], [`Delivery`] and [`Admin`]: the contract an engine implements.
//! - [`EngineRegistry`]: picks an engine by URL (`memory://`, `sqlite://path`, ...).
//! - [`Error`]: one error type with a kind that can be asked questions.
//!
//! Nothing here names an engine or a runtime policy: engines are crates that implement these traits, and the
//! retry/dead-letter policy lives in `courier-bus`.

mod codec;
mod engine;
mod envelope;
mod error;
mod fingerprint;
mod headers;
mod message;
mod outbox;
mod saga;
mod trace;
mod transport;

pub use codec::{Codec, Json};
pub use engine::{Engine, EngineFactory, EngineRegistry};
pub use envelope::{
    Envelope, IMPLIED_ATTRIBUTES, RawMessage, attr, dead_letter_attr, is_implied_attribute, restore_implied_attributes,
};
pub use error::{Error, ErrorKind, Result};
pub use fingerprint::{failure_fingerprint, normalise_error_message};
pub use headers::{HeaderName, Headers};
pub use message::{Message, MessageRef, Request};
pub use outbox::{OutboxDestination, OutboxLag, OutboxRecord, OutboxStore};
pub use saga::{SagaOutgoing, SagaRecord, SagaStore, SagaTransition, SaveOutcome};
pub use trace::TraceParent;
pub use transport::{
    Acker, Admin, Annotations, DeadLetter, DeadLetterFilter, Delivery, QueueStats, Subscription, SubscriptionOptions,
    Transport, strip_failure_annotations,
};

/// Milliseconds since the Unix epoch, the time unit transports store.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
