//! How Courier names map onto NATS: subjects, streams, consumers and bucket keys of one namespace.
//!
//! Queue names and message types may hold characters NATS forbids in a subject token or a consumer name (`.`,
//! spaces, `*`, `>`), so each becomes one token: letters, digits, `-` and `_` stay, every other byte is written
//! `=XX` (hex). The mapping is reversible, so `courier queues` shows the real names.

use std::fmt::Write;

/// The header holding how many counted deliveries earlier copies of a message had (see the crate docs).
pub(crate) const PRIOR_DELIVERIES: &str = "Courier-Prior-Deliveries";
/// The header holding a scheduled message's due time, in milliseconds since the Unix epoch.
pub(crate) const DELIVER_AT: &str = "Courier-Deliver-At";

/// Encodes a name as one subject token / consumer name.
pub(crate) fn encode_token(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            let _ = write!(out, "={b:02X}");
        }
    }
    if out.is_empty() {
        out.push_str("=00");
    }
    out
}

/// Reverses [`encode_token`]; `None` if `token` is not one.
pub(crate) fn decode_token(token: &str) -> Option<String> {
    if token == "=00" {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = token.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The names of one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// The namespace itself.
    pub(crate) namespace: String,
}

impl Names {
    pub(crate) fn new(namespace: &str) -> Self {
        Self { namespace: namespace.to_owned() }
    }

    /// The work-queue stream holding every queue's ready and delayed messages.
    pub(crate) fn queue_stream(&self) -> String {
        format!("{}_queues", self.namespace)
    }

    /// The stream holding the dead letters (limits retention: kept until replayed or purged).
    pub(crate) fn dlq_stream(&self) -> String {
        format!("{}_dlq", self.namespace)
    }

    /// The stream of large bodies.
    pub(crate) fn blob_stream(&self) -> String {
        format!("{}_blobs", self.namespace)
    }

    /// The stream of bindings (message type -> queues).
    pub(crate) fn bindings_stream(&self) -> String {
        format!("{}_bindings", self.namespace)
    }

    pub(crate) fn bind_prefix(&self) -> String {
        format!("{}.bind.", self.namespace)
    }

    pub(crate) fn unbind_prefix(&self) -> String {
        format!("{}.unbind.", self.namespace)
    }

    /// `<ns>.bind.<type>.<queue>`: one binding.
    pub(crate) fn bind_subject(&self, message_type: &str, queue: &str) -> String {
        format!("{}.bind.{}.{}", self.namespace, encode_token(message_type), encode_token(queue))
    }

    /// `<ns>.unbind.<type>.<queue>`: announces that a binding was removed.
    pub(crate) fn unbind_subject(&self, message_type: &str, queue: &str) -> String {
        format!("{}.unbind.{}.{}", self.namespace, encode_token(message_type), encode_token(queue))
    }

    /// The durable consumer that moves due delayed messages to their queues.
    pub(crate) fn scheduler_consumer(&self) -> &'static str {
        "courier_scheduler"
    }

    pub(crate) fn queue_prefix(&self) -> String {
        format!("{}.q.", self.namespace)
    }

    pub(crate) fn delay_prefix(&self) -> String {
        format!("{}.delay.", self.namespace)
    }

    pub(crate) fn dlq_prefix(&self) -> String {
        format!("{}.dlq.", self.namespace)
    }

    /// `<ns>.q.<queue>`: where a queue's ready messages are published.
    pub(crate) fn queue_subject(&self, queue: &str) -> String {
        format!("{}.q.{}", self.namespace, encode_token(queue))
    }

    /// `<ns>.delay.<queue>`: where a queue's scheduled messages wait until due.
    pub(crate) fn delay_subject(&self, queue: &str) -> String {
        format!("{}.delay.{}", self.namespace, encode_token(queue))
    }

    /// `<ns>.dlq.<queue>`: the queue's dead letters.
    pub(crate) fn dlq_subject(&self, queue: &str) -> String {
        format!("{}.dlq.{}", self.namespace, encode_token(queue))
    }

    /// The durable consumer of a queue.
    pub(crate) fn consumer(&self, queue: &str) -> String {
        format!("q_{}", encode_token(queue))
    }

    /// The queue a consumer name belongs to, if it is a queue consumer.
    pub(crate) fn queue_of_consumer(&self, consumer: &str) -> Option<String> {
        consumer.strip_prefix("q_").and_then(decode_token)
    }

    /// The queue a subject under `prefix` belongs to.
    pub(crate) fn queue_of_subject(&self, prefix: &str, subject: &str) -> Option<String> {
        subject.strip_prefix(prefix).and_then(decode_token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for name in ["orders", "shop.order.placed.v1", "a b*c>d", "ünï=code", "", "x_y-z", "=41"] {
            let token = encode_token(name);
            assert!(token.chars().all(|c| c.is_ascii_alphanumeric() || "-_=".contains(c)), "{token}");
            assert_eq!(decode_token(&token).as_deref(), Some(name), "{token}");
        }
        assert_eq!(encode_token("shop.order"), "shop=2Eorder");
    }

    #[test]
    fn subjects_and_keys() {
        let n = Names::new("ns");
        assert_eq!(n.queue_subject("a.b"), "ns.q.a=2Eb");
        assert_eq!(n.queue_of_subject(&n.dlq_prefix(), &n.dlq_subject("a.b")).as_deref(), Some("a.b"));
        assert_eq!(n.queue_of_consumer(&n.consumer("x y")).as_deref(), Some("x y"));
        assert_eq!(n.bind_subject("shop.order.placed.v1", "shipping"), "ns.bind.shop=2Eorder=2Eplaced=2Ev1.shipping");
    }
}
