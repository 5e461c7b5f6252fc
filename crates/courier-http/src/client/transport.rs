//! The innermost service: one HTTP endpoint over reqwest, with bodies buffered.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use tower::Service;

use super::HttpError;

/// A request as it flows through the pipeline: its URI is the path and query only; the endpoint adds its base.
pub type HttpRequest = http::Request<Bytes>;
/// A response with its body read.
pub type HttpResponse = http::Response<Bytes>;

/// One endpoint (`base` URL) reached through a shared reqwest client. A response with status >= 400 becomes an
/// [`HttpError`] (so the breaker and the retry layer see it); everything else is returned with its body read.
#[derive(Debug, Clone)]
pub struct Endpoint {
    client: reqwest::Client,
    base: Arc<str>,
}

impl Endpoint {
    /// `base` (scheme, host, port and optional path prefix, without a trailing slash) through `client`.
    pub fn new(client: reqwest::Client, base: &str) -> Self {
        Self { client, base: base.trim_end_matches('/').into() }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }
}

impl Service<HttpRequest> for Endpoint {
    type Response = HttpResponse;
    type Error = HttpError;
    type Future = BoxFuture<'static, Result<HttpResponse, HttpError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        let client = self.client.clone();
        let base = self.base.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let url = format!("{base}{path}");
            let url = reqwest::Url::parse(&url).map_err(|e| {
                HttpError::new(super::HttpErrorKind::Config, format!("invalid URL {url:?}")).with_source(e)
            })?;
            let mut request = reqwest::Request::new(parts.method, url);
            *request.headers_mut() = parts.headers;
            if !body.is_empty() {
                *request.body_mut() = Some(body.into());
            }
            let resp = client.execute(request).await.map_err(HttpError::from_reqwest)?;
            let status = resp.status();
            let version = resp.version();
            let headers = resp.headers().clone();
            let body = resp.bytes().await.map_err(HttpError::from_reqwest)?;
            if status.is_client_error() || status.is_server_error() {
                return Err(HttpError::from_status(status, &headers, body));
            }
            let mut out = http::Response::new(body);
            *out.status_mut() = status;
            *out.version_mut() = version;
            *out.headers_mut() = headers;
            Ok(out)
        })
    }
}
