//! The CloudEvents 1.0 envelope, in binary content mode: attributes travel as headers, the body as the payload.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::{Codec, Error, Headers, Message, Result};

/// CloudEvents attribute names, as header keys on every transport.
pub mod attr {
    /// The CloudEvents spec version; always `1.0`.
    pub const SPECVERSION: &str = "specversion";
    /// The message id (a UUIDv7 for messages Courier creates).
    pub const ID: &str = "id";
    /// The service that produced the message.
    pub const SOURCE: &str = "source";
    /// The message name with version, e.g. `shop.order.placed.v1`.
    pub const TYPE: &str = "type";
    /// When the message was produced (RFC 3339).
    pub const TIME: &str = "time";
    /// The body's MIME type.
    pub const DATACONTENTTYPE: &str = "datacontenttype";
    /// Extension: the id that ties a conversation together.
    pub const CORRELATIONID: &str = "correlationid";
    /// Extension: the id of the message that caused this one.
    pub const CAUSATIONID: &str = "causationid";
    /// Extension: W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// Extension: W3C trace state.
    pub const TRACESTATE: &str = "tracestate";
    /// Extension: messages with one key are ordered where the engine allows it.
    pub const PARTITIONKEY: &str = "partitionkey";
    /// Extension: the queue a reply goes to.
    pub const REPLYTO: &str = "replyto";
    /// Extension: after this time (RFC 3339) the message is dropped to the dead-letter queue unhandled.
    pub const EXPIRESAT: &str = "expiresat";
    /// Extension: the delivery attempt, starting at 1.
    pub const ATTEMPT: &str = "attempt";
    /// Every attribute name above.
    pub const ALL: [&str; 14] = [
        SPECVERSION,
        ID,
        SOURCE,
        TYPE,
        TIME,
        DATACONTENTTYPE,
        CORRELATIONID,
        CAUSATIONID,
        TRACEPARENT,
        TRACESTATE,
        PARTITIONKEY,
        REPLYTO,
        EXPIRESAT,
        ATTEMPT,
    ];
}

/// Header keys written on a message when it fails, and when it is dead-lettered.
pub mod dead_letter_attr {
    /// Why the message was dead-lettered: `handler-failed`, `undecodable`, `no-handler`, `expired`.
    pub const REASON: &str = "deadletterreason";
    /// The last error's text.
    pub const ERROR: &str = "deadlettererror";
    /// The error kind (`transient`, `permanent`, `codec`, ...).
    pub const ERROR_KIND: &str = "deadlettererrorkind";
    /// Which handler failed.
    pub const HANDLER: &str = "deadletterhandler";
    /// How many delivery attempts were made.
    pub const ATTEMPTS: &str = "deadletterattempts";
    /// The queue the message came from (where a replay sends it back).
    pub const QUEUE: &str = "deadletterqueue";
    /// The failure fingerprint: error kind + handler + normalised message, to group failures.
    pub const FINGERPRINT: &str = "deadletterfingerprint";
    /// The first failure time (RFC 3339), carried across redeliveries.
    pub const FIRST_FAILURE: &str = "firstfailuretime";
    /// The latest failure time (RFC 3339).
    pub const LAST_FAILURE: &str = "lastfailuretime";
    /// The latest failure's error text, carried across redeliveries.
    pub const LAST_ERROR: &str = "lasterror";
    /// Every failure annotation name above (what a replay removes).
    pub const ALL: [&str; 10] =
        [REASON, ERROR, ERROR_KIND, HANDLER, ATTEMPTS, QUEUE, FINGERPRINT, FIRST_FAILURE, LAST_FAILURE, LAST_ERROR];
}

/// Attribute values every message Courier writes carries alike: `specversion` 1.0 and `datacontenttype`
/// `application/json`. An engine may leave them off the wire ([`is_implied_attribute`]) and put them back when it
/// reads a message ([`restore_implied_attributes`]): each header costs the client and the server work on every
/// message (the raw NATS client sending Courier's seven attributes as headers fell from 62.7k to 42.7k msg/s).
pub const IMPLIED_ATTRIBUTES: [(&str, &str); 2] =
    [(attr::SPECVERSION, "1.0"), (attr::DATACONTENTTYPE, "application/json")];

/// Whether a header (name and value) is one of the [`IMPLIED_ATTRIBUTES`], which an engine need not send.
pub fn is_implied_attribute(name: &str, value: &str) -> bool {
    IMPLIED_ATTRIBUTES.contains(&(name, value))
}

/// Puts back the [`IMPLIED_ATTRIBUTES`] missing from headers read off the wire, on a message with a `type`; headers
/// without one are left as they came (not a Courier message, they are dead-lettered as such).
///
/// ```
/// let mut headers = courier_core::Headers::from([("type", "shop.order.placed.v1")]);
/// courier_core::restore_implied_attributes(&mut headers);
/// assert_eq!(headers.get("specversion").map(String::as_str), Some("1.0"));
/// assert_eq!(headers.get("datacontenttype").map(String::as_str), Some("application/json"));
/// ```
pub fn restore_implied_attributes(headers: &mut Headers) {
    if headers.contains_key(attr::TYPE) {
        for (name, value) in IMPLIED_ATTRIBUTES {
            headers.get_or_insert_with(crate::HeaderName::from_static(name), || value.to_owned());
        }
    }
}

/// A message as a transport carries it: string headers and an opaque body.
///
/// Transports store and move this; the bus turns it into an [`Envelope`] and a typed message. Nothing in it is
/// trusted: [`Envelope::from_raw`] validates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawMessage {
    /// Header name to value (CloudEvents attributes and extensions, lower case).
    pub headers: Headers,
    /// The body.
    pub body: Bytes,
}

impl RawMessage {
    /// The message id header, if present.
    pub fn id(&self) -> Option<&str> {
        self.header(attr::ID)
    }

    /// The message type header, if present.
    pub fn message_type(&self) -> Option<&str> {
        self.header(attr::TYPE)
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// A CloudEvents 1.0 event with Courier's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique message id (UUIDv7 when Courier creates it).
    pub id: String,
    /// The producing service.
    pub source: String,
    /// The message name with version.
    pub message_type: String,
    /// When the message was produced.
    pub time: DateTime<Utc>,
    /// The body's MIME type.
    pub content_type: String,
    /// Ties a conversation together.
    pub correlation_id: Option<String>,
    /// The id of the message that caused this one.
    pub causation_id: Option<String>,
    /// W3C `traceparent`.
    pub traceparent: Option<String>,
    /// W3C `tracestate`.
    pub tracestate: Option<String>,
    /// Ordering key.
    pub partition_key: Option<String>,
    /// Where a reply goes.
    pub reply_to: Option<String>,
    /// After this time the message is not handled.
    pub expires_at: Option<DateTime<Utc>>,
    /// Any other headers (user extensions, failure annotations).
    pub extensions: Headers,
    /// The encoded body.
    pub data: Bytes,
}

impl Envelope {
    /// Builds an envelope for a typed message, with a fresh UUIDv7 id and the current time.
    pub fn for_message<M: Message>(source: &str, message: &M) -> Result<Self> {
        Ok(Self {
            id: uuid::Uuid::now_v7().hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).to_owned(),
            source: source.to_owned(),
            message_type: M::NAME.to_owned(),
            time: Utc::now(),
            content_type: <M::Codec as Codec>::CONTENT_TYPE.to_owned(),
            correlation_id: None,
            causation_id: None,
            traceparent: None,
            tracestate: None,
            partition_key: message.partition_key(),
            reply_to: None,
            expires_at: None,
            extensions: Headers::new(),
            data: <M::Codec as Codec>::encode(message)?,
        })
    }

    /// Decodes the body as `M`, checking that the type and content type match.
    pub fn decode<M: Message>(&self) -> Result<M> {
        if self.message_type != M::NAME {
            return Err(Error::codec(format!(
                "message type is '{}' but the handler expects '{}'",
                self.message_type,
                M::NAME
            )));
        }
        let expected = <M::Codec as Codec>::CONTENT_TYPE;
        if !content_type_matches(&self.content_type, expected) {
            return Err(Error::codec(format!(
                "content type is '{}' but '{}' expects '{expected}'",
                self.content_type,
                M::NAME
            )));
        }
        <M::Codec as Codec>::decode(&self.data)
    }

    /// Maps the envelope to transport headers and body (binary content mode).
    pub fn into_raw(self) -> RawMessage {
        use crate::HeaderName as N;
        let mut headers = self.extensions;
        // The six every message has, and room for a trace context and a correlation.
        headers.reserve(8);
        // In name order, so that each lands at the end of the (sorted) headers when there are no extensions.
        let mut put = |name: &'static str, value: Option<String>| {
            if let Some(value) = value {
                headers.append(N::from_static(name), value);
            }
        };
        put(attr::CAUSATIONID, self.causation_id);
        put(attr::CORRELATIONID, self.correlation_id);
        put(attr::DATACONTENTTYPE, Some(self.content_type));
        put(attr::EXPIRESAT, self.expires_at.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)));
        put(attr::ID, Some(self.id));
        put(attr::PARTITIONKEY, self.partition_key);
        put(attr::REPLYTO, self.reply_to);
        put(attr::SOURCE, Some(self.source));
        put(attr::SPECVERSION, Some("1.0".to_owned()));
        put(attr::TIME, Some(rfc3339_micros(&self.time)));
        put(attr::TRACEPARENT, self.traceparent);
        put(attr::TRACESTATE, self.tracestate);
        put(attr::TYPE, Some(self.message_type));
        RawMessage { headers, body: self.data }
    }

    /// Validates transport headers as a CloudEvents 1.0 envelope. Never panics; a missing or malformed required
    /// attribute is an [`ErrorKind::Envelope`](crate::ErrorKind::Envelope) error naming it.
    pub fn from_raw(raw: RawMessage) -> Result<Self> {
        let RawMessage { headers, body } = raw;
        // One pass over the headers: each attribute moves into its field, anything else into the extensions (in
        // name order already, so each lands at the end).
        let (mut specversion, mut id, mut source, mut message_type, mut time, mut content_type) =
            (None, None, None, None, None, None);
        let (mut correlation_id, mut causation_id, mut traceparent, mut tracestate) = (None, None, None, None);
        let (mut partition_key, mut reply_to, mut expires_at) = (None, None, None);
        let mut extensions = Headers::new();
        for (name, value) in headers {
            let field = match name.as_str() {
                attr::SPECVERSION => &mut specversion,
                attr::ID => &mut id,
                attr::SOURCE => &mut source,
                attr::TYPE => &mut message_type,
                attr::TIME => &mut time,
                attr::DATACONTENTTYPE => &mut content_type,
                attr::CORRELATIONID => &mut correlation_id,
                attr::CAUSATIONID => &mut causation_id,
                attr::TRACEPARENT => &mut traceparent,
                attr::TRACESTATE => &mut tracestate,
                attr::PARTITIONKEY => &mut partition_key,
                attr::REPLYTO => &mut reply_to,
                attr::EXPIRESAT => &mut expires_at,
                _ => {
                    extensions.insert(name, value);
                    continue;
                }
            };
            *field = Some(value);
        }
        match specversion.as_deref() {
            Some("1.0") => {}
            Some(other) => return Err(Error::envelope(format!("unsupported CloudEvents specversion '{other}'"))),
            None => return Err(Error::envelope("missing CloudEvents attribute 'specversion'")),
        }
        let required = |name: &str, value: Option<String>| -> Result<String> {
            match value {
                Some(v) if !v.trim().is_empty() => Ok(v),
                _ => Err(Error::envelope(format!("missing CloudEvents attribute '{name}'"))),
            }
        };
        let id = required(attr::ID, id)?;
        let source = required(attr::SOURCE, source)?;
        let message_type = required(attr::TYPE, message_type)?;
        let time = match time {
            Some(t) => parse_time(attr::TIME, &t)?,
            None => Utc::now(),
        };
        let expires_at = expires_at.map(|t| parse_time(attr::EXPIRESAT, &t)).transpose()?;
        Ok(Self {
            id,
            source,
            message_type,
            time,
            content_type: content_type.unwrap_or_else(|| "application/json".to_owned()),
            correlation_id,
            causation_id,
            traceparent,
            tracestate,
            partition_key,
            reply_to,
            expires_at,
            extensions,
            data: body,
        })
    }
}

/// `time` in RFC 3339, UTC, with microseconds (`2026-12-06T22:37:38.123456Z`): what chrono's
/// `to_rfc3339_opts(SecondsFormat::Micros, true)` writes, digit by digit rather than through the formatting
/// machinery (it runs for every message published). Years outside 0-9999 and leap seconds go to chrono.
fn rfc3339_micros(time: &DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    // The UTC calendar time once (each of chrono's accessors on a `DateTime` works it out again).
    let naive = time.naive_utc();
    let (year, nanos) = (naive.year(), naive.nanosecond());
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return time.to_rfc3339_opts(SecondsFormat::Micros, true);
    }
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    let mut digits = |at: usize, width: usize, mut value: u32| {
        for digit in out[at..at + width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    digits(0, 4, year as u32);
    digits(5, 2, naive.month());
    digits(8, 2, naive.day());
    digits(11, 2, naive.hour());
    digits(14, 2, naive.minute());
    digits(17, 2, naive.second());
    digits(20, 6, nanos / 1000);
    std::str::from_utf8(&out).map(str::to_owned).unwrap_or_default()
}

/// Reads exactly the shape [`rfc3339_micros`] writes; `None` for anything else (chrono reads those).
fn parse_rfc3339_micros(text: &str) -> Option<DateTime<Utc>> {
    let b = text.as_bytes();
    if b.len() != 27 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if b[19] != b'.' || b[26] != b'Z' {
        return None;
    }
    let number = |from: usize, to: usize| {
        b[from..to].iter().try_fold(0u32, |n, c| c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0')))
    };
    let date = chrono::NaiveDate::from_ymd_opt(number(0, 4)? as i32, number(5, 7)?, number(8, 10)?)?;
    let time =
        chrono::NaiveTime::from_hms_micro_opt(number(11, 13)?, number(14, 16)?, number(17, 19)?, number(20, 26)?)?;
    Some(date.and_time(time).and_utc())
}

fn parse_time(name: &str, value: &str) -> Result<DateTime<Utc>> {
    if let Some(time) = parse_rfc3339_micros(value) {
        return Ok(time);
    }
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Error::envelope(format!("attribute '{name}' is not an RFC 3339 time ('{value}'): {e}")))
}

fn content_type_matches(actual: &str, expected: &str) -> bool {
    let base = actual.split(';').next().unwrap_or("").trim();
    base.eq_ignore_ascii_case(expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Json;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Ping {
        n: u32,
    }
    impl Message for Ping {
        const NAME: &'static str = "test.ping.v1";
        type Codec = Json;
    }

    #[test]
    fn round_trips_through_headers() {
        let mut env = Envelope::for_message("svc", &Ping { n: 7 }).unwrap();
        env.correlation_id = Some("c-1".into());
        env.extensions.insert("tenant", "acme");
        let raw = env.clone().into_raw();
        assert_eq!(raw.header("specversion"), Some("1.0"));
        assert_eq!(raw.header("type"), Some("test.ping.v1"));
        let back = Envelope::from_raw(raw).unwrap();
        assert_eq!(back.id, env.id);
        assert_eq!(back.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(back.extensions.get("tenant").map(String::as_str), Some("acme"));
        assert_eq!(back.decode::<Ping>().unwrap(), Ping { n: 7 });
    }

    #[test]
    fn headers_come_out_sorted_and_unique_whatever_the_extensions() {
        let mut env = Envelope::for_message("svc", &Ping { n: 7 }).unwrap();
        env.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        // Before, between and after the attributes, and one with an attribute's name (the attribute wins).
        for (name, value) in [("aaa", "1"), ("tenant", "acme"), ("zzz", "2"), ("id", "not-the-id")] {
            env.extensions.insert(name, value);
        }
        let raw = env.clone().into_raw();
        let names: Vec<&str> = raw.headers.keys().map(|k| k.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
        assert_eq!(raw.header("id"), Some(env.id.as_str()));
        assert_eq!(raw.header("tenant"), Some("acme"));
        assert_eq!(raw.header("zzz"), Some("2"));
        assert_eq!(names.len(), 10, "{names:?}");
    }

    #[test]
    fn times_are_written_and_read_as_chrono_does() {
        let base = DateTime::parse_from_rfc3339("0001-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        for step in 0..2000i64 {
            // Spread over the years 1-9999, with every sub-second digit exercised.
            let t =
                base + chrono::Duration::microseconds((step * 157_079_993_003_117 + step) % 315_500_000_000_000_000);
            let written = rfc3339_micros(&t);
            assert_eq!(written, t.to_rfc3339_opts(SecondsFormat::Micros, true));
            assert_eq!(parse_time("time", &written).unwrap(), t);
        }
        let now = Utc::now();
        assert_eq!(parse_rfc3339_micros(&rfc3339_micros(&now)).unwrap().timestamp_micros(), now.timestamp_micros());
        // Other RFC 3339 shapes still parse (through chrono); malformed ones are errors, not panics.
        for other in ["2026-12-06T22:37:38Z", "2026-12-06t22:37:38.5+01:00", "2026-12-06T22:37:38.123456789Z"] {
            assert!(parse_time("time", other).is_ok(), "{other}");
        }
        for bad in ["2026-13-06T22:37:38.123456Z", "2026-12-06T25:37:38.123456Z", "2026-12-06T22:37:38.12345xZ"] {
            assert!(parse_time("time", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        let raw = RawMessage { headers: Headers::new(), body: Bytes::from_static(b"\xff") };
        let err = Envelope::from_raw(raw).unwrap_err();
        assert!(err.to_string().contains("specversion"));

        let mut env = Envelope::for_message("svc", &Ping { n: 1 }).unwrap().into_raw();
        env.headers.insert("time", "yesterday");
        assert!(Envelope::from_raw(env).unwrap_err().to_string().contains("RFC 3339"));

        let mut env = Envelope::for_message("svc", &Ping { n: 1 }).unwrap();
        env.data = Bytes::from_static(b"{not json");
        assert!(env.decode::<Ping>().unwrap_err().is_permanent());
    }
}
