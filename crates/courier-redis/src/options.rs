//! Settings of the Redis transport, from code or from a `redis://` URL.

use std::time::Duration;

use courier_core::{Error, Result};

/// Settings of [`RedisTransport`](crate::RedisTransport).
///
/// From a URL: `redis://[user:password@]host:port[/db][?prefix=..&pump_ms=..&block_ms=..&timeout_ms=..]`.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// The namespace of every key this transport writes (`<prefix>:q:<queue>`, ...). Default `courier`.
    /// Transports with different prefixes on one server do not see each other's queues.
    pub prefix: String,
    /// How often the delayed-message pump looks for due messages scheduled by other processes (messages this
    /// process schedules wake it at once). Default 100 ms.
    pub pump_interval: Duration,
    /// The longest a consumer's blocking read (`XREADGROUP BLOCK`) waits before it looks for messages abandoned
    /// by dead consumers. Default 1 s.
    pub block: Duration,
    /// How long a command may wait for Redis's answer before it fails with a timeout. Default 10 s.
    pub response_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            prefix: "courier".to_owned(),
            pump_interval: Duration::from_millis(100),
            block: Duration::from_secs(1),
            response_timeout: Duration::from_secs(10),
        }
    }
}

impl RedisOptions {
    /// These options with another key prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

/// Hides the password of a URL, for error messages.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') { format!("{user}:***") } else { "***".to_owned() };
            format!("{scheme}://{hidden}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

/// Splits a `redis://` URL into the URL the Redis client gets (without Courier's settings) and the options.
pub(crate) fn parse_url(url: &str) -> Result<(String, RedisOptions)> {
    let shown = redact(url);
    let bad = |why: &str| {
        Error::config(format!(
            "invalid Redis engine URL '{shown}': {why}; write it like 'redis://127.0.0.1:6379' or \
             'redis://:password@host:6379/0?prefix=myapp'"
        ))
    };
    let rest = url.strip_prefix("redis://").ok_or_else(|| bad("it must start with redis://"))?;
    let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
    let host = base.rsplit_once('@').map_or(base, |(_, h)| h);
    if host.split('/').next().unwrap_or("").trim().is_empty() {
        return Err(bad("the host is empty"));
    }
    let mut options = RedisOptions::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| bad(&format!("'{pair}' is not key=value")))?;
        let millis = || {
            value
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| bad(&format!("'{key}' must be a whole number of milliseconds, got '{value}'")))
        };
        match key {
            "prefix" => {
                if value.is_empty() || value.contains(['*', '?', '[', ']', ' ']) {
                    return Err(bad(&format!("prefix must be non-empty without spaces or * ? [ ], got '{value}'")));
                }
                options.prefix = value.to_owned();
            }
            "pump_ms" => options.pump_interval = millis()?.max(Duration::from_millis(1)),
            "block_ms" => options.block = millis()?.clamp(Duration::from_millis(10), Duration::from_secs(60)),
            "timeout_ms" => options.response_timeout = millis()?.max(Duration::from_millis(10)),
            other => {
                return Err(bad(&format!("unknown setting '{other}' (known: prefix, pump_ms, block_ms, timeout_ms)")));
            }
        }
    }
    let client_url = format!("redis://{base}");
    redis::parse_redis_url(&client_url).ok_or_else(|| bad("the Redis client cannot parse it"))?;
    Ok((client_url, options))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_settings() {
        let (u, o) = parse_url("redis://127.0.0.1:6379").unwrap();
        assert_eq!(u, "redis://127.0.0.1:6379");
        assert_eq!(o.prefix, "courier");
        let (u, o) = parse_url("redis://:pw@localhost:6380/2?prefix=t1&pump_ms=5&block_ms=200").unwrap();
        assert_eq!(u, "redis://:pw@localhost:6380/2");
        assert_eq!(o.prefix, "t1");
        assert_eq!(o.pump_interval, Duration::from_millis(5));
        assert_eq!(o.block, Duration::from_millis(200));
    }

    #[test]
    fn bad_urls_name_the_url_without_its_password() {
        for url in ["redis://", "redis://h?prefix=", "redis://h?color=red", "redis://h?pump_ms=x", "nats://h"] {
            let e = parse_url(url).unwrap_err();
            assert!(e.to_string().contains(url), "{e}");
            assert!(e.is_permanent());
        }
        let e = parse_url("redis://u:secret@h?x=1").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(e.to_string().contains("redis://u:***@h?x=1"), "{e}");
    }
}
