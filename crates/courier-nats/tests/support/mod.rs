//! What the NATS tests share: a namespace per test that is deleted when the test ends, and a TCP proxy that can
//! cut connections (the shared NATS server is never stopped or restarted: other engineers' tests use it too).

#![allow(dead_code, unreachable_pub)]

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use courier_core::Engine;
use courier_nats::{NatsOptions, NatsTransport};
use courier_testkit::services::NATS;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A namespace no other test or run uses.
pub fn unique_namespace(what: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("courier_test_{what}_{}", &id[..12])
}

/// Connects to the test server (`COURIER_TEST_NATS_URL` or `nats://127.0.0.1:4222`) in `namespace`.
pub async fn connect(namespace: &str) -> NatsTransport {
    connect_to(&NATS.url(), namespace).await
}

/// Connects to `url` in `namespace`.
pub async fn connect_to(url: &str, namespace: &str) -> NatsTransport {
    let (servers, options) = NatsOptions::from_url(url).expect("the test NATS URL");
    let transport =
        NatsTransport::connect(&servers, options.namespace(namespace)).await.expect("connect to the test NATS server");
    sweep_stale(&transport).await;
    transport
}

/// Once per test process: deletes test streams left by runs that died more than an hour ago (a run killed before
/// its guards ran). No test lasts that long, so a concurrent run's streams are never touched.
async fn sweep_stale(transport: &NatsTransport) {
    static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if SWEPT.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    use futures::StreamExt;
    let js = courier_nats::async_nats::jetstream::new(transport.client().clone());
    let mut streams = js.streams();
    let mut stale = Vec::new();
    while let Some(Ok(info)) = streams.next().await {
        let age = time_since(info.created.unix_timestamp());
        if info.config.name.starts_with("courier_test_") && age > 3600 {
            stale.push(info.config.name.clone());
        }
    }
    for name in stale {
        let _ = js.delete_stream(&name).await;
    }
}

fn time_since(unix_seconds: i64) -> i64 {
    chrono::Utc::now().timestamp() - unix_seconds
}

/// Deletes its namespace from the server when dropped (from any context: it uses a thread of its own).
#[derive(Debug)]
pub struct NamespaceGuard(pub String);

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        let namespace = self.0.clone();
        let done = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                let transport = connect(&namespace).await;
                if let Err(e) = transport.delete_namespace().await {
                    eprintln!("could not delete test namespace '{namespace}': {e}");
                }
            });
        })
        .join();
        if done.is_err() {
            eprintln!("deleting test namespace '{}' panicked", self.0);
        }
    }
}

thread_local! {
    static THIS_TEST: RefCell<Vec<NamespaceGuard>> = const { RefCell::new(Vec::new()) };
}

/// An engine in a fresh namespace that is deleted when the calling test's thread ends (each `#[test]` runs on a
/// thread of its own, and the conformance cases call their factory on it).
pub async fn engine() -> Engine {
    let namespace = unique_namespace("ct");
    let transport = connect(&namespace).await;
    THIS_TEST.with(|guards| guards.borrow_mut().push(NamespaceGuard(namespace)));
    transport.into_engine()
}

/// A TCP proxy in front of the NATS server whose connections can be cut, as a network failure would.
#[derive(Debug, Clone)]
pub struct CuttingProxy {
    /// `nats://127.0.0.1:<port>` of the proxy.
    pub url: String,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accepting: Arc<Mutex<Option<AbortHandle>>>,
}

impl CuttingProxy {
    /// Starts a proxy to the test server.
    pub async fn start() -> Self {
        let target = NATS.url();
        let rest = target.split_once("://").map_or(target.as_str(), |(_, r)| r);
        let target = rest.rsplit_once('@').map_or(rest, |(_, r)| r).split(['/', '?']).next().unwrap().to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let url = format!("nats://{}", listener.local_addr().expect("proxy address"));
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let tracked = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tracked.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { url, connections, accepting: Arc::new(Mutex::new(Some(accept.abort_handle()))) }
    }

    /// Closes every connection open now; new ones are accepted (the clients reconnect).
    pub fn cut(&self) -> usize {
        let cut: Vec<AbortHandle> = std::mem::take(&mut *self.connections.lock().unwrap());
        for c in &cut {
            c.abort();
        }
        cut.len()
    }

    /// Closes every connection and accepts no more.
    pub fn kill(&self) {
        if let Some(accept) = self.accepting.lock().unwrap().take() {
            accept.abort();
        }
        self.cut();
    }
}
