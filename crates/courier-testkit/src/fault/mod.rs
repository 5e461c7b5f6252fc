//! A fault-injecting HTTP/1.1 server for resilience tests (feature `fault-server`).
//!
//! [`FaultServer::start`] listens on `127.0.0.1:0` and answers every request as its [`FaultPlan`] says: added
//! latency (fixed or a random range), an error rate (5xx), hangs (no answer ever), connection resets (the socket
//! closed without a response) and `503` with `Retry-After`. The plan can be changed while the server runs
//! ([`FaultServer::set_plan`]), and the server counts what it received ([`FaultServer::requests`]), so a test can
//! assert that a circuit breaker failed fast without touching it.
//!
//! A healthy answer is `200 OK` with an `x-served-by: <name>` header and, as its body, the request's body (with
//! its content type) or, for an empty request, `{"server":"<name>","path":"<path>"}`.
//!
//! ```
//! use std::time::Duration;
//! use courier_testkit::fault::{FaultPlan, FaultServer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
//! let server = FaultServer::start(FaultPlan::healthy()).await?;
//! assert!(server.url().starts_with("http://127.0.0.1:"));
//! server.set_plan(FaultPlan::healthy().error_rate(1.0).latency(Duration::from_millis(5)));
//! assert_eq!(server.requests(), 0);
//! # Ok(()) }
//! ```
//!
//! Dropping the server stops it: the listener and every open connection (hanging ones included) are closed.

mod plan;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use plan::Fault;
pub use plan::{FaultPlan, Latency};

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    unavailable: AtomicU64,
    hangs: AtomicU64,
    resets: AtomicU64,
    in_flight: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    name: String,
    plan: Mutex<FaultPlan>,
    counters: Counters,
    last_headers: Mutex<Option<HeaderMap>>,
}

/// A running fault-injecting server; see the [module docs](self). Stops when dropped.
#[derive(Debug)]
pub struct FaultServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

/// A snapshot of what a [`FaultServer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultCounts {
    /// Requests received (every one, whatever its fate).
    pub requests: u64,
    /// Answered `200 OK`.
    pub ok: u64,
    /// Answered with the injected error status.
    pub errors: u64,
    /// Answered `503` with `Retry-After`.
    pub unavailable: u64,
    /// Left without an answer.
    pub hangs: u64,
    /// Connections closed without an answer.
    pub resets: u64,
    /// Requests being handled now (waiting out latency or hanging).
    pub in_flight: u64,
}

impl FaultServer {
    /// Starts a server named `"fault"` on `127.0.0.1:0`.
    pub async fn start(plan: FaultPlan) -> std::io::Result<Self> {
        Self::start_named("fault", plan).await
    }

    /// Starts a server on `127.0.0.1:0` whose healthy answers carry `x-served-by: <name>`.
    pub async fn start_named(name: impl Into<String>, plan: FaultPlan) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: name.into(),
            plan: Mutex::new(plan),
            counters: Counters::default(),
            last_headers: Mutex::new(None),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Self { addr, shared, task })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's name (its `x-served-by` header).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Replaces the plan; requests arriving from now on follow it.
    pub fn set_plan(&self, plan: FaultPlan) {
        *lock(&self.shared.plan) = plan;
    }

    /// The current plan.
    pub fn plan(&self) -> FaultPlan {
        lock(&self.shared.plan).clone()
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.shared.counters.requests.load(Ordering::SeqCst)
    }

    /// Everything counted so far.
    pub fn counts(&self) -> FaultCounts {
        let c = &self.shared.counters;
        FaultCounts {
            requests: c.requests.load(Ordering::SeqCst),
            ok: c.ok.load(Ordering::SeqCst),
            errors: c.errors.load(Ordering::SeqCst),
            unavailable: c.unavailable.load(Ordering::SeqCst),
            hangs: c.hangs.load(Ordering::SeqCst),
            resets: c.resets.load(Ordering::SeqCst),
            in_flight: c.in_flight.load(Ordering::SeqCst),
        }
    }

    /// Sets every counter back to zero (requests in flight stay counted as in flight).
    pub fn reset_counts(&self) {
        let c = &self.shared.counters;
        for counter in [&c.requests, &c.ok, &c.errors, &c.unavailable, &c.hangs, &c.resets] {
            counter.store(0, Ordering::SeqCst);
        }
    }

    /// The headers of the last request received, if any.
    pub fn last_headers(&self) -> Option<HeaderMap> {
        lock(&self.shared.last_headers).clone()
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet): aborting it closes every connection too.
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(req, shared.clone()));
                    // An injected reset makes the service fail: hyper then closes the connection unanswered.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The error that makes hyper drop a connection without answering.
#[derive(Debug)]
struct InjectedReset;

impl std::fmt::Display for InjectedReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected connection reset")
    }
}

impl std::error::Error for InjectedReset {}

struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Full<Bytes>>, InjectedReset> {
    let c = &shared.counters;
    c.requests.fetch_add(1, Ordering::SeqCst);
    c.in_flight.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight(&c.in_flight);
    *lock(&shared.last_headers) = Some(req.headers().clone());
    let fault = lock(&shared.plan).decide();
    let path = req.uri().path().to_owned();
    let content_type = req.headers().get(CONTENT_TYPE).cloned();
    let body = match fault {
        Fault::Reset | Fault::Hang => Bytes::new(),
        _ => req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default(),
    };
    let response = |status: StatusCode, body: Bytes, content_type: Option<HeaderValue>| {
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, content_type.unwrap_or(HeaderValue::from_static("application/json")));
        if let Ok(v) = HeaderValue::from_str(&shared.name) {
            h.insert("x-served-by", v);
        }
        resp
    };
    match fault {
        Fault::Reset => {
            c.resets.fetch_add(1, Ordering::SeqCst);
            Err(InjectedReset)
        }
        Fault::Hang => {
            c.hangs.fetch_add(1, Ordering::SeqCst);
            match std::future::pending::<Infallible>().await {}
        }
        Fault::Unavailable(latency, retry_after) => {
            tokio::time::sleep(latency).await;
            c.unavailable.fetch_add(1, Ordering::SeqCst);
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            let mut resp = response(StatusCode::SERVICE_UNAVAILABLE, problem(503, "injected unavailability"), None);
            resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
            resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
            Ok(resp)
        }
        Fault::Error(latency, status) => {
            tokio::time::sleep(latency).await;
            c.errors.fetch_add(1, Ordering::SeqCst);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = response(status, problem(status.as_u16(), "injected error"), None);
            resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
            Ok(resp)
        }
        Fault::Ok(latency) => {
            tokio::time::sleep(latency).await;
            c.ok.fetch_add(1, Ordering::SeqCst);
            if body.is_empty() {
                let body = format!(r#"{{"server":{:?},"path":{:?}}}"#, shared.name, path);
                Ok(response(StatusCode::OK, Bytes::from(body), None))
            } else {
                Ok(response(StatusCode::OK, body, content_type))
            }
        }
    }
}

fn problem(status: u16, detail: &str) -> Bytes {
    Bytes::from(format!(r#"{{"type":"about:blank","status":{status},"title":"Fault injected","detail":"{detail}"}}"#))
}
