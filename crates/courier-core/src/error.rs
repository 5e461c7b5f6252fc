//! The one error type of Courier's core.

use std::fmt;

/// A `Result` with Courier's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in a form code can branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A configuration value (an engine URL, a setting) is invalid. Fix the configuration; retrying will not help.
    Config,
    /// The engine could not be reached or the connection broke. Usually worth retrying.
    Connection,
    /// A message could not be encoded or decoded. Permanent.
    Codec,
    /// A message is not a valid envelope (missing or malformed attribute). Permanent.
    Envelope,
    /// The operation did not finish in time.
    Timeout,
    /// The bus or transport has been shut down.
    Closed,
    /// Something does not exist (a queue, a dead letter).
    NotFound,
    /// The engine failed in a way not covered above (e.g. a storage error).
    Engine,
}

/// Courier's error: a [`kind`](Error::kind), a message that says what to do, and the underlying cause.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl Error {
    /// Creates an error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// A configuration error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// A connection error.
    pub fn connection(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Connection, message)
    }

    /// A codec error.
    pub fn codec(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Codec, message)
    }

    /// An envelope error.
    pub fn envelope(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Envelope, message)
    }

    /// An engine error.
    pub fn engine(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Engine, message)
    }

    /// A timeout.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, message)
    }

    /// The bus or transport is closed.
    pub fn closed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Closed, message)
    }

    /// Something was not found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether trying again later may succeed (connection trouble, timeouts, engine hiccups).
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::Engine)
    }

    /// Whether trying again can never succeed (bad configuration, undecodable input).
    pub fn is_permanent(&self) -> bool {
        matches!(self.kind, ErrorKind::Config | ErrorKind::Codec | ErrorKind::Envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_answer_questions() {
        assert!(Error::connection("down").is_retryable());
        assert!(Error::codec("bad").is_permanent());
        assert!(!Error::codec("bad").is_retryable());
        let e = Error::config("bad URL").with_source(std::io::Error::other("boom"));
        assert_eq!(e.to_string(), "bad URL: boom");
    }
}
