//! [`Headers`]: a message's header names and values, as every transport carries them.
//!
//! A message crosses several hands on its way (envelope, transport, engine wire format, and back), and each used to
//! rebuild a `BTreeMap<String, String>`: a heap string for every name, a tree node per entry, a string comparison
//! per step of every lookup. Names are nearly always Courier's own attribute names, so [`HeaderName`] keeps those
//! as `&'static str` (no allocation, whichever way the name arrived), and [`Headers`] keeps its few entries in one
//! sorted vector: a lookup is a binary search over a dozen entries, moving the headers is moving one vector.
//! Iteration is in name order, as it was with a `BTreeMap`, so anything written from headers stays deterministic.

use std::borrow::{Borrow, Cow};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;

use crate::envelope::{attr, dead_letter_attr};

/// A header name. Courier's own attribute names are held as static strings, any other name as an owned one; both
/// compare, hash and order as the plain string.
///
/// ```
/// use courier_core::HeaderName;
/// let known = HeaderName::from("type".to_owned());
/// assert!(known.is_static()); // the string was not kept
/// assert_eq!(known, "type");
/// assert!(!HeaderName::from("tenant").is_static());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HeaderName(Cow<'static, str>);

/// Orders names as plain strings do, comparing byte by byte inline: header names are short and mostly differ
/// within their first bytes, and a lookup among a dozen of them called `memcmp` for nearly every step (a tenth of
/// decoding a message's headers).
fn compare_names(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

impl PartialOrd for HeaderName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for HeaderName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        compare_names(&self.0, &other.0)
    }
}

impl HeaderName {
    /// A name from a static string, without looking it up or allocating.
    pub const fn from_static(name: &'static str) -> Self {
        Self(Cow::Borrowed(name))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a static string, if it is held as one (for engines whose own header types can keep it without
    /// copying).
    pub fn as_static(&self) -> Option<&'static str> {
        match self.0 {
            Cow::Borrowed(name) => Some(name),
            Cow::Owned(_) => None,
        }
    }

    /// Whether the name is held as a static string (one of Courier's own, or made by
    /// [`from_static`](Self::from_static)).
    pub fn is_static(&self) -> bool {
        matches!(self.0, Cow::Borrowed(_))
    }
}

/// Courier's own header names, so a name read off the wire needs no allocation of its own.
fn known(name: &str) -> Option<&'static str> {
    attr::ALL.into_iter().chain(dead_letter_attr::ALL).find(|k| *k == name)
}

impl From<&str> for HeaderName {
    fn from(name: &str) -> Self {
        match known(name) {
            Some(name) => Self::from_static(name),
            None => Self(Cow::Owned(name.to_owned())),
        }
    }
}

impl From<String> for HeaderName {
    fn from(name: String) -> Self {
        match known(&name) {
            Some(name) => Self::from_static(name),
            None => Self(Cow::Owned(name)),
        }
    }
}

impl From<&String> for HeaderName {
    fn from(name: &String) -> Self {
        Self::from(name.as_str())
    }
}

impl From<HeaderName> for String {
    fn from(name: HeaderName) -> Self {
        name.0.into_owned()
    }
}

impl Deref for HeaderName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for HeaderName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for HeaderName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for HeaderName {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for HeaderName {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl serde::Serialize for HeaderName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for HeaderName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = HeaderName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a header name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<HeaderName, E> {
                Ok(HeaderName::from(name))
            }
            fn visit_string<E: serde::de::Error>(self, name: String) -> Result<HeaderName, E> {
                Ok(HeaderName::from(name))
            }
        }
        deserializer.deserialize_str(Name)
    }
}

/// A message's headers: names to string values, at most one value a name, iterated in name order.
///
/// It reads like the `BTreeMap<String, String>` it replaces (`get`, `insert`, `remove`, `contains_key`, `iter`),
/// and converts to and from one; it serialises as a JSON object.
///
/// ```
/// use courier_core::Headers;
/// let mut headers = Headers::new();
/// headers.insert("type", "shop.order.placed.v1");
/// headers.insert("tenant".to_owned(), "acme".to_owned());
/// assert_eq!(headers.get("tenant").map(String::as_str), Some("acme"));
/// assert_eq!(headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["tenant", "type"]);
/// assert_eq!(headers.remove("type").as_deref(), Some("shop.order.placed.v1"));
/// assert_eq!(headers.len(), 1);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Headers {
    /// Sorted by name, names unique.
    entries: Vec<(HeaderName, String)>,
}

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Self { entries: Vec::new() }
    }

    /// Headers from entries in any order; where a name comes twice, the later value wins (as with
    /// [`insert`](Self::insert) one by one, but sorted once instead of searched at every entry).
    ///
    /// ```
    /// use courier_core::{HeaderName, Headers};
    /// let headers = Headers::from_entries(vec![
    ///     (HeaderName::from("type"), "a.v1".to_owned()),
    ///     (HeaderName::from("id"), "1".to_owned()),
    ///     (HeaderName::from("type"), "b.v1".to_owned()),
    /// ]);
    /// assert_eq!(headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["id", "type"]);
    /// assert_eq!(headers.get("type").map(String::as_str), Some("b.v1"));
    /// ```
    pub fn from_entries(mut entries: Vec<(HeaderName, String)>) -> Self {
        if !entries.is_sorted_by(|(a, _), (b, _)| a < b) {
            // Stable, so equal names keep their order; in place, keeping the last value of each run.
            entries.sort_by(|(a, _), (b, _)| a.cmp(b));
            entries.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    std::mem::swap(later, kept);
                }
                same
            });
        }
        Self { entries }
    }

    /// No headers, with room for `capacity` without reallocating.
    pub fn with_capacity(capacity: usize) -> Self {
        Self { entries: Vec::with_capacity(capacity) }
    }

    /// Makes room for `additional` more headers.
    pub fn reserve(&mut self, additional: usize) {
        self.entries.reserve(additional);
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        // Entries arrive in name order more often than not (read off a sorted wire format, or built so): check the
        // end before searching.
        match self.entries.last() {
            None => Err(0),
            Some((last, _)) if compare_names(last, name).is_lt() => Err(self.entries.len()),
            _ => self.entries.binary_search_by(|(k, _)| compare_names(k, name)),
        }
    }

    /// A header's value.
    pub fn get(&self, name: &str) -> Option<&String> {
        self.position(name).ok().map(|i| &self.entries[i].1)
    }

    /// A header's value, to change in place.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut String> {
        self.position(name).ok().map(|i| &mut self.entries[i].1)
    }

    /// Whether the header is present.
    pub fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    /// Sets a header; returns the value it replaces.
    pub fn insert(&mut self, name: impl Into<HeaderName>, value: impl Into<String>) -> Option<String> {
        let name = name.into();
        match self.position(&name) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value.into())),
            Err(i) => {
                self.entries.insert(i, (name, value.into()));
                None
            }
        }
    }

    /// Sets a header that usually sorts after every header present (as when headers are built in name order):
    /// then it is pushed at the end with one comparison, else inserted in its place as [`insert`](Self::insert)
    /// does.
    pub(crate) fn append(&mut self, name: HeaderName, value: String) {
        match self.entries.last() {
            Some((last, _)) if compare_names(last, &name).is_ge() => {
                self.insert(name, value);
            }
            _ => self.entries.push((name, value)),
        }
    }

    /// The header's value, set first from `value` if the header is missing (as `entry(name).or_insert_with` on a
    /// map).
    pub fn get_or_insert_with(&mut self, name: impl Into<HeaderName>, value: impl FnOnce() -> String) -> &mut String {
        let name = name.into();
        let i = match self.position(&name) {
            Ok(i) => i,
            Err(i) => {
                self.entries.insert(i, (name, value()));
                i
            }
        };
        &mut self.entries[i].1
    }

    /// Removes a header; returns its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        self.position(name).ok().map(|i| self.entries.remove(i).1)
    }

    /// How many headers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Names and values, in name order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&HeaderName, &String)> + ExactSizeIterator {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// Names, in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &HeaderName> + ExactSizeIterator {
        self.entries.iter().map(|(k, _)| k)
    }

    /// Values, in name order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &String> + ExactSizeIterator {
        self.entries.iter().map(|(_, v)| v)
    }

    /// Keeps only the headers for which `keep` returns true.
    pub fn retain(&mut self, mut keep: impl FnMut(&HeaderName, &mut String) -> bool) {
        self.entries.retain_mut(|(k, v)| keep(k, v));
    }

    /// Removes every header.
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Into<HeaderName>, V: Into<String>> Extend<(K, V)> for Headers {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl<K: Into<HeaderName>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self::from_entries(iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

impl<K: Into<HeaderName>, V: Into<String>, const N: usize> From<[(K, V); N]> for Headers {
    fn from(entries: [(K, V); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl From<BTreeMap<String, String>> for Headers {
    fn from(map: BTreeMap<String, String>) -> Self {
        // Already sorted and unique: no search needed.
        Self { entries: map.into_iter().map(|(k, v)| (HeaderName::from(k), v)).collect() }
    }
}

impl From<Headers> for BTreeMap<String, String> {
    fn from(headers: Headers) -> Self {
        headers.into_iter().map(|(k, v)| (String::from(k), v)).collect()
    }
}

impl IntoIterator for Headers {
    type Item = (HeaderName, String);
    type IntoIter = std::vec::IntoIter<(HeaderName, String)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a HeaderName, &'a String);
    type IntoIter =
        std::iter::Map<std::slice::Iter<'a, (HeaderName, String)>, fn(&'a (HeaderName, String)) -> Self::Item>;
    fn into_iter(self) -> Self::IntoIter {
        fn pair((k, v): &(HeaderName, String)) -> (&HeaderName, &String) {
            (k, v)
        }
        self.entries.iter().map(pair as fn(&'a (HeaderName, String)) -> Self::Item)
    }
}

impl serde::Serialize for Headers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> serde::Deserialize<'de> for Headers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Map;
        impl<'de> serde::de::Visitor<'de> for Map {
            type Value = Headers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of header names to string values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Headers, A::Error> {
                let mut headers = Headers::with_capacity(map.size_hint().unwrap_or(8).min(64));
                while let Some((name, value)) = map.next_entry::<HeaderName, String>()? {
                    headers.insert(name, value);
                }
                Ok(headers)
            }
        }
        deserializer.deserialize_map(Map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_order_as_plain_strings_do() {
        let names =
            ["", "a", "ab", "b", "id", "type", "time", "traceparent", "tracestate", "t", "Type", "\u{e9}t\u{e9}"];
        for a in names {
            for b in names {
                assert_eq!(compare_names(a, b), a.cmp(b), "{a:?} against {b:?}");
                assert_eq!(HeaderName::from(a).cmp(&HeaderName::from(b)), a.cmp(b));
            }
        }
    }

    #[test]
    fn keeps_names_sorted_and_unique_whatever_the_order_they_come_in() {
        let mut headers = Headers::new();
        for name in ["type", "id", "zeta", "alpha", "id"] {
            headers.insert(name, name.to_uppercase());
        }
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["alpha", "id", "type", "zeta"]);
        assert_eq!(headers.insert("zeta", "z").as_deref(), Some("ZETA"));
        assert_eq!(headers.remove("alpha").as_deref(), Some("ALPHA"));
        assert_eq!(headers.remove("alpha"), None);
        assert!(!headers.contains_key("nope") && headers.contains_key("type"));
    }

    #[test]
    fn gathered_entries_are_the_same_as_inserted_ones() {
        let entries = [("type", "1"), ("id", "2"), ("a", "3"), ("type", "4"), ("a", "5"), ("z", "6"), ("a", "7")];
        let mut inserted = Headers::new();
        for (name, value) in entries {
            inserted.insert(name, value);
        }
        let gathered = Headers::from_entries(entries.map(|(n, v)| (HeaderName::from(n), v.to_owned())).to_vec());
        assert_eq!(gathered, inserted);
        assert_eq!(gathered.get("a").map(String::as_str), Some("7"));
        let sorted_with_twins = vec![(HeaderName::from("a"), "1".to_owned()), (HeaderName::from("a"), "2".to_owned())];
        assert_eq!(Headers::from_entries(sorted_with_twins), Headers::from([("a", "2")]));
    }

    #[test]
    fn known_names_are_not_allocated_whichever_way_they_arrive() {
        assert!(HeaderName::from("traceparent").is_static());
        assert!(HeaderName::from(String::from("deadletterreason")).is_static());
        let parsed: Headers = serde_json::from_str(r#"{"source":"svc","tenant":"acme"}"#).unwrap();
        let statics: Vec<bool> = parsed.keys().map(HeaderName::is_static).collect();
        assert_eq!(statics, [true, false]);
    }

    #[test]
    fn round_trips_through_json_and_a_btree_map_in_name_order() {
        let headers = Headers::from([("type", "t.v1"), ("id", "m-1"), ("x", "1")]);
        let json = serde_json::to_string(&headers).unwrap();
        assert_eq!(json, r#"{"id":"m-1","type":"t.v1","x":"1"}"#);
        assert_eq!(serde_json::from_str::<Headers>(&json).unwrap(), headers);
        let map = BTreeMap::from(headers.clone());
        assert_eq!(Headers::from(map), headers);
        // A repeated name keeps the last value, as a map would.
        let repeated: Headers = serde_json::from_str(r#"{"a":"1","a":"2"}"#).unwrap();
        assert_eq!(repeated.get("a").map(String::as_str), Some("2"));
    }
}
