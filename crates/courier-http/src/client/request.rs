//! Building one call and reading its response.

use bytes::Bytes;
use courier_core::TraceParent;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower::ServiceExt;

use super::{HttpClient, HttpError, HttpErrorKind};
use crate::trace::{self, TRACEPARENT};

/// One call being built; see [`HttpClient::post`] and friends. Nothing is sent until [`send`](Self::send).
#[derive(Debug)]
#[must_use = "a request does nothing until it is sent"]
pub struct RequestBuilder {
    client: HttpClient,
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    parent: Option<TraceParent>,
    error: Option<HttpError>,
}

impl RequestBuilder {
    pub(super) fn new(client: HttpClient, method: Method, path: &str) -> Self {
        Self {
            client,
            method,
            path: path.to_owned(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            parent: None,
            error: None,
        }
    }

    fn fail(mut self, error: HttpError) -> Self {
        self.error.get_or_insert(error);
        self
    }

    /// Sends `value` as a JSON body (`content-type: application/json`).
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => {
                self.body = body.into();
                self.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                self
            }
            Err(e) => {
                self.fail(HttpError::new(HttpErrorKind::Config, "the body could not be serialized").with_source(e))
            }
        }
    }

    /// Sends `body` as it is (set `content-type` with [`header`](Self::header)).
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        let name = name.as_ref();
        match (HeaderName::try_from(name), HeaderValue::try_from(value.as_ref())) {
            (Ok(n), Ok(v)) => {
                self.headers.append(n, v);
                self
            }
            _ => self.fail(HttpError::new(HttpErrorKind::Config, format!("invalid header {name:?}"))),
        }
    }

    /// Sends `Idempotency-Key: <key>`: the server deduplicates on it, and the pipeline may then retry and hedge
    /// the call even if its method is not idempotent (a POST).
    pub fn idempotency_key(self, key: impl std::fmt::Display) -> Self {
        self.header("idempotency-key", key.to_string())
    }

    /// Continues `parent`'s trace (instead of the [current](crate::trace::current) one).
    pub fn trace_parent(mut self, parent: TraceParent) -> Self {
        self.parent = Some(parent);
        self
    }

    /// Sends the request through the client's pipeline. A status >= 400 is an error.
    pub async fn send(self) -> Result<Response, HttpError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let uri: http::Uri = self.path.parse().map_err(|e| {
            HttpError::new(HttpErrorKind::Config, format!("invalid path {:?}: start it with '/'", self.path))
                .with_source(e)
        })?;
        if uri.scheme().is_some() || !self.path.starts_with('/') {
            return Err(HttpError::new(
                HttpErrorKind::Config,
                format!("{:?} is not a path starting with '/'", self.path),
            ));
        }
        let mut req = http::Request::new(self.body);
        *req.method_mut() = self.method;
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        for (name, value) in self.client.inner.headers.iter() {
            headers.insert(name.clone(), value.clone());
        }
        headers.extend(self.headers);
        headers.entry(ACCEPT).or_insert(HeaderValue::from_static("application/json"));
        let traceparent = trace::outgoing(self.parent);
        if let Ok(v) = HeaderValue::try_from(traceparent.to_string()) {
            headers.insert(TRACEPARENT, v);
        }
        let resp = self.client.service.clone().oneshot(req).await.map_err(HttpError::from_resilience)?;
        Ok(Response { inner: resp })
    }

    /// Sends the request and decodes a JSON response body.
    pub async fn send_json<T: DeserializeOwned>(self) -> Result<T, HttpError> {
        self.send().await?.json()
    }
}

/// A response with its body read.
#[derive(Debug, Clone)]
pub struct Response {
    inner: http::Response<Bytes>,
}

impl Response {
    /// The status (always below 400: error statuses are [`HttpError`]s).
    pub fn status(&self) -> StatusCode {
        self.inner.status()
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        self.inner.headers()
    }

    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.inner.headers().get(name).and_then(|v| v.to_str().ok())
    }

    /// The body.
    pub fn bytes(&self) -> &Bytes {
        self.inner.body()
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(self.inner.body()).into_owned()
    }

    /// Decodes the body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(self.inner.body()).map_err(|e| {
            HttpError::new(HttpErrorKind::Decode, format!("the response body is not the JSON expected: {e}"))
                .with_source(e)
        })
    }

    /// The underlying `http::Response`.
    pub fn into_inner(self) -> http::Response<Bytes> {
        self.inner
    }
}
