//! The real servers engine tests run against, and what to do when one is not running.
//!
//! On a developer's machine a test whose server is unreachable is skipped with one line saying how to start it.
//! In CI (`CI=true`) it fails: a green CI run must have tested every engine.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A server an engine test needs.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// Human name, e.g. `NATS JetStream`.
    pub name: &'static str,
    /// Environment variable that overrides the URL.
    pub url_env: &'static str,
    /// Default URL on this machine.
    pub default_url: &'static str,
    /// `host:port` probed for reachability when the URL is the default.
    pub default_addr: &'static str,
    /// The command that starts it.
    pub start: &'static str,
}

/// PostgreSQL on 127.0.0.1:5432, database `test`, trust auth.
pub const POSTGRES: Service = Service {
    name: "PostgreSQL",
    url_env: "COURIER_TEST_POSTGRES_URL",
    default_url: "postgres://postgres@127.0.0.1:5432/test",
    default_addr: "127.0.0.1:5432",
    start: "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
};

/// Redis on 127.0.0.1:6379.
pub const REDIS: Service = Service {
    name: "Redis",
    url_env: "COURIER_TEST_REDIS_URL",
    default_url: "redis://127.0.0.1:6379",
    default_addr: "127.0.0.1:6379",
    start: "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no",
};

/// RabbitMQ on 127.0.0.1:5672, guest/guest.
pub const RABBITMQ: Service = Service {
    name: "RabbitMQ",
    url_env: "COURIER_TEST_AMQP_URL",
    default_url: "amqp://guest:guest@127.0.0.1:5672/%2f",
    default_addr: "127.0.0.1:5672",
    start: "rabbitmq-server -detached",
};

/// NATS with JetStream on 127.0.0.1:4222.
pub const NATS: Service = Service {
    name: "NATS JetStream",
    url_env: "COURIER_TEST_NATS_URL",
    default_url: "nats://127.0.0.1:4222",
    default_addr: "127.0.0.1:4222",
    start: "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js \
            -sd /var/lib/nats-server -l /var/log/nats-server.log",
};

impl Service {
    /// The URL tests use: the environment variable if set, else the default.
    pub fn url(&self) -> String {
        std::env::var(self.url_env).unwrap_or_else(|_| self.default_url.to_owned())
    }

    fn addr(&self) -> String {
        let url = self.url();
        // scheme://[user[:pass]@]host:port[/...]
        let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        let host_port = rest.split(['/', '?']).next().unwrap_or(self.default_addr);
        if host_port.is_empty() { self.default_addr.to_owned() } else { host_port.to_owned() }
    }

    /// Whether the server answers on its port.
    pub fn reachable(&self) -> bool {
        let Ok(addrs) = self.addr().to_socket_addrs() else { return false };
        addrs.into_iter().any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
    }

    /// `true` if the test should run. If the server is unreachable: in CI (`CI=true`) panics, naming the server and
    /// how to start it; elsewhere prints one line saying so and returns `false` (the test is skipped).
    pub fn require(&self) -> bool {
        if self.reachable() {
            return true;
        }
        let line = format!(
            "{} is not reachable at {} (set {} to change it); start it with: {}",
            self.name,
            self.url(),
            self.url_env,
            self.start
        );
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("CI=true and {line}");
        }
        eprintln!("skipped: {line}");
        false
    }
}
