//! Courier headers <-> NATS headers.
//!
//! NATS header values cannot hold line breaks and lose surrounding spaces, and names must be printable ASCII
//! without `:`; an error text or a user's header may hold any of these. So `%`, CR, LF and leading or trailing
//! spaces in values, and any forbidden byte in names, are written `%XX`, and read back.
//!
//! Two attributes every Courier message has the same value for are left out and implied on reading (any message
//! with a `type` reads as `specversion` 1.0, with `datacontenttype` `application/json` unless it says otherwise):
//! each header costs the client and the server work on every message (the raw client sending Courier's seven
//! attributes as headers fell from 62.7k to 42.7k msg/s in the engine's benchmark).

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use courier_core::attr;

use crate::names::{DELIVER_AT, PRIOR_DELIVERIES};

fn escape_value(value: &str) -> std::borrow::Cow<'_, str> {
    let needs = value.contains(['%', '\r', '\n']) || value.starts_with(' ') || value.ends_with(' ');
    if !needs {
        return value.into();
    }
    let last = value.len().saturating_sub(1);
    let mut out = String::with_capacity(value.len() + 8);
    for (i, c) in value.char_indices() {
        match c {
            '%' => out.push_str("%25"),
            '\r' => out.push_str("%0D"),
            '\n' => out.push_str("%0A"),
            ' ' if i == 0 || i == last => out.push_str("%20"),
            c => out.push(c),
        }
    }
    out.into()
}

fn escape_name(name: &str) -> std::borrow::Cow<'_, str> {
    if name.bytes().all(|b| b.is_ascii_graphic() && b != b':' && b != b'%') && !name.is_empty() {
        return name.into();
    }
    let mut out = String::with_capacity(name.len() + 8);
    for b in name.bytes() {
        if b.is_ascii_graphic() && b != b':' && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    out.into()
}

fn unescape(text: &str) -> String {
    if !text.contains('%') {
        return text.to_owned();
    }
    if text == "%00" {
        return String::new();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The NATS headers for a Courier message.
pub(crate) fn to_nats<'a>(
    headers: impl IntoIterator<Item = (&'a String, &'a String)>,
    extra: &[(&str, String)],
) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if is_internal(name) || IMPLIED.contains(&(name.as_str(), value.as_str())) {
            continue;
        }
        map.insert(escape_name(name).as_ref(), escape_value(value).as_ref());
    }
    for (name, value) in extra {
        map.insert(*name, value.as_str());
    }
    map
}

/// Attribute values left out on the wire, and put back by [`from_nats`] on any message with a `type`.
const IMPLIED: [(&str, &str); 2] = [(attr::SPECVERSION, "1.0"), (attr::DATACONTENTTYPE, "application/json")];

/// Whether a header is this engine's own bookkeeping, hidden from users.
pub(crate) fn is_internal(name: &str) -> bool {
    name.eq_ignore_ascii_case(PRIOR_DELIVERIES) || name.eq_ignore_ascii_case(DELIVER_AT)
}

/// The Courier headers of a NATS message (internal headers left out), and its prior delivery count.
pub(crate) fn from_nats(headers: Option<&HeaderMap>) -> (BTreeMap<String, String>, u32) {
    let mut out = BTreeMap::new();
    let mut prior = 0;
    if let Some(headers) = headers {
        for (name, values) in headers.iter() {
            let name: &str = name.as_ref();
            let Some(value) = values.last() else { continue };
            if name == PRIOR_DELIVERIES {
                prior = value.as_str().parse().unwrap_or(0);
                continue;
            }
            if is_internal(name) {
                continue;
            }
            out.insert(unescape(name), unescape(value.as_str()));
        }
    }
    if out.contains_key(attr::TYPE) {
        for (name, value) in IMPLIED {
            out.entry(name.to_owned()).or_insert_with(|| value.to_owned());
        }
    }
    (out, prior)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awkward_headers_round_trip() {
        let headers = BTreeMap::from([
            ("lasterror".to_owned(), "line 1\r\nline 2 100% ".to_owned()),
            (" odd:name".to_owned(), " padded".to_owned()),
            ("id".to_owned(), "0190".to_owned()),
            ("empty".to_owned(), String::new()),
        ]);
        let nats = to_nats(&headers, &[(PRIOR_DELIVERIES, "3".to_owned())]);
        let (back, prior) = from_nats(Some(&nats));
        assert_eq!(back, headers);
        assert_eq!(prior, 3);
    }

    #[test]
    fn constant_attributes_are_implied() {
        let headers: BTreeMap<String, String> =
            [("specversion", "1.0"), ("type", "t.v1"), ("datacontenttype", "application/json"), ("id", "m-1")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into();
        let nats = to_nats(&headers, &[]);
        assert!(nats.get("specversion").is_none() && nats.get("datacontenttype").is_none());
        assert_eq!(from_nats(Some(&nats)).0, headers);

        // Another content type travels, and wins.
        let mut other = headers.clone();
        other.insert("datacontenttype".to_owned(), "application/msgpack".to_owned());
        assert_eq!(from_nats(Some(&to_nats(&other, &[]))).0, other);
    }
}
