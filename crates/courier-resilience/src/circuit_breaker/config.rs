use std::time::Duration;

/// The sliding window the breaker judges: the last N calls, or the calls of the last period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last `n` calls.
    Count(u32),
    /// The calls of the last period (kept in 10 slices, so calls leave it a tenth of the period at a time).
    Time(Duration),
}

/// When a [`CircuitBreaker`](super::CircuitBreaker) opens, how long it stays open and how it probes recovery.
///
/// ```
/// use std::time::Duration;
/// use courier_resilience::circuit_breaker::{CircuitBreakerConfig, Window};
///
/// let config = CircuitBreakerConfig::failure_rate(0.5)
///     .window(Window::Count(100))
///     .minimum_calls(20)
///     .slow_calls(0.8, Duration::from_secs(2))
///     .open_for(Duration::from_secs(30))
///     .half_open_calls(3);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitBreakerConfig {
    /// The sliding window (default: the last 100 calls).
    pub window: Window,
    /// Open when at least this fraction of the window's calls failed (default 0.5).
    pub failure_rate: f64,
    /// Open when at least this fraction of the window's calls were slow (default 1.0: only if all were).
    pub slow_call_rate: f64,
    /// A call taking at least this long is slow (default 60 s).
    pub slow_call_duration: Duration,
    /// Judge only once the window holds this many calls (default 20), and judge as soon as it does.
    pub minimum_calls: u32,
    /// How long the breaker stays open before letting trial calls through (default 30 s).
    pub open_duration: Duration,
    /// Trial calls let through while half-open; their rates decide between closing and reopening (default 3).
    pub half_open_calls: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            window: Window::Count(100),
            failure_rate: 0.5,
            slow_call_rate: 1.0,
            slow_call_duration: Duration::from_secs(60),
            minimum_calls: 20,
            open_duration: Duration::from_secs(30),
            half_open_calls: 3,
        }
    }
}

impl CircuitBreakerConfig {
    /// The defaults, opening at `rate` failures.
    pub fn failure_rate(rate: f64) -> Self {
        Self { failure_rate: rate, ..Self::default() }
    }

    /// Sets the sliding window.
    pub fn window(mut self, window: Window) -> Self {
        self.window = window;
        self
    }

    /// Opens also when `rate` of the calls take at least `duration`.
    pub fn slow_calls(mut self, rate: f64, duration: Duration) -> Self {
        self.slow_call_rate = rate;
        self.slow_call_duration = duration;
        self
    }

    /// Judges once the window holds `n` calls.
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.minimum_calls = n;
        self
    }

    /// Stays open for `duration`.
    pub fn open_for(mut self, duration: Duration) -> Self {
        self.open_duration = duration;
        self
    }

    /// Lets `n` trial calls through while half-open.
    pub fn half_open_calls(mut self, n: u32) -> Self {
        self.half_open_calls = n;
        self
    }

    /// Checks every value; the error names the field and the reason.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let rate = |key, v: f64| {
            if v.is_finite() && v > 0.0 && v <= 1.0 { Ok(()) } else { Err((key, format!("{v} is not in (0, 1]"))) }
        };
        rate("failure_rate", self.failure_rate)?;
        rate("slow_call_rate", self.slow_call_rate)?;
        match self.window {
            Window::Count(0) => return Err(("window_size", "must be at least 1".into())),
            Window::Time(d) if d < Duration::from_millis(10) => {
                return Err(("window_duration", format!("{d:?} is shorter than 10ms")));
            }
            _ => {}
        }
        if self.minimum_calls == 0 {
            return Err(("minimum_calls", "must be at least 1".into()));
        }
        if let Window::Count(n) = self.window
            && self.minimum_calls > n
        {
            return Err(("minimum_calls", format!("{} is more than the window's {n} calls", self.minimum_calls)));
        }
        if self.half_open_calls == 0 {
            return Err(("half_open_calls", "must be at least 1".into()));
        }
        if self.open_duration.is_zero() {
            return Err(("open_duration", "must be more than zero".into()));
        }
        Ok(())
    }
}
