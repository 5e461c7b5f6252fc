//! Settings of the NATS transport, from code or from a `nats://` URL.

use std::time::Duration;

use courier_core::{Error, Result};

/// Where JetStream keeps the namespace's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// On disk (default): a returned publish survives a server restart.
    #[default]
    File,
    /// In memory: faster, lost when the server stops. For tests and caches.
    Memory,
}

/// Settings of [`NatsTransport`](crate::NatsTransport).
///
/// Every setting can also be given as a query parameter of the engine URL (see [`NatsOptions::from_url`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsOptions {
    /// Prefix of every stream, subject, consumer and bucket this transport uses (`courier` by default). Services
    /// that exchange messages must use the same namespace; different namespaces on one server never see each
    /// other's queues. Letters, digits, `-` and `_` only.
    pub namespace: String,
    /// Stream and consumer storage.
    pub storage: Storage,
    /// Stream replicas in a clustered JetStream (1 on a single server).
    pub replicas: usize,
    /// The most messages of one queue delivered and not yet settled, across all its consumers (the JetStream
    /// consumer's `max_ack_pending`). Each subscription's own prefetch is enforced by the client.
    pub max_ack_pending: i64,
    /// How long to wait for the first connection.
    pub connect_timeout: Duration,
    /// How long to wait for a JetStream API answer or a publish acknowledgement.
    pub request_timeout: Duration,
    /// The connection name shown by the server's monitoring (`courier` by default).
    pub connection_name: String,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            namespace: "courier".to_owned(),
            storage: Storage::File,
            replicas: 1,
            max_ack_pending: 20_000,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            connection_name: "courier".to_owned(),
        }
    }
}

impl NatsOptions {
    /// These options with another namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Checks the settings; the error names the bad one.
    pub fn validate(&self) -> Result<()> {
        validate_namespace(&self.namespace)?;
        if self.replicas == 0 || self.replicas > 5 {
            return Err(Error::config(format!("NATS replicas must be 1 to 5, got {}", self.replicas)));
        }
        if self.max_ack_pending == 0 || self.max_ack_pending < -1 {
            return Err(Error::config(format!(
                "NATS max_ack_pending must be positive (or -1 for no limit), got {}",
                self.max_ack_pending
            )));
        }
        Ok(())
    }

    /// Splits an engine URL into the server list (as `async-nats` takes it) and the options.
    ///
    /// Form: `nats://[user:password@]host:port[,nats://host2:port...][?setting=value&...]` with settings
    /// `namespace`, `storage` (`file` or `memory`), `replicas`, `max_ack_pending`, `connect_timeout_ms`,
    /// `request_timeout_ms` and `name` (the connection name). Unknown settings are an error, so a typo is not
    /// silently ignored.
    pub fn from_url(url: &str) -> Result<(String, NatsOptions)> {
        let bad = |why: &str| {
            Error::config(format!(
                "invalid NATS engine URL '{url}': {why}; write it like 'nats://127.0.0.1:4222' or \
                 'nats://user:pass@host:4222?namespace=shop&storage=file'"
            ))
        };
        let (servers, query) = url.split_once('?').unwrap_or((url, ""));
        if servers.is_empty() {
            return Err(bad("no server is given"));
        }
        for server in servers.split(',') {
            let rest = server.strip_prefix("nats://").ok_or_else(|| bad("each server must start with nats://"))?;
            let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h).trim_end_matches('/');
            if host_port.is_empty() || host_port.contains(['/', ' ']) {
                return Err(bad(&format!("'{server}' does not name a host[:port]")));
            }
            if let Some((_, port)) = host_port.rsplit_once(':')
                && !host_port.ends_with(']')
                && port.parse::<u16>().is_err()
            {
                return Err(bad(&format!("'{port}' is not a port number")));
            }
        }
        let mut options = NatsOptions::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| bad(&format!("'{pair}' is not key=value")))?;
            let number =
                || value.parse::<u64>().map_err(|_| bad(&format!("'{key}' must be a whole number, got '{value}'")));
            match key {
                "namespace" => options.namespace = value.to_owned(),
                "storage" => {
                    options.storage = match value.to_ascii_lowercase().as_str() {
                        "file" => Storage::File,
                        "memory" => Storage::Memory,
                        _ => return Err(bad(&format!("storage must be 'file' or 'memory', got '{value}'"))),
                    }
                }
                "replicas" => options.replicas = number()? as usize,
                "max_ack_pending" => {
                    options.max_ack_pending = if value == "-1" { -1 } else { number()?.min(i64::MAX as u64) as i64 }
                }
                "connect_timeout_ms" => options.connect_timeout = Duration::from_millis(number()?.max(1)),
                "request_timeout_ms" => options.request_timeout = Duration::from_millis(number()?.max(1)),
                "name" => options.connection_name = value.to_owned(),
                other => {
                    return Err(bad(&format!(
                        "unknown setting '{other}' (known: namespace, storage, replicas, max_ack_pending, \
                         connect_timeout_ms, request_timeout_ms, name)"
                    )));
                }
            }
        }
        options.validate().map_err(|e| bad(&e.to_string()))?;
        Ok((servers.to_owned(), options))
    }
}

fn validate_namespace(namespace: &str) -> Result<()> {
    let ok = !namespace.is_empty()
        && namespace.len() <= 64
        && namespace.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "NATS namespace '{namespace}' must be 1 to 64 letters, digits, '-' or '_' (it prefixes stream and \
             subject names)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_servers_and_settings() {
        let (servers, o) = NatsOptions::from_url("nats://127.0.0.1:4222").unwrap();
        assert_eq!(servers, "nats://127.0.0.1:4222");
        assert_eq!(o, NatsOptions::default());
        let (servers, o) = NatsOptions::from_url(
            "nats://u:p@a:4222,nats://b:4223?namespace=shop_1&storage=memory&max_ack_pending=-1&request_timeout_ms=900",
        )
        .unwrap();
        assert_eq!(servers, "nats://u:p@a:4222,nats://b:4223");
        assert_eq!(o.namespace, "shop_1");
        assert_eq!(o.storage, Storage::Memory);
        assert_eq!(o.max_ack_pending, -1);
        assert_eq!(o.request_timeout, Duration::from_millis(900));
    }

    #[test]
    fn bad_urls_name_the_url() {
        for url in [
            "nats://",
            "nats://h:port",
            "http://h:4222",
            "nats://h:4222?namespace=a.b",
            "nats://h:4222?storage=tape",
            "nats://h:4222?colour=red",
            "nats://h:4222?replicas=x",
            "nats://h:4222?replicas=0",
        ] {
            let e = NatsOptions::from_url(url).unwrap_err();
            assert!(e.to_string().contains(url), "{e}");
            assert!(e.is_permanent(), "{e}");
        }
    }
}
