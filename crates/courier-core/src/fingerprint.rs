//! Failure fingerprints: the same failure gets the same fingerprint, so dead letters can be grouped.

/// Normalises an error message so that messages differing only in ids, numbers or quoted values compare equal:
/// UUIDs, hex strings, numbers and quoted strings become `#`, and whitespace is collapsed.
///
/// ```
/// use courier_core::normalise_error_message;
/// assert_eq!(
///     normalise_error_message("order 42 not found (id 0190f5a2-7c1e-7d4b-9a1e-2b3c4d5e6f70)"),
///     normalise_error_message("order 7 not found (id 0190f5a2-0000-7d4b-9a1e-2b3c4d5e6f71)"),
/// );
/// ```
pub fn normalise_error_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars().peekable();
    let mut last_space = false;
    while let Some(c) = chars.next() {
        if c == '\'' || c == '"' || c == '`' {
            // A quoted value: skip to the closing quote.
            for d in chars.by_ref() {
                if d == c {
                    break;
                }
            }
            out.push('#');
            last_space = false;
        } else if c.is_ascii_alphanumeric() {
            let mut token = String::from(c);
            while let Some(&d) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '-' || d == '_' || d == '.' {
                    token.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            if token.chars().any(|t| t.is_ascii_digit()) {
                out.push('#');
            } else {
                out.push_str(&token.to_ascii_lowercase());
            }
            last_space = false;
        } else if c.is_whitespace() {
            if !last_space {
                out.push(' ');
            }
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
    }
    out.trim().chars().take(200).collect()
}

/// The fingerprint of a failure: a short stable hash of error kind + handler + normalised message.
///
/// ```
/// use courier_core::failure_fingerprint;
/// let a = failure_fingerprint("transient", "ship", "timeout after 30 ms calling 10.0.0.7");
/// let b = failure_fingerprint("transient", "ship", "timeout after 31 ms calling 10.0.0.9");
/// assert_eq!(a, b);
/// assert_ne!(a, failure_fingerprint("transient", "email", "timeout after 30 ms calling 10.0.0.7"));
/// ```
pub fn failure_fingerprint(error_kind: &str, handler: &str, error_message: &str) -> String {
    // FNV-1a 64: stable across Rust versions and platforms, unlike std's DefaultHasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let normalised = normalise_error_message(error_message);
    for part in [error_kind, handler, normalised.as_str()] {
        for byte in part.bytes().chain(std::iter::once(0u8)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_and_numbers_collapse() {
        assert_eq!(normalise_error_message("No  stock for 'SKU-9' (had 3)"), "no stock for # (had #)");
    }
}
