//! The sliding windows: running totals of calls, failures and slow calls.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::config::Window;

/// Calls, failures and slow calls in the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

impl Totals {
    fn add(&mut self, failed: bool, slow: bool) {
        self.calls += 1;
        self.failures += u32::from(failed);
        self.slow += u32::from(slow);
    }
}

const SLICES: usize = 10;

#[derive(Debug)]
pub(crate) enum Sliding {
    Count { size: usize, records: VecDeque<(bool, bool)>, totals: Totals },
    Time { origin: Instant, slice: Duration, slices: Box<[(u64, Totals); SLICES]> },
}

impl Sliding {
    pub(crate) fn new(window: Window) -> Self {
        match window {
            Window::Count(n) => Sliding::Count {
                size: n as usize,
                records: VecDeque::with_capacity(n as usize),
                totals: Totals::default(),
            },
            Window::Time(d) => Sliding::Time {
                origin: Instant::now(),
                slice: (d / SLICES as u32).max(Duration::from_millis(1)),
                slices: Box::new([(u64::MAX, Totals::default()); SLICES]),
            },
        }
    }

    pub(crate) fn record(&mut self, failed: bool, slow: bool, now: Instant) {
        match self {
            Sliding::Count { size, records, totals } => {
                if records.len() == *size
                    && let Some((f, s)) = records.pop_front()
                {
                    totals.calls -= 1;
                    totals.failures -= u32::from(f);
                    totals.slow -= u32::from(s);
                }
                records.push_back((failed, slow));
                totals.add(failed, slow);
            }
            Sliding::Time { origin, slice, slices } => {
                let epoch = epoch(*origin, *slice, now);
                let entry = &mut slices[(epoch % SLICES as u64) as usize];
                if entry.0 != epoch {
                    *entry = (epoch, Totals::default());
                }
                entry.1.add(failed, slow);
            }
        }
    }

    pub(crate) fn totals(&self, now: Instant) -> Totals {
        match self {
            Sliding::Count { totals, .. } => *totals,
            Sliding::Time { origin, slice, slices } => {
                let current = epoch(*origin, *slice, now);
                let mut sum = Totals::default();
                for (e, t) in slices.iter() {
                    if *e != u64::MAX && *e + SLICES as u64 > current && *e <= current {
                        sum.calls += t.calls;
                        sum.failures += t.failures;
                        sum.slow += t.slow;
                    }
                }
                sum
            }
        }
    }
}

fn epoch(origin: Instant, slice: Duration, now: Instant) -> u64 {
    (now.saturating_duration_since(origin).as_nanos() / slice.as_nanos().max(1)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_slides() {
        let now = Instant::now();
        let mut w = Sliding::new(Window::Count(3));
        for failed in [true, true, false, false] {
            w.record(failed, false, now);
        }
        assert_eq!(w.totals(now), Totals { calls: 3, failures: 1, slow: 0 });
    }

    #[test]
    fn time_window_forgets_old_slices() {
        let start = Instant::now();
        let mut w = Sliding::new(Window::Time(Duration::from_secs(10)));
        w.record(true, true, start);
        w.record(false, false, start + Duration::from_secs(5));
        assert_eq!(w.totals(start + Duration::from_secs(9)).calls, 2);
        assert_eq!(w.totals(start + Duration::from_secs(11)), Totals { calls: 1, failures: 0, slow: 0 });
        assert_eq!(w.totals(start + Duration::from_secs(16)).calls, 0);
    }
}
