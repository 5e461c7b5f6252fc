//! W3C trace context (`traceparent`), carried in every envelope.

use std::fmt;

/// A parsed W3C `traceparent`: `00-<trace id>-<parent span id>-<flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// 16-byte trace id.
    pub trace_id: u128,
    /// 8-byte span id of the parent.
    pub span_id: u64,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Starts a new trace.
    pub fn new_root() -> Self {
        let mut trace_id = rand::random::<u128>();
        if trace_id == 0 {
            trace_id = 1;
        }
        Self { trace_id, span_id: new_span_id(), flags: 1 }
    }

    /// A child in the same trace, with a fresh span id.
    pub fn child(&self) -> Self {
        Self { trace_id: self.trace_id, span_id: new_span_id(), flags: self.flags }
    }

    /// Parses a header; `None` for anything that is not a valid version-00 traceparent.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || trace.len() != 32 || span.len() != 16 || flags.len() != 2 || version == "ff" {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(Self { trace_id, span_id, flags: u8::from_str_radix(flags, 16).ok()? })
    }

    /// The trace id as 32 hex characters (never truncated).
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The `traceparent` header value, `00-<trace id>-<span id>-<flags>` (what [`Display`](fmt::Display) writes),
    /// in one allocation of its exact length: it is built for every message published.
    pub fn to_header(&self) -> String {
        // Written digit by digit into a buffer of the header's length: the formatting machinery took longer than
        // the rest of building a message's envelope together, and pushing digit by digit onto a vector checked its
        // capacity at each one.
        let mut out = *b"00-________________________________-________________-__";
        hex_into(&mut out[3..35], self.trace_id);
        hex_into(&mut out[36..52], u128::from(self.span_id));
        hex_into(&mut out[53..55], u128::from(self.flags));
        std::str::from_utf8(&out).map(str::to_owned).unwrap_or_default()
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

/// Writes the low `out.len()` hex digits of `value` into `out`, lower case, most significant first.
fn hex_into(out: &mut [u8], value: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut rest = value;
    for digit in out.iter_mut().rev() {
        *digit = HEX[(rest & 0xf) as usize];
        rest >>= 4;
    }
}

fn new_span_id() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp = TraceParent::parse(h).unwrap();
        assert_eq!(tp.to_string(), h);
        assert_eq!(tp.to_header(), h);
        assert_eq!(tp.to_header().capacity(), h.len());
        for _ in 0..100 {
            let random = TraceParent::new_root();
            assert_eq!(random.to_header(), random.to_string());
        }
        let child = tp.child();
        assert_eq!(child.trace_id, tp.trace_id);
        assert_ne!(child.span_id, tp.span_id);
        assert!(TraceParent::parse("garbage").is_none());
        assert!(TraceParent::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
    }
}
