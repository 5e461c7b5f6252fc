//! CloudEvents binary content mode on AMQP 0-9-1: every Courier header (CloudEvents attributes, extensions and
//! failure annotations) travels as an AMQP message header named `cloudEvents:<name>`, the data as the body.
//!
//! The AMQP properties mirror what brokers and tools understand: `message_id` = `id`, `content_type` =
//! `datacontenttype`, `delivery_mode` = 2 (persistent). The engine's own bookkeeping uses `courier-*` headers,
//! which never reach the application. Headers from other producers without the prefix are read as they are,
//! except the broker's `x-*` headers.

use std::collections::BTreeMap;

use bytes::Bytes;
use courier_core::{RawMessage, attr};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// The prefix of CloudEvents attributes in AMQP headers.
pub(crate) const PREFIX: &str = "cloudEvents:";
/// Deliveries made before this one (set when a message is republished for a delayed redelivery).
pub(crate) const DELIVERIES: &str = "courier-deliveries";
/// Where an expiring delayed message goes: `q:<queue>` or `e:<exchange>` (matched by the delayed exchange).
pub(crate) const DELAY_TO: &str = "courier-delay-to";
/// The dead-letter entry id.
pub(crate) const ENTRY: &str = "courier-entry";
/// The Courier queue a dead letter came from.
pub(crate) const FROM_QUEUE: &str = "courier-queue";
/// When a message was dead-lettered (milliseconds since the epoch).
pub(crate) const DEAD_AT: &str = "courier-dead-lettered-at";

/// AMQP properties and headers for a message (persistent).
pub(crate) fn to_amqp(message: &RawMessage) -> BasicProperties {
    let mut table = FieldTable::default();
    for (k, v) in &message.headers {
        table.insert(format!("{PREFIX}{k}").into(), long(v));
    }
    let mut props = BasicProperties::default().with_delivery_mode(2).with_headers(table);
    if let Some(id) = message.id().filter(|id| id.len() <= 255) {
        props = props.with_message_id(ShortString::from(id));
    }
    if let Some(ct) = message.header(attr::DATACONTENTTYPE).filter(|ct| ct.len() <= 255) {
        props = props.with_content_type(ShortString::from(ct));
    }
    props
}

/// A string header value.
pub(crate) fn long(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// The message a delivery carries, and how many deliveries preceded it (from [`DELIVERIES`]).
pub(crate) fn from_amqp(props: &BasicProperties, body: Bytes) -> (RawMessage, u32) {
    let mut headers = BTreeMap::new();
    let mut before = 0;
    if let Some(table) = props.headers() {
        for (k, v) in table.inner() {
            let key = k.as_str();
            if key == DELIVERIES {
                before = as_u64(v).unwrap_or(0).min(u64::from(u32::MAX - 1)) as u32;
            } else if let Some(name) = key.strip_prefix(PREFIX) {
                if let Some(text) = as_text(v) {
                    headers.insert(name.to_owned(), text);
                }
            } else if !key.starts_with("x-")
                && !key.starts_with("courier-")
                && let Some(text) = as_text(v)
            {
                headers.entry(key.to_owned()).or_insert(text);
            }
        }
    }
    if let Some(ct) = props.content_type() {
        headers.entry(attr::DATACONTENTTYPE.to_owned()).or_insert_with(|| ct.as_str().to_owned());
    }
    (RawMessage { headers, body }, before)
}

/// A header's value as text, if it is a string or a number.
pub(crate) fn as_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        other => as_u64(other)?.to_string(),
    })
}

fn as_u64(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::Timestamp(n) => Some(*n),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        _ => None,
    }
}

/// One `courier-*` header of a message, as text.
pub(crate) fn internal(props: &BasicProperties, name: &str) -> Option<String> {
    props.headers().as_ref()?.inner().get(name).and_then(as_text)
}

/// A header of a message by its full AMQP name, as text.
pub(crate) fn as_text_header(props: &BasicProperties, name: &str) -> Option<String> {
    internal(props, name)
}

/// A copy of `props` with `set` applied to its headers.
pub(crate) fn with_headers(props: &BasicProperties, set: impl FnOnce(&mut FieldTable)) -> BasicProperties {
    let mut table = props.headers().clone().unwrap_or_default();
    set(&mut table);
    props.clone().with_headers(table).with_delivery_mode(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_prefix() {
        let mut headers = BTreeMap::new();
        headers.insert("id".to_owned(), "m-1".to_owned());
        headers.insert("type".to_owned(), "t.v1".to_owned());
        headers.insert("datacontenttype".to_owned(), "application/json".to_owned());
        headers.insert("lasterror".to_owned(), "é".repeat(400));
        let raw = RawMessage { headers, body: Bytes::from_static(b"{}") };
        let props = to_amqp(&raw);
        assert_eq!(props.message_id().as_ref().map(|s| s.as_str()), Some("m-1"));
        assert!(props.headers().as_ref().unwrap().contains_key("cloudEvents:type"));
        let props = with_headers(&props, |t| {
            t.insert(DELIVERIES.into(), AMQPValue::LongLongInt(2));
            t.insert("x-death".into(), AMQPValue::Boolean(true));
        });
        let (back, before) = from_amqp(&props, raw.body.clone());
        assert_eq!(back, raw);
        assert_eq!(before, 2);
    }
}
