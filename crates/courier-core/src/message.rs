//! Typed messages.

use serde::{Serialize, de::DeserializeOwned};

use crate::Codec;

/// A message that travels on the bus: an event, a command, a request or a reply.
///
/// Its [`NAME`](Message::NAME) is the CloudEvents `type` on the wire and must stay stable once published: put the
/// version in it (`shop.order.placed.v1`) and add a new type for a breaking change. Derive it with
/// `#[derive(Message)]` and `#[message(name = "...")]` from the `courier` crate.
///
/// ```
/// use courier_core::{Json, Message};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize)]
/// struct OrderPlaced { order_id: u64 }
///
/// impl Message for OrderPlaced {
///     const NAME: &'static str = "shop.order.placed.v1";
///     type Codec = Json;
/// }
/// assert_eq!(OrderPlaced::NAME, "shop.order.placed.v1");
/// ```
pub trait Message: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable message name with its version, e.g. `shop.order.placed.v1`.
    const NAME: &'static str;
    /// How the body is encoded on the wire.
    type Codec: Codec;

    /// The partition key: messages with the same key are handled in order where the engine allows it.
    fn partition_key(&self) -> Option<String> {
        None
    }
}

/// A message sent with [`request`](https://docs.rs/courier-bus) that expects one reply of type `Response`.
pub trait Request: Message {
    /// The reply's type.
    type Response: Message;
}

/// What an inbox needs to know about a message being handled: its id and which consumer handles it.
/// Implemented by the bus's handler context.
pub trait MessageRef {
    /// The message id.
    fn message_id(&self) -> &str;
    /// The consumer name the id is recorded under (one message may be handled by several consumers).
    fn consumer(&self) -> &str;
}
