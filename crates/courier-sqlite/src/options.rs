//! Settings of the embedded transport, from code or from a `sqlite://` URL.

use std::path::PathBuf;
use std::time::Duration;

use courier_core::{Error, Result};

/// How durable a commit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// `synchronous=FULL` (default): a returned publish survives power loss as well as a crash.
    #[default]
    Full,
    /// `synchronous=NORMAL`: survives a process crash (`kill -9`); the last commits may be lost on power loss.
    Normal,
}

/// Settings of [`SqliteTransport`](crate::SqliteTransport).
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Durability of commits.
    pub synchronous: Synchronous,
    /// How often an idle consumer looks for messages written by other processes (in-process writes wake it at once).
    pub poll_interval: Duration,
    /// The most operations grouped into one transaction (group commit).
    pub max_batch: usize,
    /// How long to wait for another process's write lock before failing.
    pub busy_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            poll_interval: Duration::from_millis(50),
            max_batch: 1024,
            busy_timeout: Duration::from_secs(10),
        }
    }
}

/// Parses `sqlite://<path>[?synchronous=full|normal&poll_ms=N&max_batch=N&busy_timeout_ms=N]`.
///
/// `sqlite://./data/courier.db` is relative to the working directory, `sqlite:///var/lib/app/courier.db` absolute.
pub(crate) fn parse_url(url: &str) -> Result<(PathBuf, SqliteOptions)> {
    let bad = |why: &str| {
        Error::config(format!(
            "invalid SQLite engine URL '{url}': {why}; write it like 'sqlite://./data/courier.db' or \
             'sqlite:///abs/path/courier.db?synchronous=normal'"
        ))
    };
    let rest = url.strip_prefix("sqlite://").ok_or_else(|| bad("it must start with sqlite://"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.trim().is_empty() {
        return Err(bad("the file path is empty"));
    }
    let mut options = SqliteOptions::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| bad(&format!("'{pair}' is not key=value")))?;
        let number =
            || value.parse::<u64>().map_err(|_| bad(&format!("'{key}' must be a whole number, got '{value}'")));
        match key {
            "synchronous" => {
                options.synchronous = match value.to_ascii_lowercase().as_str() {
                    "full" => Synchronous::Full,
                    "normal" => Synchronous::Normal,
                    _ => {
                        return Err(bad(&format!("synchronous must be 'full' or 'normal', got '{value}'")));
                    }
                }
            }
            "poll_ms" => options.poll_interval = Duration::from_millis(number()?.max(1)),
            "max_batch" => options.max_batch = number()?.clamp(1, 100_000) as usize,
            "busy_timeout_ms" => options.busy_timeout = Duration::from_millis(number()?),
            other => {
                return Err(bad(&format!(
                    "unknown setting '{other}' (known: synchronous, poll_ms, max_batch, busy_timeout_ms)"
                )));
            }
        }
    }
    Ok((PathBuf::from(path), options))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_settings() {
        let (p, o) = parse_url("sqlite://./data/c.db").unwrap();
        assert_eq!(p, PathBuf::from("./data/c.db"));
        assert_eq!(o.synchronous, Synchronous::Full);
        let (p, o) = parse_url("sqlite:///tmp/x.db?synchronous=normal&poll_ms=5").unwrap();
        assert_eq!(p, PathBuf::from("/tmp/x.db"));
        assert_eq!(o.synchronous, Synchronous::Normal);
        assert_eq!(o.poll_interval, Duration::from_millis(5));
    }

    #[test]
    fn bad_urls_name_the_url() {
        for url in
            ["sqlite://", "sqlite://x.db?synchronous=maybe", "sqlite://x.db?color=red", "sqlite://x.db?poll_ms=a"]
        {
            let e = parse_url(url).unwrap_err();
            assert!(e.to_string().contains(url), "{e}");
            assert!(e.is_permanent());
        }
    }
}
