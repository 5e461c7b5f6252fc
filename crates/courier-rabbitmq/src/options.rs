//! Settings of the RabbitMQ transport, from code or from an `amqp://` URL.

use std::time::Duration;

use courier_core::{Error, Result};

/// Settings of [`RabbitMqTransport`](crate::RabbitMqTransport).
///
/// From a URL, Courier's settings are query parameters next to lapin's own (`heartbeat`, `connection_timeout`,
/// `frame_max`, `channel_max`, `auth_mechanism`), which are passed through:
///
/// `amqp://user:pass@host:5672/%2f?namespace=shop&publish_channels=4&reconnect_timeout_ms=60000&connection_name=orders`
#[derive(Debug, Clone)]
pub struct RabbitMqOptions {
    /// The broker URL without Courier's settings (`amqp://` or `amqps://`, with credentials and vhost).
    pub url: String,
    /// Prefix of every exchange and queue this transport creates (`<namespace>.<queue>`); default `courier`.
    /// Services that talk to each other use the same namespace; tests use a unique one.
    pub namespace: String,
    /// The name shown for this connection by `rabbitmqctl list_connections` and the management UI.
    pub connection_name: String,
    /// Channels (with publisher confirms) that publishes are spread over.
    pub publish_channels: usize,
    /// How long an operation keeps trying to reconnect after the connection drops before it fails.
    pub reconnect_timeout: Duration,
    /// The first wait between reconnection attempts; doubled after each failure up to `max_backoff`.
    pub min_backoff: Duration,
    /// The longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

impl RabbitMqOptions {
    /// Settings for the broker at `url` (`amqp://guest:guest@127.0.0.1:5672/%2f`), with defaults for the rest.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            namespace: "courier".to_owned(),
            connection_name: format!("courier-{}", std::process::id()),
            publish_channels: 2,
            reconnect_timeout: Duration::from_secs(60),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }

    /// Sets the namespace (see [`namespace`](Self::namespace)).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets the connection name (see [`connection_name`](Self::connection_name)).
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// Parses an engine URL: `amqp[s]://[user[:pass]@]host[:port][/vhost][?key=value&...]`.
    ///
    /// Courier's keys: `namespace`, `connection_name`, `publish_channels`, `reconnect_timeout_ms`. Other keys go to
    /// lapin. A malformed URL is an [`ErrorKind::Config`](courier_core::ErrorKind::Config) error naming it (with any
    /// password masked).
    pub fn from_url(url: &str) -> Result<Self> {
        let shown = redact(url);
        let bad = |why: &str| {
            Error::config(format!(
                "invalid RabbitMQ engine URL '{shown}': {why}; write it like \
                 'amqp://guest:guest@127.0.0.1:5672/%2f?namespace=courier'"
            ))
        };
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(bad("it must start with amqp:// or amqps://"));
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut options = Self::new(base);
        let mut passed = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| bad(&format!("'{pair}' is not key=value")))?;
            let number =
                || value.parse::<u64>().map_err(|_| bad(&format!("'{key}' must be a whole number, got '{value}'")));
            match key {
                "namespace" => {
                    if !valid_namespace(value) {
                        return Err(bad(&format!(
                            "namespace '{value}' must be 1-64 characters of letters, digits, '-', '_' or '.'"
                        )));
                    }
                    options.namespace = value.to_owned();
                }
                "connection_name" => options.connection_name = value.to_owned(),
                "publish_channels" => options.publish_channels = number()?.clamp(1, 64) as usize,
                "reconnect_timeout_ms" => options.reconnect_timeout = Duration::from_millis(number()?),
                _ => passed.push(pair),
            }
        }
        if !passed.is_empty() {
            options.url = format!("{base}?{}", passed.join("&"));
        }
        options.url.parse::<lapin::uri::AMQPUri>().map_err(|e| bad(&e))?;
        Ok(options)
    }

    /// The URL with any password replaced by `***`, for messages.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }
}

fn valid_namespace(ns: &str) -> bool {
    (1..=64).contains(&ns.len()) && ns.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `amqp://user:secret@host` -> `amqp://user:***@host`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_courier_settings_and_passes_the_rest() {
        let o = RabbitMqOptions::from_url(
            "amqp://guest:guest@127.0.0.1:5672/%2f?namespace=t-1&heartbeat=10&publish_channels=3&connection_name=x",
        )
        .unwrap();
        assert_eq!(o.namespace, "t-1");
        assert_eq!(o.publish_channels, 3);
        assert_eq!(o.connection_name, "x");
        assert_eq!(o.url, "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10");
        assert_eq!(o.redacted_url(), "amqp://guest:***@127.0.0.1:5672/%2f?heartbeat=10");
        let o = RabbitMqOptions::from_url("amqp://127.0.0.1").unwrap();
        assert_eq!(o.namespace, "courier");
    }

    #[test]
    fn bad_urls_are_config_errors_naming_the_url() {
        for url in [
            "amqp://u:pw@host:notaport/",
            "amqp://h/?namespace=a b",
            "amqp://h/?publish_channels=many",
            "amqp://h/?namespace",
            "rabbit://h",
        ] {
            let e = RabbitMqOptions::from_url(url).unwrap_err();
            assert!(e.is_permanent(), "{e}");
            assert!(e.to_string().contains(&redact(url)), "{e}");
            assert!(!e.to_string().contains("pw@"), "the password must not be shown: {e}");
        }
    }
}
