//! Courier headers <-> NATS headers.
//!
//! NATS header values cannot hold line breaks and lose surrounding spaces, and names must be printable ASCII
//! without `:`; an error text or a user's header may hold any of these. So `%`, CR, LF and leading or trailing
//! spaces in values, and any forbidden byte in names, are written `%XX`, and read back.
//!
//! The attribute values every Courier message shares ([`courier_core::IMPLIED_ATTRIBUTES`]) are left out and put back
//! on reading.

use async_nats::HeaderMap;
use courier_core::{HeaderName, Headers, is_implied_attribute, restore_implied_attributes};

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
    // A plain byte loop: header texts are short, and `str::contains` calls into memchr for each.
    if !text.bytes().any(|b| b == b'%') {
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
pub(crate) fn to_nats(headers: &Headers, extra: &[(&str, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if is_internal(name) || is_implied_attribute(name, value) {
            continue;
        }
        let value = escape_value(value);
        match (name.as_static(), escape_name(name)) {
            // A static name with nothing to escape (Courier's own names) is kept by NATS without a copy.
            (Some(name), std::borrow::Cow::Borrowed(_)) => {
                map.insert(async_nats::HeaderName::from_static(name), value.as_ref())
            }
            (_, escaped) => map.insert(escaped.as_ref(), value.as_ref()),
        }
    }
    for (name, value) in extra {
        map.insert(*name, value.as_str());
    }
    map
}

/// Whether a header is this engine's own bookkeeping, hidden from users.
pub(crate) fn is_internal(name: &str) -> bool {
    name.eq_ignore_ascii_case(PRIOR_DELIVERIES) || name.eq_ignore_ascii_case(DELIVER_AT)
}

/// The Courier headers of a NATS message (internal headers left out), and its prior delivery count.
pub(crate) fn from_nats(headers: Option<&HeaderMap>) -> (Headers, u32) {
    let mut prior = 0;
    let mut out = Headers::new();
    if let Some(headers) = headers {
        // NATS hands headers out in hash order: gathered first and sorted once, rather than each inserted in place.
        let mut entries = Vec::with_capacity(headers.len() + 2);
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
            let name =
                if name.bytes().any(|b| b == b'%') { HeaderName::from(unescape(name)) } else { HeaderName::from(name) };
            entries.push((name, unescape(value.as_str())));
        }
        out = Headers::from_entries(entries);
    }
    restore_implied_attributes(&mut out);
    (out, prior)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awkward_headers_round_trip() {
        let headers = Headers::from([
            ("lasterror", "line 1\r\nline 2 100% "),
            (" odd:name", " padded"),
            ("id", "0190"),
            ("empty", ""),
        ]);
        let nats = to_nats(&headers, &[(PRIOR_DELIVERIES, "3".to_owned())]);
        let (back, prior) = from_nats(Some(&nats));
        assert_eq!(back, headers);
        assert_eq!(prior, 3);
    }

    #[test]
    fn implied_attributes_stay_off_the_wire() {
        let headers = Headers::from([("type", "t.v1"), ("specversion", "1.0")]);
        let nats = to_nats(&headers, &[]);
        assert!(nats.get("specversion").is_none());
        let (back, _) = from_nats(Some(&nats));
        assert_eq!(back.get("specversion"), headers.get("specversion"));
    }
}
