//! `courier dlq show ID`: every header and the body of one dead letter.

use anyhow::anyhow;
use courier::{DeadLetter, DeadLetterFilter, Engine, attr};
use serde::Serialize;

use crate::cli::ShowArgs;
use crate::output;

/// The most body bytes a hex preview shows.
const HEX_PREVIEW: usize = 512;

/// Shows one dead letter.
pub(crate) async fn run(engine: &Engine, args: &ShowArgs) -> anyhow::Result<()> {
    let filter = DeadLetterFilter { entry_ids: vec![args.id.clone()], ..DeadLetterFilter::default() };
    let dl = engine
        .admin
        .dead_letters(&filter)
        .await?
        .into_iter()
        .find(|d| d.entry_id == args.id)
        .ok_or_else(|| anyhow!("no dead letter with id '{}': list them with `courier dlq list`", args.id))?;
    let body = Body::of(&dl.message.body);
    if args.json {
        return output::json(&ShowView {
            entry_id: &dl.entry_id,
            queue: &dl.queue,
            dead_lettered_at: output::timestamp(dl.dead_lettered_at),
            headers: &dl.message.headers,
            body_bytes: dl.message.body.len(),
            body_encoding: body.encoding(),
            body: body.json_value(),
        });
    }
    output::emit(&render(&dl, &body))
}

#[derive(Debug, Serialize)]
struct ShowView<'a> {
    entry_id: &'a str,
    queue: &'a str,
    dead_lettered_at: String,
    headers: &'a courier::Headers,
    body_bytes: usize,
    /// `json`, `utf8`, `utf8-lossy` or `hex` (the first bytes only).
    body_encoding: &'static str,
    body: serde_json::Value,
}

/// A body made readable.
#[derive(Debug, PartialEq)]
enum Body {
    Json(serde_json::Value),
    Text(String),
    Lossy(String),
    Hex(String),
}

impl Body {
    fn of(bytes: &[u8]) -> Self {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
            return Body::Json(value);
        }
        if let Ok(text) = std::str::from_utf8(bytes) {
            return Body::Text(text.to_owned());
        }
        let lossy = String::from_utf8_lossy(bytes);
        let bad = lossy.chars().filter(|c| *c == char::REPLACEMENT_CHARACTER || (c.is_control() && !c.is_whitespace()));
        if bad.count() * 10 < lossy.chars().count() {
            return Body::Lossy(lossy.into_owned());
        }
        Body::Hex(hex_dump(&bytes[..bytes.len().min(HEX_PREVIEW)]))
    }

    fn encoding(&self) -> &'static str {
        match self {
            Body::Json(_) => "json",
            Body::Text(_) => "utf8",
            Body::Lossy(_) => "utf8-lossy",
            Body::Hex(_) => "hex",
        }
    }

    fn json_value(&self) -> serde_json::Value {
        match self {
            Body::Json(value) => value.clone(),
            Body::Text(s) | Body::Lossy(s) | Body::Hex(s) => serde_json::Value::String(s.clone()),
        }
    }
}

/// `offset  hex bytes  ascii`, 16 bytes a line.
fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String =
            chunk.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' }).collect();
        out.push_str(&format!("{:08x}  {:<47}  {ascii}\n", i * 16, hex.join(" ")));
    }
    out
}

fn render(dl: &DeadLetter, body: &Body) -> String {
    let mut text = format!(
        "Dead letter {} from queue '{}', dead-lettered {} ({} ago)\n\nHeaders:\n",
        dl.entry_id,
        dl.queue,
        output::timestamp(dl.dead_lettered_at),
        output::age(dl.dead_lettered_at, chrono::Utc::now())
    );
    let width = dl.message.headers.keys().map(|k| k.chars().count()).max().unwrap_or(0);
    for (name, value) in &dl.message.headers {
        text.push_str(&format!("  {name:<width$}  {}\n", value.replace('\n', "\n  ")));
    }
    let content_type = dl.message.header(attr::DATACONTENTTYPE).unwrap_or("no content type");
    text.push_str(&format!("\nBody ({} bytes, {content_type}", dl.message.body.len()));
    match body {
        Body::Json(value) => {
            text.push_str("):\n");
            text.push_str(&serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()));
        }
        Body::Text(s) => text.push_str(&format!(", not JSON):\n{s}")),
        Body::Lossy(s) => text.push_str(&format!(", not valid UTF-8; shown lossily):\n{s}")),
        Body::Hex(s) => {
            let shown = dl.message.body.len().min(HEX_PREVIEW);
            text.push_str(&format!(", binary; first {shown} bytes in hex):\n{}", s.trim_end()));
        }
    }
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_made_readable() {
        assert_eq!(Body::of(br#"{"a":1}"#), Body::Json(serde_json::json!({"a": 1})));
        assert_eq!(Body::of(b"{not json"), Body::Text("{not json".into()));
        assert!(matches!(Body::of(b"mostly text \xff here"), Body::Lossy(_)));
        let Body::Hex(dump) = Body::of(&[0xff, 0x00, 0x01, 0xfe, 0x41]) else { panic!("expected hex") };
        assert!(dump.starts_with("00000000  ff 00 01 fe 41") && dump.trim_end().ends_with("...A"), "{dump}");
        assert_eq!(Body::of(b""), Body::Text(String::new()));
    }

    #[test]
    fn renders_headers_and_body() {
        let mut dl = crate::dlq::tests::dead_letter("3", "email", "f", chrono::Utc::now());
        dl.message.body = br#"{"order_id":"x","total_cents":0}"#.to_vec().into();
        let text = render(&dl, &Body::of(&dl.message.body));
        assert!(text.contains("deadletterreason") && text.contains("\"total_cents\": 0"), "{text}");
    }
}
