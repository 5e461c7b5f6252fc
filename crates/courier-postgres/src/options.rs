//! Settings of the PostgreSQL transport, from code or from a `postgres://` URL.

use std::str::FromStr;
use std::time::Duration;

use courier_core::{Error, Result};
use sqlx::postgres::PgConnectOptions;

/// Settings of [`PostgresTransport`](crate::PostgresTransport).
///
/// Every field can also be set as a query parameter of the engine URL (see the [crate docs](crate)).
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The database schema that holds Courier's tables (created if missing). Default `courier`. Letters, digits and
    /// `_`, starting with a letter or `_`, at most 50 characters; upper case is folded to lower case.
    pub schema: String,
    /// The most connections this transport opens (publish batches, takes, settling, and one for LISTEN). Default 10.
    pub max_connections: u32,
    /// How often an idle consumer looks for messages while the LISTEN connection is down. Default 250 ms.
    pub poll_interval: Duration,
    /// How often an idle consumer looks for messages while LISTEN is up, as a safety net. Default 5 s.
    pub recheck_interval: Duration,
    /// The most publishes or sends written in one statement (group commit). Default 512.
    pub max_batch: usize,
    /// How many publish batches may be written at once. Default 4.
    pub writers: usize,
    /// The least time between two statements that notify other processes of published messages. Default 5 ms.
    ///
    /// Consumers in the publishing process are woken at once, whatever this says. Other processes' idle consumers
    /// are woken by a `NOTIFY`: the first publish after a quiet spell notifies at once, and publishes within this
    /// interval of a notification are announced together at its end. Under load that is one notifying commit per
    /// interval instead of one per publish batch (the bench measured 2.4 notifying commits per 100 messages
    /// without it, about as many as the publishes themselves); an idle consumer elsewhere waits at most this much
    /// longer. Zero notifies after every batch that commits while no notification is being sent.
    pub notify_interval: Duration,
    /// The `application_name` of every connection, as `pg_stat_activity` shows it. Default `courier`.
    pub application_name: String,
    /// How long to wait for a connection from the pool before failing. Default 10 s.
    pub acquire_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            schema: "courier".to_owned(),
            max_connections: 10,
            poll_interval: Duration::from_millis(250),
            recheck_interval: Duration::from_secs(5),
            max_batch: 512,
            writers: 4,
            notify_interval: Duration::from_millis(5),
            application_name: "courier".to_owned(),
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

impl PostgresOptions {
    /// Sets the schema (see [`schema`](Self::schema)).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets the `application_name` of the transport's connections.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// Sets the most connections the transport opens.
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    /// Checks the settings; returns the schema name as stored (lower case).
    pub(crate) fn validate(&self) -> Result<String> {
        let schema = self.schema.to_ascii_lowercase();
        let mut chars = schema.chars();
        let starts_well = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        if !starts_well || schema.len() > 50 || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(Error::config(format!(
                "invalid PostgreSQL schema name '{}': use letters, digits and '_' (starting with a letter or '_'), \
                 at most 50 characters, e.g. 'courier'",
                self.schema
            )));
        }
        if schema.starts_with("pg_") {
            return Err(Error::config(format!(
                "invalid PostgreSQL schema name '{}': the prefix 'pg_' is reserved by PostgreSQL; choose another, \
                 e.g. 'courier'",
                self.schema
            )));
        }
        if self.notify_interval > Duration::from_secs(60) {
            return Err(Error::config(format!(
                "notify_interval must be at most 60 s (other processes' idle consumers wait up to that long), got \
                 {:?}",
                self.notify_interval
            )));
        }
        if self.max_connections < 2 {
            return Err(Error::config(format!(
                "max_connections must be at least 2 (one is kept for LISTEN), got {}",
                self.max_connections
            )));
        }
        Ok(schema)
    }
}

/// Splits a `postgres://` URL into the connection settings sqlx understands and Courier's own settings
/// (`schema`, `max_connections`, `poll_ms`, `recheck_ms`, `max_batch`, `writers`, `notify_ms`, `acquire_timeout_ms`;
/// `application_name` goes to both), applied over `options`.
pub(crate) fn parse_url(url: &str, mut options: PostgresOptions) -> Result<(PgConnectOptions, PostgresOptions)> {
    let bad = |why: &str| {
        Error::config(format!(
            "invalid PostgreSQL engine URL '{}': {why}; write it like \
             'postgres://user:password@host:5432/database?schema=courier'",
            redact(url)
        ))
    };
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| bad("it must start with postgres:// or postgresql://"))?;
    let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
    if authority.trim().is_empty() {
        return Err(bad("the host is missing"));
    }
    let mut passed = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| bad(&format!("'{pair}' is not key=value")))?;
        let number =
            || value.parse::<u64>().map_err(|_| bad(&format!("'{key}' must be a whole number, got '{value}'")));
        match key {
            "schema" => options.schema = value.to_owned(),
            "max_connections" => options.max_connections = number()?.min(10_000) as u32,
            "poll_ms" => options.poll_interval = Duration::from_millis(number()?.max(1)),
            "recheck_ms" => options.recheck_interval = Duration::from_millis(number()?.max(1)),
            "max_batch" => options.max_batch = number()?.clamp(1, 10_000) as usize,
            "writers" => options.writers = number()?.clamp(1, 64) as usize,
            "notify_ms" => options.notify_interval = Duration::from_millis(number()?.min(60_000)),
            "acquire_timeout_ms" => options.acquire_timeout = Duration::from_millis(number()?.max(1)),
            "application_name" => {
                options.application_name = value.to_owned();
                passed.push(pair);
            }
            _ => passed.push(pair),
        }
    }
    options.validate().map_err(|e| bad(&e.to_string()))?;
    let sqlx_url = if passed.is_empty() {
        format!("postgres://{authority}")
    } else {
        format!("postgres://{authority}?{}", passed.join("&"))
    };
    let connect = PgConnectOptions::from_str(&sqlx_url).map_err(|e| bad(&e.to_string()))?;
    Ok((connect, options))
}

/// The URL with its password hidden, for error messages and logs.
///
/// ```
/// assert_eq!(courier_postgres::redact("postgres://app:secret@db/shop"), "postgres://app:***@db/shop");
/// ```
pub fn redact(url: &str) -> String {
    // postgres://user:password@host/... -> postgres://user:***@host/...
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    match rest.split_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{name}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_courier_settings_and_passes_the_rest() {
        let (c, o) = parse_url(
            "postgres://u:p@db.example:6543/app?schema=Shop_1&poll_ms=20&notify_ms=0&sslmode=disable",
            PostgresOptions::default(),
        )
        .unwrap();
        assert_eq!(o.schema, "Shop_1");
        assert_eq!(o.validate().unwrap(), "shop_1");
        assert_eq!(o.poll_interval, Duration::from_millis(20));
        assert_eq!(o.notify_interval, Duration::ZERO);
        assert_eq!(c.get_host(), "db.example");
        assert_eq!(c.get_port(), 6543);
        assert_eq!(c.get_database(), Some("app"));
        let (_, o) = parse_url("postgresql://localhost/test", PostgresOptions::default()).unwrap();
        assert_eq!(o.schema, "courier");
        assert_eq!(o.notify_interval, Duration::from_millis(5));
    }

    #[test]
    fn a_notify_interval_over_a_minute_is_refused() {
        let options = PostgresOptions { notify_interval: Duration::from_secs(61), ..PostgresOptions::default() };
        let e = options.validate().unwrap_err();
        assert!(e.to_string().contains("notify_interval"), "{e}");
        let (_, o) = parse_url("postgres://localhost/x?notify_ms=999999", PostgresOptions::default()).unwrap();
        assert_eq!(o.notify_interval, Duration::from_secs(60));
    }

    #[test]
    fn bad_urls_name_the_url() {
        for url in [
            "postgres://",
            "mysql://localhost/x",
            "postgres://localhost/x?schema=1abc",
            "postgres://localhost/x?schema=a;drop",
            "postgres://localhost/x?schema=pg_catalog2",
            "postgres://localhost/x?poll_ms=soon",
            "postgres://localhost/x?writers",
            "postgres://localhost/x?max_connections=1",
        ] {
            let e = parse_url(url, PostgresOptions::default()).unwrap_err();
            assert!(e.to_string().contains(url), "{e}");
            assert!(e.is_permanent());
        }
    }
}
