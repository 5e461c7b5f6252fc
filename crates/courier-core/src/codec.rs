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
        // Sized from the last body this thread encoded: one allocation for a stream of similar messages, where
        // growing from serde_json's default (128 bytes) reallocates two or three times.
        thread_local! { static LAST_LEN: std::cell::Cell<usize> = const { std::cell::Cell::new(128) }; }
        let mut out = Vec::with_capacity(LAST_LEN.get().saturating_add(32).min(1 << 20));
        serde_json::to_writer(&mut out, value)
            .map_err(|e| Error::codec(format!("cannot encode the message as JSON: {e}")))?;
        LAST_LEN.set(out.len());
        // As an exact-size slice: `Bytes` takes that over as it is, where a vector with room to spare costs it an
        // allocation of its own. The shrink is usually in place (mimalloc keeps the block when the body fills at
        // least half of it, as it does when the body is about as long as the last one and over 32 bytes); a body
        // much smaller than the last one is copied into a smaller block.
        Ok(Bytes::from(out.into_boxed_slice()))
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::codec(format!("the body is not valid JSON for this message type: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_whatever_the_last_size() {
        let small = vec![1u32; 2];
        let large: Vec<String> = (0..500).map(|i| format!("item-{i}")).collect();
        for _ in 0..2 {
            assert_eq!(Json::decode::<Vec<String>>(&Json::encode(&large).unwrap()).unwrap(), large);
            assert_eq!(Json::decode::<Vec<u32>>(&Json::encode(&small).unwrap()).unwrap(), small);
        }
        assert!(Json::decode::<Vec<u32>>(b"{not json").unwrap_err().is_permanent());
    }
}
