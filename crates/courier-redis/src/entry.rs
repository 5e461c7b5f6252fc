//! Stream keys and entries: where a queue lives and how a message is stored in it.

use std::fmt;

use bytes::Bytes;
use courier_core::{Error, Headers, RawMessage, Result, is_implied_attribute, restore_implied_attributes};
use redis::Value;

/// The consumer group every queue's stream has.
pub(crate) const GROUP: &str = "courier";

/// Key names under one prefix (see [`scripts`](crate::scripts) for the layout).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) prefix: String,
}

impl Keys {
    pub(crate) fn stream(&self, queue: &str) -> String {
        format!("{}:q:{queue}", self.prefix)
    }
    pub(crate) fn dead_letters(&self, queue: &str) -> String {
        format!("{}:dlq:{queue}", self.prefix)
    }
    /// The key whose value changes whenever a binding is added or removed.
    pub(crate) fn bindings_version(&self) -> String {
        format!("{}:bindver", self.prefix)
    }
    pub(crate) fn queues(&self) -> String {
        format!("{}:queues", self.prefix)
    }
}

/// A stream entry's id, `<milliseconds>-<sequence>`, held as its two numbers: the subscription's held set, the
/// delivery's acker and the acknowledgement batcher each keep a copy, and a copy of two numbers allocates nothing
/// (as text it cost an allocation, freed on whichever thread acknowledged it last, and a SipHash of the text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct StreamId {
    pub(crate) millis: u64,
    pub(crate) seq: u64,
}

impl StreamId {
    /// Reads `<milliseconds>-<sequence>`, each plain decimal digits as Redis writes them (no sign, no leading
    /// zero); `None` for anything else.
    pub(crate) fn parse(text: &[u8]) -> Option<Self> {
        let (millis, seq) = std::str::from_utf8(text).ok()?.split_once('-')?;
        Some(Self { millis: decimal(millis)?, seq: decimal(seq)? })
    }

    /// Appends `<milliseconds>-<sequence>`, without the formatting machinery (one goes out for every message
    /// acknowledged).
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        let (mut millis, mut seq) = (itoa::Buffer::new(), itoa::Buffer::new());
        out.extend_from_slice(millis.format(self.millis).as_bytes());
        out.push(b'-');
        out.extend_from_slice(seq.format(self.seq).as_bytes());
    }
}

/// A number written as Redis writes one: digits only, no leading zero unless it is `0`.
fn decimal(text: &str) -> Option<u64> {
    let plain = text.bytes().all(|b| b.is_ascii_digit()) && (text == "0" || !text.starts_with('0'));
    if plain { text.parse().ok() } else { None }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.millis, self.seq)
    }
}

impl redis::ToRedisArgs for StreamId {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        let mut id = Vec::with_capacity(41);
        self.write_to(&mut id);
        out.write_arg(&id);
    }
}

/// One stream entry as read back.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) id: StreamId,
    /// Deliveries counted before this entry was written.
    pub(crate) counted: u32,
    pub(crate) headers: Headers,
    /// The `h` field as stored (JSON), kept to annotate the message on retry or dead-lettering.
    pub(crate) raw_headers: Vec<u8>,
    pub(crate) body: Bytes,
    /// How often Redis delivered this entry (1 unless it was claimed from a dead consumer).
    pub(crate) times_delivered: u32,
}

impl Entry {
    pub(crate) fn delivery_count(&self) -> u32 {
        self.counted.saturating_add(self.times_delivered.max(1))
    }

    /// The message, and the headers as stored.
    pub(crate) fn into_parts(self) -> (RawMessage, Vec<u8>) {
        (RawMessage { headers: self.headers, body: self.body }, self.raw_headers)
    }
}

/// Headers as stored in the `h` field (a JSON object, as bytes: serde_json writes UTF-8, no need to check it
/// again), without the [implied](courier_core::IMPLIED_ATTRIBUTES) ones.
pub(crate) fn encode_headers(headers: &Headers) -> Result<Vec<u8>> {
    struct Stored<'a>(&'a Headers);
    impl serde::Serialize for Stored<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
            serializer.collect_map(self.0.iter().filter(|(k, v)| !is_implied_attribute(k, v)))
        }
    }
    // Sized up front: a message's headers are usually larger than serde_json's first guess (128 bytes).
    let size = headers.iter().map(|(k, v)| k.len() + v.len() + 6).sum::<usize>() + 2;
    let mut out = Vec::with_capacity(size);
    serde_json::to_writer(&mut out, &Stored(headers))
        .map_err(|e| Error::engine(format!("cannot store headers: {e}")))?;
    Ok(out)
}

pub(crate) fn decode_headers(bytes: &[u8]) -> Headers {
    // Written by us; if someone XADDed by hand and they do not parse, the message still reaches the consumer,
    // which dead-letters it as an invalid envelope.
    let mut headers: Headers = serde_json::from_slice(bytes).unwrap_or_default();
    restore_implied_attributes(&mut headers);
    headers
}

fn entry_id(v: &Value) -> Option<StreamId> {
    match v {
        Value::BulkString(b) => StreamId::parse(b),
        Value::SimpleString(s) => StreamId::parse(s.as_bytes()),
        _ => None,
    }
}

pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

pub(crate) fn array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        _ => Vec::new(),
    }
}

/// Parses `[id, [field, value, ...], times delivered?]`; `None` for a deleted entry.
pub(crate) fn parse_entry(v: Value) -> Option<Entry> {
    let mut parts = array(v).into_iter();
    let id = entry_id(&parts.next()?)?;
    let fields = array(parts.next()?);
    let times_delivered = parts.next().as_ref().and_then(int).unwrap_or(1).clamp(1, u32::MAX as i64) as u32;
    let mut entry =
        Entry { id, counted: 0, headers: Headers::new(), raw_headers: Vec::new(), body: Bytes::new(), times_delivered };
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let Value::BulkString(name) = name else { continue };
        match (name.as_slice(), value) {
            (b"n", v) => entry.counted = int(&v).unwrap_or(0).clamp(0, u32::MAX as i64) as u32,
            (b"h", Value::BulkString(h)) => {
                entry.headers = decode_headers(&h);
                entry.raw_headers = h;
            }
            (b"b", Value::BulkString(b)) => entry.body = Bytes::from(b),
            _ => {}
        }
    }
    Some(entry)
}

/// Parses an `XREADGROUP`/`XREAD` reply for one stream (nil when the block timed out).
pub(crate) fn parse_read(v: Value) -> Vec<Entry> {
    let mut streams = array(v).into_iter();
    let Some(stream) = streams.next() else { return Vec::new() };
    let mut parts = array(stream).into_iter();
    let _key = parts.next();
    parts.next().map(array).unwrap_or_default().into_iter().filter_map(parse_entry).collect()
}

/// Parses an `XRANGE` reply.
pub(crate) fn parse_range(v: Value) -> Vec<Entry> {
    array(v).into_iter().filter_map(parse_entry).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implied_attributes_are_not_stored() {
        let headers = Headers::from([("id", "m-1"), ("type", "t.v1"), ("datacontenttype", "application/json")]);
        let stored = encode_headers(&headers).unwrap();
        assert_eq!(stored, br#"{"id":"m-1","type":"t.v1"}"#);
        assert_eq!(decode_headers(&stored).get("datacontenttype"), headers.get("datacontenttype"));
    }

    #[test]
    fn stream_ids_read_and_write_as_redis_has_them() {
        use redis::ToRedisArgs;
        for text in ["0-0", "1718000000000-0", "1718000000000-17", "18446744073709551615-18446744073709551615"] {
            let id = StreamId::parse(text.as_bytes()).unwrap();
            assert_eq!(id.to_string(), text);
            assert_eq!(id.to_redis_args(), vec![text.as_bytes().to_vec()]);
        }
        assert!(StreamId::parse(b"1718000000000-1") < StreamId::parse(b"1718000000001-0"));
        for bad in ["", "-", "17", "17-", "-3", "a-1", "1-b", "1-2-3", "18446744073709551616-0", "+1-2", "01-2", "1-02"]
        {
            assert_eq!(StreamId::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn an_entry_without_n_has_no_counted_deliveries() {
        let entry = Value::Array(vec![
            Value::BulkString(b"1-0".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"h".to_vec()),
                Value::BulkString(br#"{"type":"t"}"#.to_vec()),
                Value::BulkString(b"b".to_vec()),
                Value::BulkString(b"x".to_vec()),
            ]),
        ]);
        let entry = parse_entry(entry).unwrap();
        assert_eq!(entry.delivery_count(), 1);
        assert_eq!(entry.headers.get("specversion").map(String::as_str), Some("1.0"));
    }
}
