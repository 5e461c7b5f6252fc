//! The shared breaker: its state machine, its observers and its metrics.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::sync::watch;
use tokio::time::Instant;

use super::config::CircuitBreakerConfig;
use super::window::{Sliding, Totals};

/// A breaker's state. As a metric (`courier_circuit_state`): closed 0, open 1, half-open 2, forced open 3,
/// forced closed 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls go through and are judged.
    Closed,
    /// Calls fail fast, until the open duration passes.
    Open,
    /// A limited number of trial calls go through; their outcome closes or reopens the breaker.
    HalfOpen,
    /// Opened by hand: calls fail fast until [`CircuitBreaker::reset`] or [`CircuitBreaker::force_closed`].
    ForcedOpen,
    /// Closed by hand: calls go through and are not judged.
    ForcedClosed,
}

impl CircuitState {
    /// Whether calls may go through (possibly as trials): closed, half-open or forced closed.
    pub fn permits_calls(self) -> bool {
        matches!(self, Self::Closed | Self::HalfOpen | Self::ForcedClosed)
    }

    /// The value of the `courier_circuit_state` gauge.
    pub fn as_metric(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
            Self::ForcedOpen => 3.0,
            Self::ForcedClosed => 4.0,
        }
    }

    /// A stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::ForcedOpen => "forced_open",
            Self::ForcedClosed => "forced_closed",
        }
    }
}

/// How a call ended, as the breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It worked (it may still count as slow).
    Success,
    /// It failed.
    Failure,
    /// Not counted either way (a rejection by a layer below, a caller's mistake).
    Ignored,
}

/// A change of state, passed to the callbacks of [`CircuitBreaker::on_state_change`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChange {
    /// The state left.
    pub from: CircuitState,
    /// The state entered.
    pub to: CircuitState,
}

/// The breaker refused a call; `retry_after` says when it may half-open, if known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// Time left until the breaker lets trial calls through.
    pub retry_after: Option<Duration>,
}

type Callback = Arc<dyn Fn(StateChange) + Send + Sync>;

struct Machine {
    state: CircuitState,
    generation: u64,
    window: Sliding,
    open_until: Instant,
    trials_admitted: u32,
    trials: Totals,
}

struct Meters {
    state: Gauge,
    success: Counter,
    failure: Counter,
    ignored: Counter,
    slow: Counter,
    rejected: Counter,
}

struct Shared {
    name: Arc<str>,
    config: CircuitBreakerConfig,
    machine: Mutex<Machine>,
    tx: watch::Sender<CircuitState>,
    callbacks: Mutex<Vec<Callback>>,
    meters: Meters,
}

/// A circuit breaker: a cheap `Clone` handle; every clone (in any number of layers, services or bus gates) shares
/// one state. Metrics handles are registered when it is created, so install the `metrics` recorder first.
///
/// ```
/// use courier_resilience::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitState, Outcome};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let breaker = CircuitBreaker::new("payments", CircuitBreakerConfig::failure_rate(0.5).minimum_calls(2));
/// let states = breaker.subscribe();
/// for _ in 0..2 {
///     breaker.try_acquire().unwrap().record(Outcome::Failure);
/// }
/// assert_eq!(*states.borrow(), CircuitState::Open);
/// assert!(breaker.try_acquire().is_err());
/// breaker.reset();
/// assert_eq!(breaker.state(), CircuitState::Closed);
/// # }
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.shared.name)
            .field("state", &*self.shared.tx.borrow())
            .field("config", &self.shared.config)
            .finish()
    }
}

impl CircuitBreaker {
    /// A closed breaker named `name` (the `name` label of its metrics). An invalid config is corrected to the
    /// nearest valid one; check it first with [`CircuitBreakerConfig::validate`] to fail instead.
    pub fn new(name: impl Into<String>, config: CircuitBreakerConfig) -> Self {
        let config = sanitize(config);
        let name: Arc<str> = name.into().into();
        let label = name.to_string();
        let counter = |outcome: &'static str| metrics::counter!("courier_circuit_calls_total", "name" => label.clone(), "outcome" => outcome);
        let meters = Meters {
            state: metrics::gauge!("courier_circuit_state", "name" => label.clone()),
            success: counter("success"),
            failure: counter("failure"),
            ignored: counter("ignored"),
            slow: metrics::counter!("courier_circuit_slow_calls_total", "name" => label.clone()),
            rejected: metrics::counter!("courier_circuit_rejected_total", "name" => label.clone()),
        };
        meters.state.set(CircuitState::Closed.as_metric());
        let machine = Machine {
            state: CircuitState::Closed,
            generation: 0,
            window: Sliding::new(config.window),
            open_until: Instant::now(),
            trials_admitted: 0,
            trials: Totals::default(),
        };
        let (tx, _) = watch::channel(CircuitState::Closed);
        let shared = Shared { name, config, machine: Mutex::new(machine), tx, callbacks: Mutex::default(), meters };
        Self { shared: Arc::new(shared) }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Its configuration.
    pub fn config(&self) -> &CircuitBreakerConfig {
        &self.shared.config
    }

    /// The current state (an open breaker whose open duration passed reads as open until the next call or gate
    /// check moves it to half-open).
    pub fn state(&self) -> CircuitState {
        *self.shared.tx.borrow()
    }

    /// A receiver of every state change.
    pub fn subscribe(&self) -> watch::Receiver<CircuitState> {
        self.shared.tx.subscribe()
    }

    /// Calls `f` on every state change (after the change, outside the breaker's lock).
    pub fn on_state_change(&self, f: impl Fn(StateChange) + Send + Sync + 'static) {
        self.shared.callbacks.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::new(f));
    }

    /// Asks to make a call: a [`Permit`] to record its outcome with, or a rejection while open.
    pub fn try_acquire(&self) -> Result<Permit, Rejected> {
        self.try_acquire_at(Instant::now())
    }

    /// [`try_acquire`](Self::try_acquire) for a call starting at `now` (a caller that already read the clock).
    pub(crate) fn try_acquire_at(&self, now: Instant) -> Result<Permit, Rejected> {
        let mut m = self.lock();
        let mut change = None;
        if m.state == CircuitState::Open && now >= m.open_until {
            change = self.transition(&mut m, CircuitState::HalfOpen, now);
        }
        let result = match m.state {
            CircuitState::Closed | CircuitState::ForcedClosed => Ok(false),
            CircuitState::HalfOpen if m.trials_admitted < self.shared.config.half_open_calls => {
                m.trials_admitted += 1;
                Ok(true)
            }
            CircuitState::HalfOpen | CircuitState::ForcedOpen => Err(Rejected { retry_after: None }),
            CircuitState::Open => Err(Rejected { retry_after: Some(m.open_until - now) }),
        };
        let generation = m.generation;
        drop(m);
        self.announce(change);
        match result {
            Ok(trial) => Ok(Permit { breaker: self.clone(), generation, started: now, trial, done: false }),
            Err(rejected) => {
                self.shared.meters.rejected.increment(1);
                Err(rejected)
            }
        }
    }

    /// Opens the breaker until [`reset`](Self::reset) or [`force_closed`](Self::force_closed).
    pub fn force_open(&self) {
        self.set(CircuitState::ForcedOpen);
    }

    /// Closes the breaker and stops judging calls until [`reset`](Self::reset) or [`force_open`](Self::force_open).
    pub fn force_closed(&self) {
        self.set(CircuitState::ForcedClosed);
    }

    /// Closes the breaker with an empty window.
    pub fn reset(&self) {
        self.set(CircuitState::Closed);
    }

    /// Moves an open breaker whose open duration passed to half-open; returns when the open duration ends, if
    /// it is open.
    #[cfg_attr(not(feature = "bus"), allow(dead_code))]
    pub(crate) fn poll_open(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut m = self.lock();
        if m.state != CircuitState::Open {
            return None;
        }
        if now < m.open_until {
            return Some(m.open_until);
        }
        let change = self.transition(&mut m, CircuitState::HalfOpen, now);
        drop(m);
        self.announce(change);
        None
    }

    fn set(&self, to: CircuitState) {
        let now = Instant::now();
        let mut m = self.lock();
        let change = self.transition(&mut m, to, now);
        m.window = Sliding::new(self.shared.config.window);
        drop(m);
        self.announce(change);
    }

    fn lock(&self) -> MutexGuard<'_, Machine> {
        self.shared.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves to `to`, starting a new generation (outcomes of calls admitted before are then ignored).
    fn transition(&self, m: &mut Machine, to: CircuitState, now: Instant) -> Option<StateChange> {
        let from = m.state;
        m.state = to;
        m.generation += 1;
        m.trials_admitted = 0;
        m.trials = Totals::default();
        match to {
            CircuitState::Open => m.open_until = now + self.shared.config.open_duration,
            CircuitState::Closed => m.window = Sliding::new(self.shared.config.window),
            _ => {}
        }
        (from != to).then_some(StateChange { from, to })
    }

    fn announce(&self, change: Option<StateChange>) {
        let Some(change) = change else { return };
        let name = &*self.shared.name;
        tracing::info!(breaker = name, from = change.from.as_str(), to = change.to.as_str(), "circuit breaker");
        self.shared.meters.state.set(change.to.as_metric());
        metrics::counter!("courier_circuit_transitions_total", "name" => name.to_owned(), "to" => change.to.as_str())
            .increment(1);
        self.shared.tx.send_replace(change.to);
        let callbacks = self.shared.callbacks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for callback in callbacks {
            callback(change);
        }
    }

    fn record(&self, permit: &Permit, outcome: Outcome) {
        let now = Instant::now();
        let config = &self.shared.config;
        let slow = now.saturating_duration_since(permit.started) >= config.slow_call_duration;
        let meters = &self.shared.meters;
        match outcome {
            Outcome::Success => meters.success.increment(1),
            Outcome::Failure => meters.failure.increment(1),
            Outcome::Ignored => meters.ignored.increment(1),
        }
        if slow && outcome != Outcome::Ignored {
            meters.slow.increment(1);
        }
        let mut m = self.lock();
        if m.generation != permit.generation {
            return;
        }
        let failed = outcome == Outcome::Failure;
        let change = match (m.state, outcome) {
            (_, Outcome::Ignored) => {
                if permit.trial {
                    m.trials_admitted = m.trials_admitted.saturating_sub(1);
                }
                None
            }
            (CircuitState::Closed, _) => {
                m.window.record(failed, slow, now);
                let totals = m.window.totals(now);
                if totals.calls >= config.minimum_calls && self.trips(totals, totals.calls) {
                    self.transition(&mut m, CircuitState::Open, now)
                } else {
                    None
                }
            }
            (CircuitState::HalfOpen, _) if permit.trial => {
                m.trials.calls += 1;
                m.trials.failures += u32::from(failed);
                m.trials.slow += u32::from(slow);
                let trials = m.trials;
                if self.trips(trials, config.half_open_calls) {
                    self.transition(&mut m, CircuitState::Open, now)
                } else if trials.calls >= config.half_open_calls {
                    self.transition(&mut m, CircuitState::Closed, now)
                } else {
                    None
                }
            }
            _ => None,
        };
        drop(m);
        self.announce(change);
    }

    /// Whether these totals reach a threshold, as rates over `calls` calls. While half-open `calls` is the
    /// number of trials, so the breaker reopens as soon as the failures alone reach the rate, whatever the
    /// remaining trials do, and closes once all trials are in below it.
    fn trips(&self, t: Totals, calls: u32) -> bool {
        let config = &self.shared.config;
        let calls = f64::from(calls.max(1));
        f64::from(t.failures) / calls >= config.failure_rate || f64::from(t.slow) / calls >= config.slow_call_rate
    }
}

fn sanitize(mut c: CircuitBreakerConfig) -> CircuitBreakerConfig {
    let d = CircuitBreakerConfig::default();
    let rate = |v: f64, d: f64| if v.is_finite() && v > 0.0 { v.min(1.0) } else { d };
    c.failure_rate = rate(c.failure_rate, d.failure_rate);
    c.slow_call_rate = rate(c.slow_call_rate, d.slow_call_rate);
    c.minimum_calls = c.minimum_calls.max(1);
    if let super::Window::Count(n) = &mut c.window {
        *n = (*n).max(1);
        c.minimum_calls = c.minimum_calls.min(*n);
    }
    c.half_open_calls = c.half_open_calls.max(1);
    if c.open_duration.is_zero() {
        c.open_duration = d.open_duration;
    }
    c
}

/// Leave to make one call through the breaker. Record how it ended with [`record`](Self::record); a permit
/// dropped unrecorded (a cancelled call) counts as nothing and frees its half-open trial slot.
pub struct Permit {
    breaker: CircuitBreaker,
    generation: u64,
    started: Instant,
    trial: bool,
    done: bool,
}

impl Permit {
    /// Records the call's outcome (its duration is measured from [`CircuitBreaker::try_acquire`]).
    pub fn record(mut self, outcome: Outcome) {
        self.done = true;
        self.breaker.record(&self, outcome);
    }

    /// Whether this is a half-open trial call.
    pub fn is_trial(&self) -> bool {
        self.trial
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done && self.trial {
            let mut m = self.breaker.lock();
            if m.generation == self.generation {
                m.trials_admitted = m.trials_admitted.saturating_sub(1);
            }
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").field("breaker", &self.breaker.name()).field("trial", &self.trial).finish()
    }
}
