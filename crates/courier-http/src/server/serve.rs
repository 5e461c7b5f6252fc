//! Graceful shutdown: stop accepting, drain in-flight requests, give up after a deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// How a [`serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Every in-flight request finished before the drain deadline.
    Drained,
    /// The drain deadline passed; the requests still running were dropped.
    DeadlineExceeded,
}

/// Serves `router` on `listener` until `signal` completes, then drains in-flight requests for up to 30 s.
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use courier_http::server::{serve, shutdown_signal};
///
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let app = Router::new().route("/", get(|| async { "hello" }));
/// serve(listener, app, shutdown_signal()).await?;
/// # Ok(()) }
/// ```
pub async fn serve(
    listener: TcpListener,
    router: Router,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<Shutdown> {
    serve_with_drain(listener, router, signal, Duration::from_secs(30)).await
}

/// Like [`serve`], with the drain deadline `drain`.
pub async fn serve_with_drain(
    listener: TcpListener,
    router: Router,
    signal: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<Shutdown> {
    let fired = Arc::new(Notify::new());
    let notify = fired.clone();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        signal.await;
        notify.notify_one();
    });
    let server = std::future::IntoFuture::into_future(server);
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.map(|()| Shutdown::Drained),
        () = fired.notified() => {}
    }
    tracing::info!(?drain, "shutting down: draining in-flight requests");
    match tokio::time::timeout(drain, server).await {
        Ok(result) => result.map(|()| Shutdown::Drained),
        Err(_) => {
            tracing::warn!(?drain, "drain deadline passed; dropping the requests still in flight");
            Ok(Shutdown::DeadlineExceeded)
        }
    }
}

/// Completes on Ctrl-C or (on Unix) SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
