//! Writing results: aligned text tables, JSON, ages and truncated text. Everything goes through [`emit`], which
//! treats a closed pipe (`courier dlq list | head`) as success instead of panicking like `println!`.

use std::fmt::Write as _;
use std::io::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Writes `text` to stdout. A reader that went away (broken pipe) is not an error.
pub(crate) fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow::anyhow!("cannot write to stdout: {e}")),
        _ => Ok(()),
    }
}

/// Writes `text` and a newline to stdout.
pub(crate) fn line(text: impl AsRef<str>) -> anyhow::Result<()> {
    emit(&format!("{}\n", text.as_ref()))
}

/// Writes `value` as pretty JSON to stdout.
pub(crate) fn json(value: &impl Serialize) -> anyhow::Result<()> {
    line(serde_json::to_string_pretty(value)?)
}

/// How a column is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A text table with a header row; columns are as wide as their widest cell.
#[derive(Debug)]
pub(crate) struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub(crate) fn new(columns: &[(&'static str, Align)]) -> Self {
        Self { columns: columns.to_vec(), rows: Vec::new() }
    }

    /// Adds a row (missing cells are blank, extra cells ignored).
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, without trailing spaces.
    pub(crate) fn render(&self) -> String {
        let cell = |row: &[String], i: usize| row.get(i).map(String::as_str).unwrap_or("").to_owned();
        let mut widths: Vec<usize> = self.columns.iter().map(|(h, _)| h.chars().count()).collect();
        for row in &self.rows {
            for (i, w) in widths.iter_mut().enumerate() {
                *w = (*w).max(cell(row, i).chars().count());
            }
        }
        let header: Vec<String> = self.columns.iter().map(|(h, _)| (*h).to_owned()).collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut text = String::new();
            for (i, ((_, align), width)) in self.columns.iter().zip(&widths).enumerate() {
                let value = cell(row, i);
                let sep = if i == 0 { "" } else { "  " };
                let _ = match align {
                    Align::Left => write!(text, "{sep}{value:<width$}"),
                    Align::Right => write!(text, "{sep}{value:>width$}"),
                };
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// At most `max` characters of `text` on one line (newlines become spaces), ending in `…` when cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    let flat: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// How long ago `at` was, in the largest sensible unit: `42s`, `5m`, `3h`, `2d`.
pub(crate) fn age(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - at).num_seconds().max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// A time as RFC 3339 in UTC with milliseconds, the form JSON output uses.
pub(crate) fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A progress bar on stderr for `len` steps, drawn only when `show` and stderr is a terminal.
pub(crate) fn progress(len: u64, unit: &str, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let template = format!("{{bar:40.cyan/blue}} {{pos}}/{{len}} {unit} ({{rate}}, {{elapsed}} elapsed, eta {{eta}})");
    let style = indicatif::ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .with_key("rate", |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0}/s", state.per_sec());
        })
        .progress_chars("=> ");
    indicatif::ProgressBar::new(len).with_style(style)
}

/// `-` for an empty value, so table cells are never blank.
pub(crate) fn or_dash(text: &str) -> String {
    if text.is_empty() { "-".to_owned() } else { text.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&[("QUEUE", Align::Left), ("READY", Align::Right)]);
        t.row(vec!["shipping".into(), "7".into()]);
        t.row(vec!["email".into(), "1200".into()]);
        assert_eq!(t.render(), "QUEUE     READY\nshipping      7\nemail      1200\n");
    }

    #[test]
    fn truncation_is_char_safe_and_single_line() {
        assert_eq!(truncate("héllo\nwörld", 20), "héllo wörld");
        assert_eq!(truncate("ééééé", 3), "éé…");
        assert_eq!(truncate("", 0), "");
    }

    #[test]
    fn ages_pick_a_unit() {
        let now = Utc::now();
        assert_eq!(age(now - chrono::Duration::seconds(5), now), "5s");
        assert_eq!(age(now - chrono::Duration::minutes(5), now), "5m");
        assert_eq!(age(now - chrono::Duration::hours(50), now), "2d");
        assert_eq!(age(now + chrono::Duration::seconds(5), now), "0s");
    }
}
