//! CloudEvents binary content mode on AMQP 0-9-1: the attributes AMQP has a property for travel as that property
//! (`message_id` = `id`, `type` = `type`, `app_id` = `source`, `content_type` = `datacontenttype`,
//! `correlation_id` = `correlationid`, `reply_to` = `replyto`; `specversion` 1.0 is implied), every other header
//! (the other attributes, extensions and failure annotations) as an AMQP message header named `cloudEvents:<name>`,
//! the data as the body; `delivery_mode` = 2 (persistent). The engine's own bookkeeping uses `courier-*` headers,
//! which never reach the application. Headers from other producers without the prefix are read as they are,
//! except the broker's `x-*` headers.

use bytes::Bytes;
use courier_core::{Headers, RawMessage, attr};
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

/// CloudEvents attributes that travel as AMQP basic properties (`name`, and how to set and read the property).
///
/// Properties are positional fields of the content header, not entries of the headers table: the broker and the
/// client encode and parse each table entry (a key and a value) for every message, and seven such entries cost
/// RabbitMQ and lapin about as much as the rest of the message (the engine's benchmark with the raw client sending
/// the same table: 14,626 -> 12,266 msg/s). So what AMQP has a property for goes there, where AMQP tools show it too.
const AS_PROPERTIES: [&str; 6] =
    [attr::ID, attr::TYPE, attr::SOURCE, attr::DATACONTENTTYPE, attr::CORRELATIONID, attr::REPLYTO];

fn set_property(props: BasicProperties, name: &str, value: &str) -> BasicProperties {
    let value = ShortString::from(value);
    match name {
        attr::ID => props.with_message_id(value),
        attr::TYPE => props.with_type(value),
        attr::SOURCE => props.with_app_id(value),
        attr::DATACONTENTTYPE => props.with_content_type(value),
        attr::CORRELATIONID => props.with_correlation_id(value),
        _ => props.with_reply_to(value),
    }
}

fn property<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a str> {
    let value = match name {
        attr::ID => props.message_id(),
        attr::TYPE => props.kind(),
        attr::SOURCE => props.app_id(),
        attr::DATACONTENTTYPE => props.content_type(),
        attr::CORRELATIONID => props.correlation_id(),
        _ => props.reply_to(),
    };
    value.as_ref().map(ShortString::as_str)
}

/// AMQP properties and headers for a message (persistent): `id`, `type`, `source`, `datacontenttype`,
/// `correlationid` and `replyto` as the properties `message_id`, `type`, `app_id`, `content_type`,
/// `correlation_id` and `reply_to` (a value longer than a property holds, 255 bytes, stays a header);
/// `specversion` 1.0 is implied; every other header as `cloudEvents:<name>`.
pub(crate) fn to_amqp(message: &RawMessage) -> BasicProperties {
    let mut table = FieldTable::default();
    let mut props = BasicProperties::default().with_delivery_mode(2);
    for (k, v) in &message.headers {
        // Of the implied attributes only specversion is dropped: datacontenttype is worth its content_type property.
        if k == attr::SPECVERSION && courier_core::is_implied_attribute(k, v) {
            continue;
        }
        if AS_PROPERTIES.contains(&k.as_str()) && v.len() <= 255 {
            props = set_property(props, k, v);
        } else {
            table.insert(format!("{PREFIX}{k}").into(), long(v));
        }
    }
    if table.inner().is_empty() { props } else { props.with_headers(table) }
}

/// A string header value.
pub(crate) fn long(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// The message a delivery carries, and how many deliveries preceded it (from [`DELIVERIES`]).
///
/// Reads what [`to_amqp`] writes, and also messages written with every attribute as a `cloudEvents:` header, or by
/// other AMQP producers: their properties fill in the attributes no header gives.
pub(crate) fn from_amqp(props: &BasicProperties, body: Bytes) -> (RawMessage, u32) {
    let mut headers = Headers::new();
    let mut before = 0;
    if let Some(table) = props.headers() {
        for (k, v) in table.inner() {
            let key = k.as_str();
            if key == DELIVERIES {
                before = as_u64(v).unwrap_or(0).min(u64::from(u32::MAX - 1)) as u32;
            } else if let Some(name) = key.strip_prefix(PREFIX) {
                if let Some(text) = as_text(v) {
                    headers.insert(name, text);
                }
            } else if !key.starts_with("x-")
                && !key.starts_with("courier-")
                && let Some(text) = as_text(v)
            {
                headers.get_or_insert_with(key, || text);
            }
        }
    }
    for name in AS_PROPERTIES {
        if let Some(value) = property(props, name) {
            headers.get_or_insert_with(name, || value.to_owned());
        }
    }
    courier_core::restore_implied_attributes(&mut headers);
    (RawMessage { headers, body }, before)
}

/// The message id of a delivery: the `message_id` property, or the `cloudEvents:id` header of older messages.
pub(crate) fn message_id(props: &BasicProperties) -> Option<String> {
    property(props, attr::ID).map(str::to_owned).or_else(|| internal(props, &format!("{PREFIX}{}", attr::ID)))
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
        let mut headers = Headers::new();
        headers.insert("id".to_owned(), "m-1".to_owned());
        headers.insert("type".to_owned(), "t.v1".to_owned());
        headers.insert("datacontenttype".to_owned(), "application/json".to_owned());
        headers.insert("specversion".to_owned(), "1.0".to_owned());
        headers.insert("lasterror".to_owned(), "é".repeat(400));
        let raw = RawMessage { headers, body: Bytes::from_static(b"{}") };
        let props = to_amqp(&raw);
        assert_eq!(props.message_id().as_ref().map(|s| s.as_str()), Some("m-1"));
        assert_eq!(props.kind().as_ref().map(|s| s.as_str()), Some("t.v1"));
        let table = props.headers().clone().unwrap();
        assert!(table.contains_key("cloudEvents:lasterror") && !table.contains_key("cloudEvents:type"));
        let props = with_headers(&props, |t| {
            t.insert(DELIVERIES.into(), AMQPValue::LongLongInt(2));
            t.insert("x-death".into(), AMQPValue::Boolean(true));
        });
        let (back, before) = from_amqp(&props, raw.body.clone());
        assert_eq!(back, raw);
        assert_eq!(before, 2);
    }

    #[test]
    fn reads_messages_with_every_attribute_as_a_header() {
        let mut table = FieldTable::default();
        for (k, v) in [("specversion", "1.0"), ("id", "m-2"), ("type", "t.v1"), ("source", "old")] {
            table.insert(format!("{PREFIX}{k}").into(), long(v));
        }
        let props = BasicProperties::default().with_headers(table).with_message_id("m-2".into());
        let (back, _) = from_amqp(&props, Bytes::new());
        let expected: Headers = [("specversion", "1.0"), ("id", "m-2"), ("type", "t.v1"), ("source", "old")]
            .into_iter()
            .chain([("datacontenttype", "application/json")]) // implied, as from_raw would
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(back.headers, expected);
        assert_eq!(message_id(&props).as_deref(), Some("m-2"));
    }

    #[test]
    fn long_values_stay_headers_and_foreign_properties_fill_in() {
        let mut headers = Headers::new();
        headers.insert("type".to_owned(), "t".repeat(300));
        headers.insert("id".to_owned(), "m-3".to_owned());
        let raw = RawMessage { headers, body: Bytes::new() };
        let props = to_amqp(&raw);
        assert!(props.kind().is_none());
        let (back, _) = from_amqp(&props, Bytes::new());
        assert_eq!(back.header("type").map(str::len), Some(300));
        assert_eq!(back.header("specversion"), Some("1.0"));

        // A plain AMQP producer's message: its properties become the attributes.
        let foreign = BasicProperties::default().with_type("legacy.order".into()).with_app_id("erp".into());
        let (back, _) = from_amqp(&foreign, Bytes::new());
        assert_eq!(back.header("type"), Some("legacy.order"));
        assert_eq!(back.header("source"), Some("erp"));
        assert_eq!(back.header("specversion"), Some("1.0"));
    }
}
