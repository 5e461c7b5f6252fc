//! Body codecs.

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, Result};

/// Encodes and decodes message bodies. A message type picks its codec with [`Message::Codec`](crate::Message::Codec);
/// the codec's content type travels as the CloudEvents `datacontenttype`, and a consumer refuses (dead-letters) a
/// body whose content type it does not expect.
///
/// Implement it to add a format (MessagePack, protobuf, ...): the two methods are all there is.
pub trait Codec: Send + Sync + 'static {
    /// The MIME type written to `datacontenttype`, e.g. `application/json`.
    const CONTENT_TYPE: &'static str;
    /// Encodes a value.
    fn encode<T: Serialize>(value: &T) -> Result<Bytes>;
    /// Decodes a value; a failure is permanent (retrying will not help).
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T>;
}

/// JSON bodies (`application/json`), the default codec.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Codec for Json {
    const CONTENT_TYPE: &'static str = "application/json";

    fn encode<T: Serialize>(value: &T) -> Result<Bytes> {
        serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(|e| Error::codec(format!("cannot encode the message as JSON: {e}")))
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::codec(format!("the body is not valid JSON for this message type: {e}")))
    }
}
