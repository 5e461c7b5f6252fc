//! Choosing an engine by URL.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::{Admin, Error, Result, Transport};

/// A connected engine: its transport and its admin view (usually the same object).
#[derive(Debug, Clone)]
pub struct Engine {
    /// Moves messages.
    pub transport: Arc<dyn Transport>,
    /// Inspects queues and dead letters.
    pub admin: Arc<dyn Admin>,
}

impl Engine {
    /// Wraps one object that is both transport and admin.
    pub fn new<T: Transport + Admin>(engine: Arc<T>) -> Self {
        Self { transport: engine.clone(), admin: engine }
    }
}

/// Connects to one kind of engine, named by the URL scheme(s) it answers.
#[async_trait]
pub trait EngineFactory: Send + Sync + fmt::Debug + 'static {
    /// URL schemes this factory handles, e.g. `["sqlite"]`.
    fn schemes(&self) -> &'static [&'static str];
    /// Connects. A malformed URL is an [`ErrorKind::Config`](crate::ErrorKind::Config) error that names the URL; an
    /// unreachable engine is an [`ErrorKind::Connection`](crate::ErrorKind::Connection) error.
    async fn connect(&self, url: &str) -> Result<Engine>;
}

/// The engines compiled into this program, looked up by URL scheme.
///
/// ```
/// # use courier_core::EngineRegistry;
/// let registry = EngineRegistry::new();
/// let err = futures_lite_block_on(registry.connect("nope://x")).unwrap_err();
/// assert!(err.to_string().contains("nope://x"));
/// # fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     let waker = std::task::Waker::noop();
/// #     let mut cx = std::task::Context::from_waker(&waker);
/// #     let mut f = std::pin::pin!(f);
/// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct EngineRegistry {
    factories: Vec<Arc<dyn EngineFactory>>,
}

impl EngineRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a factory (a later one wins for a scheme both answer).
    pub fn with(mut self, factory: impl EngineFactory) -> Self {
        self.factories.insert(0, Arc::new(factory));
        self
    }

    /// The schemes known, for error messages.
    pub fn schemes(&self) -> Vec<&'static str> {
        let mut s: Vec<_> = self.factories.iter().flat_map(|f| f.schemes().iter().copied()).collect();
        s.sort_unstable();
        s.dedup();
        s
    }

    /// Connects to the engine the URL names.
    pub async fn connect(&self, url: &str) -> Result<Engine> {
        let Some((scheme, _)) = url.split_once("://") else {
            return Err(Error::config(format!(
                "engine URL '{url}' has no scheme: write it like 'sqlite://./data/courier.db' or 'memory://'"
            )));
        };
        let factory = self.factories.iter().find(|f| f.schemes().contains(&scheme)).ok_or_else(|| {
            Error::config(format!(
                "no engine for '{scheme}' in URL '{url}': this program knows {}; enable the crate feature for \
                 the engine you want",
                self.schemes().iter().map(|s| format!("{s}://")).collect::<Vec<_>>().join(", ")
            ))
        })?;
        factory.connect(url).await
    }
}
