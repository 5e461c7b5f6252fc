//! What a [`FaultServer`](super::FaultServer) does to each request.

use std::time::Duration;

/// Latency added before a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Latency {
    /// None.
    #[default]
    None,
    /// Always this long.
    Fixed(Duration),
    /// A uniformly random duration in `[min, max]`.
    Between(Duration, Duration),
}

impl Latency {
    pub(crate) fn sample(self) -> Duration {
        match self {
            Self::None => Duration::ZERO,
            Self::Fixed(d) => d,
            Self::Between(min, max) if max > min => {
                let span = u64::try_from((max - min).as_nanos()).unwrap_or(u64::MAX);
                min + Duration::from_nanos(rand::random_range(0..=span))
            }
            Self::Between(min, _) => min,
        }
    }
}

/// The faults a [`FaultServer`](super::FaultServer) injects, decided per request in this order: connection
/// reset, hang, 503 with `Retry-After`, error status; a request that draws none of them gets `200 OK`. Latency
/// is added before every answer (not before a reset or a hang).
///
/// Every rate is a probability in `[0, 1]` (values outside are clamped).
///
/// ```
/// use std::time::Duration;
/// use courier_testkit::fault::FaultPlan;
///
/// let flaky = FaultPlan::healthy()
///     .latency_between(Duration::from_millis(1), Duration::from_millis(5))
///     .error_rate(0.1);
/// let down = FaultPlan::healthy().unavailable(Duration::from_secs(2));
/// assert_ne!(flaky, down);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    pub(crate) latency: Latency,
    pub(crate) reset_rate: f64,
    pub(crate) hang_rate: f64,
    pub(crate) unavailable_rate: f64,
    pub(crate) retry_after: Duration,
    pub(crate) error_rate: f64,
    pub(crate) error_status: u16,
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self::healthy()
    }
}

fn rate(r: f64) -> f64 {
    if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) }
}

impl FaultPlan {
    /// No faults: every request gets `200 OK` at once.
    pub fn healthy() -> Self {
        Self {
            latency: Latency::None,
            reset_rate: 0.0,
            hang_rate: 0.0,
            unavailable_rate: 0.0,
            retry_after: Duration::from_secs(1),
            error_rate: 0.0,
            error_status: 500,
        }
    }

    /// Adds `latency` before every answer.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = Latency::Fixed(latency);
        self
    }

    /// Adds a random latency in `[min, max]` before every answer.
    pub fn latency_between(mut self, min: Duration, max: Duration) -> Self {
        self.latency = Latency::Between(min, max);
        self
    }

    /// Answers this fraction of requests with the error status (500 unless [`error_status`](Self::error_status)).
    pub fn error_rate(mut self, rate_: f64) -> Self {
        self.error_rate = rate(rate_);
        self
    }

    /// The status of injected errors (default 500).
    pub fn error_status(mut self, status: u16) -> Self {
        self.error_status = status;
        self
    }

    /// Never answers any request (the connection stays open until the client gives up).
    pub fn hang(self) -> Self {
        self.hang_rate(1.0)
    }

    /// Never answers this fraction of requests.
    pub fn hang_rate(mut self, rate_: f64) -> Self {
        self.hang_rate = rate(rate_);
        self
    }

    /// Closes the connection of every request without answering.
    pub fn reset(self) -> Self {
        self.reset_rate(1.0)
    }

    /// Closes the connection of this fraction of requests without answering.
    pub fn reset_rate(mut self, rate_: f64) -> Self {
        self.reset_rate = rate(rate_);
        self
    }

    /// Answers every request `503 Service Unavailable` with `Retry-After` (whole seconds, rounded up).
    pub fn unavailable(self, retry_after: Duration) -> Self {
        self.unavailable_rate(1.0, retry_after)
    }

    /// Answers this fraction of requests `503` with `Retry-After`.
    pub fn unavailable_rate(mut self, rate_: f64, retry_after: Duration) -> Self {
        self.unavailable_rate = rate(rate_);
        self.retry_after = retry_after;
        self
    }

    /// The latency setting.
    pub fn latency_setting(&self) -> Latency {
        self.latency
    }

    pub(crate) fn decide(&self) -> Fault {
        let draw = |r: f64| r > 0.0 && (r >= 1.0 || rand::random::<f64>() < r);
        if draw(self.reset_rate) {
            Fault::Reset
        } else if draw(self.hang_rate) {
            Fault::Hang
        } else if draw(self.unavailable_rate) {
            Fault::Unavailable(self.latency.sample(), self.retry_after)
        } else if draw(self.error_rate) {
            Fault::Error(self.latency.sample(), self.error_status)
        } else {
            Fault::Ok(self.latency.sample())
        }
    }
}

/// One request's fate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Fault {
    Ok(Duration),
    Error(Duration, u16),
    Unavailable(Duration, Duration),
    Hang,
    Reset,
}
