//! The TOML form of a pipeline, validated into typed settings with errors that name the key.

use std::time::Duration;

use serde::Deserialize;

use crate::balance::BalanceConfig;
use crate::bulkhead::BulkheadConfig;
use crate::circuit_breaker::{CircuitBreakerConfig, Window};
use crate::hedge::HedgeDelay;
use crate::rate_limit::RateLimitConfig;
use crate::retry::{RetryBudget, RetryPolicy};

/// Bad configuration, found at start: the key (dotted path within the section) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid resilience configuration at `{key}`: {reason}")]
pub struct ConfigError {
    key: String,
    reason: String,
}

impl ConfigError {
    /// An error at `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { key: key.into(), reason: reason.into() }
    }

    /// The key at fault (`retry.max_attempts`), or `toml` for a syntax error or an unknown key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What is wrong with it.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// A pipeline as written in TOML. Every section is optional: a missing one leaves its layer out. Durations are
/// strings with a unit: `"250ms"`, `"2s"`, `"1m"`, `"1h"`. Unknown keys are errors.
///
/// ```toml
/// name = "payments"            # names the breaker, bulkhead and limiter in metrics
/// deadline = "2s"              # the whole call
/// attempt_timeout = "500ms"    # each attempt
///
/// [retry]
/// max_attempts = 3
/// base_delay = "50ms"
/// max_delay = "1s"
/// max_retry_after = "30s"
/// budget_percent = 0.2         # retries at most 20% of recent calls
/// budget_min_per_sec = 10
/// budget_window = "10s"
///
/// [hedge]
/// percentile = 0.95            # or: delay = "100ms"
/// fallback = "100ms"
///
/// [circuit_breaker]
/// window_size = 100            # or: window_duration = "60s"
/// failure_rate = 0.5
/// slow_call_rate = 0.8
/// slow_call_duration = "2s"
/// minimum_calls = 20
/// open_duration = "30s"
/// half_open_calls = 3
///
/// [bulkhead]
/// max_concurrent = 64
/// max_queue = 32
/// max_wait = "50ms"
///
/// [rate_limit]
/// per_second = 500.0
/// burst = 100
/// max_wait = "0ms"
///
/// [balance]
/// eject_after = 5
/// cooldown = "30s"
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// The name of this client's layers in metrics (default `default`).
    pub name: Option<String>,
    /// The whole call's deadline.
    pub deadline: Option<String>,
    /// Each attempt's timeout.
    pub attempt_timeout: Option<String>,
    /// Retries.
    pub retry: Option<RetrySection>,
    /// Hedging.
    pub hedge: Option<HedgeSection>,
    /// The circuit breaker.
    pub circuit_breaker: Option<CircuitBreakerSection>,
    /// The bulkhead.
    pub bulkhead: Option<BulkheadSection>,
    /// The global rate limit.
    pub rate_limit: Option<RateLimitSection>,
    /// The balancer's passive ejection (used by `ResiliencePipeline::balanced`).
    pub balance: Option<BalanceSection>,
}

/// `[retry]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RetrySection {
    pub max_attempts: Option<u32>,
    pub base_delay: Option<String>,
    pub max_delay: Option<String>,
    pub max_retry_after: Option<String>,
    pub budget_percent: Option<f32>,
    pub budget_min_per_sec: Option<u32>,
    pub budget_window: Option<String>,
}

/// `[hedge]`: `delay`, or `percentile` with `fallback`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct HedgeSection {
    pub delay: Option<String>,
    pub percentile: Option<f64>,
    pub fallback: Option<String>,
}

/// `[circuit_breaker]`: `window_size` or `window_duration`, and the thresholds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct CircuitBreakerSection {
    pub window_size: Option<u32>,
    pub window_duration: Option<String>,
    pub failure_rate: Option<f64>,
    pub slow_call_rate: Option<f64>,
    pub slow_call_duration: Option<String>,
    pub minimum_calls: Option<u32>,
    pub open_duration: Option<String>,
    pub half_open_calls: Option<u32>,
}

/// `[bulkhead]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct BulkheadSection {
    pub max_concurrent: usize,
    pub max_queue: Option<usize>,
    pub max_wait: Option<String>,
}

/// `[rate_limit]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RateLimitSection {
    pub per_second: f64,
    pub burst: Option<u32>,
    pub max_wait: Option<String>,
}

/// `[balance]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct BalanceSection {
    pub eject_after: Option<u32>,
    pub cooldown: Option<String>,
}

impl PipelineConfig {
    /// Parses a pipeline section's text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::new("toml", e.to_string()))
    }

    /// Parses the table at the dotted `path` (`clients.payments`) of a whole TOML document.
    pub fn from_toml_section(text: &str, path: &str) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::new("toml", e.to_string()))?;
        for part in path.split('.') {
            table = match table.remove(part) {
                Some(toml::Value::Table(t)) => t,
                Some(_) => return Err(ConfigError::new(path, "is not a table")),
                None => return Err(ConfigError::new(path, "is missing")),
            };
        }
        toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| ConfigError::new(path, e.to_string()))
    }
}

/// Parses `"250ms"`, `"2s"`, `"1.5s"`, `"1m"`, `"1h"`.
pub(crate) fn duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || ConfigError::new(key, format!("'{text}' is not a duration such as \"250ms\", \"2s\", \"1m\""));
    let value: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

fn opt_duration(key: &str, text: &Option<String>) -> Result<Option<Duration>, ConfigError> {
    text.as_deref().map(|t| duration(key, t)).transpose()
}

fn positive(key: &str, d: Option<Duration>) -> Result<Option<Duration>, ConfigError> {
    match d {
        Some(d) if d.is_zero() => Err(ConfigError::new(key, "must be more than zero")),
        d => Ok(d),
    }
}

/// The validated, typed settings.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settings {
    pub(crate) name: String,
    pub(crate) deadline: Option<Duration>,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) hedge: Option<HedgeDelay>,
    pub(crate) circuit_breaker: Option<CircuitBreakerConfig>,
    pub(crate) bulkhead: Option<BulkheadConfig>,
    pub(crate) rate_limit: Option<RateLimitConfig>,
    pub(crate) balance: BalanceConfig,
}

impl PipelineConfig {
    pub(crate) fn validate(&self) -> Result<Settings, ConfigError> {
        let mut s = Settings {
            name: self.name.clone().unwrap_or_else(|| "default".into()),
            deadline: positive("deadline", opt_duration("deadline", &self.deadline)?)?,
            attempt_timeout: positive("attempt_timeout", opt_duration("attempt_timeout", &self.attempt_timeout)?)?,
            ..Settings::default()
        };
        if let Some(r) = &self.retry {
            let mut policy = RetryPolicy::new();
            if let Some(n) = r.max_attempts {
                if n == 0 {
                    return Err(ConfigError::new("retry.max_attempts", "must be at least 1"));
                }
                policy = policy.max_attempts(n);
            }
            let base = opt_duration("retry.base_delay", &r.base_delay)?.unwrap_or(policy.base);
            let max = opt_duration("retry.max_delay", &r.max_delay)?.unwrap_or(policy.max_delay.max(base));
            if max < base {
                return Err(ConfigError::new("retry.max_delay", "is shorter than retry.base_delay"));
            }
            policy = policy.backoff(base, max);
            if let Some(after) = opt_duration("retry.max_retry_after", &r.max_retry_after)? {
                policy = policy.max_retry_after(after);
            }
            let percent = r.budget_percent.unwrap_or(0.2);
            if !(percent.is_finite() && (0.0..=10.0).contains(&percent)) {
                return Err(ConfigError::new("retry.budget_percent", format!("{percent} is not in [0, 10]")));
            }
            let window = opt_duration("retry.budget_window", &r.budget_window)?.unwrap_or(Duration::from_secs(10));
            if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&window) {
                return Err(ConfigError::new("retry.budget_window", "must be between 1s and 60s"));
            }
            let min = r.budget_min_per_sec.unwrap_or(10);
            s.retry = Some(policy.budget(RetryBudget::new(window, min, percent)));
        }
        if let Some(h) = &self.hedge {
            s.hedge = Some(match (&h.delay, h.percentile) {
                (Some(d), None) => HedgeDelay::Fixed(duration("hedge.delay", d)?),
                (None, Some(p)) if p > 0.0 && p < 1.0 => {
                    let fallback = opt_duration("hedge.fallback", &h.fallback)?.unwrap_or(Duration::from_millis(100));
                    HedgeDelay::percentile(p, fallback)
                }
                (None, Some(p)) => return Err(ConfigError::new("hedge.percentile", format!("{p} is not in (0, 1)"))),
                _ => return Err(ConfigError::new("hedge", "set exactly one of `delay` and `percentile`")),
            });
        }
        if let Some(c) = &self.circuit_breaker {
            s.circuit_breaker = Some(breaker(c)?);
        }
        if let Some(b) = &self.bulkhead {
            if b.max_concurrent == 0 {
                return Err(ConfigError::new("bulkhead.max_concurrent", "must be at least 1"));
            }
            let wait = opt_duration("bulkhead.max_wait", &b.max_wait)?.unwrap_or_default();
            s.bulkhead = Some(BulkheadConfig::new(b.max_concurrent).queue(b.max_queue.unwrap_or(0), wait));
        }
        if let Some(r) = &self.rate_limit {
            if !(r.per_second.is_finite() && r.per_second > 0.0) {
                return Err(ConfigError::new("rate_limit.per_second", "must be more than zero"));
            }
            let mut config = RateLimitConfig::per_second(r.per_second);
            if let Some(burst) = r.burst {
                if burst == 0 {
                    return Err(ConfigError::new("rate_limit.burst", "must be at least 1"));
                }
                config = config.burst(burst);
            }
            if let Some(wait) = opt_duration("rate_limit.max_wait", &r.max_wait)? {
                config = config.max_wait(wait);
            }
            s.rate_limit = Some(config);
        }
        if let Some(b) = &self.balance {
            let mut config = BalanceConfig::default();
            if let Some(n) = b.eject_after {
                if n == 0 {
                    return Err(ConfigError::new("balance.eject_after", "must be at least 1"));
                }
                config = config.eject_after(n);
            }
            if let Some(d) = opt_duration("balance.cooldown", &b.cooldown)? {
                config = config.cooldown(d);
            }
            s.balance = config;
        }
        Ok(s)
    }
}

fn breaker(c: &CircuitBreakerSection) -> Result<CircuitBreakerConfig, ConfigError> {
    let mut config = CircuitBreakerConfig::default();
    config.window = match (c.window_size, &c.window_duration) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "circuit_breaker.window_size",
                "set window_size or window_duration, not both",
            ));
        }
        (Some(n), None) => Window::Count(n),
        (None, Some(d)) => Window::Time(duration("circuit_breaker.window_duration", d)?),
        (None, None) => config.window,
    };
    if let Some(r) = c.failure_rate {
        config.failure_rate = r;
    }
    if let Some(r) = c.slow_call_rate {
        config.slow_call_rate = r;
    }
    if let Some(d) = opt_duration("circuit_breaker.slow_call_duration", &c.slow_call_duration)? {
        config.slow_call_duration = d;
    }
    if let Some(n) = c.minimum_calls {
        config.minimum_calls = n;
    } else if let Window::Count(n) = config.window {
        config.minimum_calls = config.minimum_calls.min(n);
    }
    if let Some(d) = opt_duration("circuit_breaker.open_duration", &c.open_duration)? {
        config.open_duration = d;
    }
    if let Some(n) = c.half_open_calls {
        config.half_open_calls = n;
    }
    config.validate().map_err(|(key, reason)| ConfigError::new(format!("circuit_breaker.{key}"), reason))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("k", "250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("k", "1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("k", "2m").unwrap(), Duration::from_secs(120));
        assert_eq!(duration("k", "2x").unwrap_err().key(), "k");
        assert!(duration("k", "s").is_err());
    }

    #[test]
    fn errors_name_the_key() {
        let err = |text: &str| PipelineConfig::from_toml(text).and_then(|c| c.validate()).unwrap_err();
        assert_eq!(err("deadline = \"soon\"").key(), "deadline");
        assert_eq!(err("[retry]\nmax_attempts = 0").key(), "retry.max_attempts");
        assert_eq!(err("[circuit_breaker]\nfailure_rate = 2.0").key(), "circuit_breaker.failure_rate");
        assert_eq!(
            err("[circuit_breaker]\nwindow_size = 10\nminimum_calls = 50").key(),
            "circuit_breaker.minimum_calls"
        );
        assert_eq!(err("[bulkhead]\nmax_concurrent = 0").key(), "bulkhead.max_concurrent");
        assert_eq!(err("[hedge]\ndelay = \"1s\"\npercentile = 0.9").key(), "hedge");
        let unknown = err("[retry]\nmax_atempts = 3");
        assert_eq!(unknown.key(), "toml");
        assert!(unknown.reason().contains("max_atempts"), "{unknown}");
    }

    #[test]
    fn a_section_of_a_document() {
        let text = "[clients.payments]\ndeadline = \"2s\"\n[clients.payments.retry]\nmax_attempts = 4\n";
        let s = PipelineConfig::from_toml_section(text, "clients.payments").unwrap().validate().unwrap();
        assert_eq!(s.deadline, Some(Duration::from_secs(2)));
        assert_eq!(s.retry.unwrap().attempts(), 4);
        assert_eq!(PipelineConfig::from_toml_section(text, "clients.orders").unwrap_err().key(), "clients.orders");
    }
}
