//! Time limits for many calls at the cost of one timer: what the fused pipeline bounds its attempts with.
//!
//! A tokio timer per call is precise but not free: registering and cancelling it take the runtime's one timer
//! lock twice, which measured as 40% of the fused pipeline's cost on loopback HTTP (2 cores, 16 callers), where
//! nearly every call ends long before its limit. Here a call that has to wait puts its limit and waker in a
//! shard of a table (a lock that is rarely contended: callers pick their shard by thread) and takes it out when
//! it ends; one sweeper task per watchdog sleeps until the earliest limit in the table, wakes the calls whose
//! limit passed, and sleeps again. A call checks its own limit whenever it is polled, so it fails at its limit
//! (to the runtime timer's millisecond) whether the sweeper or its own progress wakes it. The sweeper runs while
//! calls wait and ends when the table has been empty for a second.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use tokio::sync::Notify;
use tokio::time::Instant;

/// The shared table of waiting calls. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Watchdog {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    shards: Box<[Mutex<Shard>]>,
    /// A sweeper task is running (or about to).
    sweeping: AtomicBool,
    /// What limits are measured from.
    origin: Instant,
    /// The limit the sweeper sleeps until, in nanoseconds from `origin` (`u64::MAX` while it scans or has none).
    next: AtomicU64,
    /// Tells the sweeper a call with an earlier limit arrived.
    earlier: Notify,
}

impl Shared {
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX - 1)
    }
}

#[derive(Debug, Default)]
struct Shard {
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
}

#[derive(Debug)]
struct Entry {
    limit: Instant,
    waker: Waker,
    /// The sweeper woke the call for its limit: not woken again, not a limit to sleep until.
    woken: bool,
}

/// Where a waiting call's entry is.
#[derive(Debug, Clone, Copy)]
struct Key {
    shard: usize,
    slot: usize,
}

/// The call's limit passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

impl Watchdog {
    pub(crate) fn new() -> Self {
        let shards = std::thread::available_parallelism().map_or(4, |n| n.get() * 2);
        let shared = Shared {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            sweeping: AtomicBool::new(false),
            origin: Instant::now(),
            next: AtomicU64::new(u64::MAX),
            earlier: Notify::new(),
        };
        Self { shared: Arc::new(shared) }
    }

    /// Runs `future` until `limit`: its output, or [`Elapsed`] once the limit passed.
    pub(crate) async fn limit<F: Future>(&self, limit: Instant, future: F) -> Result<F::Output, Elapsed> {
        let mut future = std::pin::pin!(future);
        let mut waiting = Waiting { watchdog: self, key: None };
        std::future::poll_fn(|cx| {
            if let Poll::Ready(output) = future.as_mut().poll(cx) {
                waiting.leave();
                return Poll::Ready(Ok(output));
            }
            // On the first poll the limit was set a moment ago; after that, whatever woke the call, it checks.
            if waiting.key.is_some() && Instant::now() >= limit {
                waiting.leave();
                return Poll::Ready(Err(Elapsed));
            }
            waiting.wait(limit, cx.waker());
            Poll::Pending
        })
        .await
    }

    fn shard(&self, index: usize) -> MutexGuard<'_, Shard> {
        self.shared.shards[index].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enter(&self, limit: Instant, waker: &Waker) -> Key {
        let shard = shard_of_this_thread() % self.shared.shards.len();
        let slot = {
            let mut s = self.shard(shard);
            let entry = Some(Entry { limit, waker: waker.clone(), woken: false });
            match s.free.pop() {
                Some(slot) => {
                    s.entries[slot] = entry;
                    slot
                }
                None => {
                    s.entries.push(entry);
                    s.entries.len() - 1
                }
            }
        };
        let shared = &self.shared;
        if !self.start_sweeper() && shared.nanos(limit) < shared.next.load(Ordering::SeqCst) {
            shared.earlier.notify_one();
        }
        Key { shard, slot }
    }

    /// Starts a sweeper on this runtime if none runs; whether it did.
    fn start_sweeper(&self) -> bool {
        let shared = &self.shared;
        if shared.sweeping.load(Ordering::SeqCst) || shared.sweeping.swap(true, Ordering::SeqCst) {
            return false;
        }
        tokio::spawn(sweep(Sweeper { shared: shared.clone(), finished: false }));
        true
    }

    fn update(&self, key: Key, waker: &Waker) {
        {
            let mut s = self.shard(key.shard);
            if let Some(Some(entry)) = s.entries.get_mut(key.slot)
                && !entry.waker.will_wake(waker)
            {
                entry.waker = waker.clone();
            }
        }
        // The sweeper's runtime may have shut down while this call waited on another one.
        self.start_sweeper();
    }

    fn leave(&self, key: Key) {
        let mut s = self.shard(key.shard);
        if let Some(slot) = s.entries.get_mut(key.slot)
            && slot.take().is_some()
        {
            s.free.push(key.slot);
        }
    }
}

/// A call's place in the table, left when the call ends or is dropped.
struct Waiting<'a> {
    watchdog: &'a Watchdog,
    key: Option<Key>,
}

impl Waiting<'_> {
    fn wait(&mut self, limit: Instant, waker: &Waker) {
        match self.key {
            Some(key) => self.watchdog.update(key, waker),
            None => self.key = Some(self.watchdog.enter(limit, waker)),
        }
    }

    fn leave(&mut self) {
        if let Some(key) = self.key.take() {
            self.watchdog.leave(key);
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Callers on one thread share a shard; threads spread over the shards.
fn shard_of_this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SHARD.with(|s| *s)
}

/// How long a sweeper with no call to watch waits for one before it ends.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// The sweeper task's hold on the table. Dropped unfinished (its runtime shut down), it clears `sweeping` and
/// wakes every waiting call, so that one of them (on a runtime still running) starts another.
struct Sweeper {
    shared: Arc<Shared>,
    finished: bool,
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.shared.sweeping.store(false, Ordering::SeqCst);
        let mut waiting = Vec::new();
        for shard in self.shared.shards.iter() {
            let s = shard.lock().unwrap_or_else(|p| p.into_inner());
            waiting.extend(s.entries.iter().flatten().map(|entry| entry.waker.clone()));
        }
        waiting.into_iter().for_each(Waker::wake);
    }
}

/// What one look at the table found.
struct Scan {
    entries: usize,
    /// The earliest limit of a call not yet woken.
    earliest: Option<Instant>,
}

/// Wakes the calls whose limit passed (once each).
fn scan(shared: &Shared) -> Scan {
    let now = Instant::now();
    let mut found = Scan { entries: 0, earliest: None };
    let mut due = Vec::new();
    for shard in shared.shards.iter() {
        let mut s = shard.lock().unwrap_or_else(|p| p.into_inner());
        for entry in s.entries.iter_mut().flatten() {
            found.entries += 1;
            if entry.woken {
                continue;
            }
            if entry.limit <= now {
                entry.woken = true;
                due.push(entry.waker.clone());
            } else {
                found.earliest = Some(found.earliest.map_or(entry.limit, |e| e.min(entry.limit)));
            }
        }
    }
    due.into_iter().for_each(Waker::wake);
    found
}

/// The sweeper: wakes the calls whose limit passed, then sleeps until the earliest limit left (or until a call
/// with an earlier one arrives); ends when no call has waited for a while ([`LINGER`]).
async fn sweep(mut sweeper: Sweeper) {
    let shared = sweeper.shared.clone();
    loop {
        shared.next.store(u64::MAX, Ordering::SeqCst);
        let found = scan(&shared);
        if found.entries == 0 {
            // Linger a while first: calls made one after another would otherwise start a sweeper each. A call
            // that enters now sees `next` unset and wakes the sweeper.
            tokio::select! {
                _ = tokio::time::sleep(LINGER) => {}
                _ = shared.earlier.notified() => continue,
            }
            shared.sweeping.store(false, Ordering::SeqCst);
            // A call that entered after its shard was scanned may have seen the sweeper still running: look
            // again, and go on if one did (unless that call started a sweeper of its own).
            if scan(&shared).entries == 0 || shared.sweeping.swap(true, Ordering::SeqCst) {
                sweeper.finished = true;
                return;
            }
            continue;
        }
        match found.earliest {
            Some(at) => {
                shared.next.store(shared.nanos(at), Ordering::SeqCst);
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = shared.earlier.notified() => {}
                }
            }
            // Every call left is woken and about to leave; a new call with any limit wakes the sweeper.
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(1)) => {}
                    _ = shared.earlier.notified() => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_limit_fails_at_the_limit() {
        let watchdog = Watchdog::new();
        let start = Instant::now();
        let limit = start + Duration::from_millis(100);
        let result = watchdog.limit(limit, tokio::time::sleep(Duration::from_secs(5))).await;
        assert_eq!(result, Err(Elapsed));
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        assert_eq!(scan(&watchdog.shared).entries, 0, "the call left the table");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_within_its_limit_returns_its_output() {
        let watchdog = Watchdog::new();
        let limit = Instant::now() + Duration::from_millis(100);
        let result = watchdog.limit(limit, async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            7
        });
        assert_eq!(result.await, Ok(7));
        assert_eq!(scan(&watchdog.shared).entries, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_call_with_an_earlier_limit_is_not_held_back() {
        let watchdog = Watchdog::new();
        let start = Instant::now();
        let long = {
            let watchdog = watchdog.clone();
            tokio::spawn(async move {
                watchdog.limit(start + Duration::from_secs(10), tokio::time::sleep(Duration::from_secs(60))).await
            })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let short = watchdog.limit(start + Duration::from_millis(50), tokio::time::sleep(Duration::from_secs(60)));
        assert_eq!(short.await, Err(Elapsed));
        assert_eq!(start.elapsed(), Duration::from_millis(50), "the sweeper woke for the earlier limit");
        assert_eq!(long.await.unwrap(), Err(Elapsed));
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn many_calls_each_end_at_their_own_limit_and_the_sweeper_stops() {
        let watchdog = Watchdog::new();
        let start = Instant::now();
        let calls: Vec<_> = (1..=20u64)
            .map(|i| {
                let watchdog = watchdog.clone();
                tokio::spawn(async move {
                    let limit = start + Duration::from_millis(10 * i);
                    let r = watchdog.limit(limit, tokio::time::sleep(Duration::from_secs(60))).await;
                    (r, start.elapsed())
                })
            })
            .collect();
        for (i, call) in (1..=20u64).zip(calls) {
            let (result, elapsed) = call.await.unwrap();
            assert_eq!(result, Err(Elapsed));
            assert_eq!(elapsed, Duration::from_millis(10 * i));
        }
        tokio::time::sleep(LINGER + Duration::from_millis(5)).await;
        assert_eq!(scan(&watchdog.shared).entries, 0);
        assert!(!watchdog.shared.sweeping.load(Ordering::SeqCst), "no call waits: the sweeper ended");
    }

    #[test]
    fn a_call_on_another_runtime_is_timed_after_the_sweepers_runtime_ends() {
        let watchdog = Watchdog::new();
        let first = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let second = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        // A call on the first runtime starts the sweeper there.
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let w = watchdog.clone();
        first.spawn(async move {
            let limit = Instant::now() + std::time::Duration::from_secs(100);
            let waiting = w.limit(limit, std::future::pending::<()>());
            tokio::pin!(waiting);
            let _ = futures_poll_once(waiting.as_mut()).await;
            entered_tx.send(()).unwrap();
            waiting.await
        });
        let driver = std::thread::spawn(move || {
            first.block_on(async { tokio::time::sleep(std::time::Duration::from_millis(50)).await });
            first
        });
        entered.recv().unwrap();
        let w = watchdog.clone();
        let call = second.spawn(async move {
            let start = Instant::now();
            let limited = w.limit(start + std::time::Duration::from_millis(300), std::future::pending::<()>());
            // A runtime timer as the referee: without a sweeper the call would wait forever.
            let r = tokio::time::timeout(std::time::Duration::from_secs(5), limited).await;
            (r, start.elapsed())
        });
        drop(driver.join().unwrap());
        let (result, elapsed) = second.block_on(call).unwrap();
        assert_eq!(result, Ok(Err(Elapsed)), "the watchdog, not the referee, ended the call");
        assert!(elapsed < std::time::Duration::from_secs(2), "timed out at {elapsed:?}, not left waiting");
    }

    /// Polls `future` once.
    async fn futures_poll_once<F: Future + Unpin>(mut future: F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut future).poll(cx))).await
    }

    #[test]
    fn a_watchdog_outlives_the_runtime_of_its_sweeper() {
        let watchdog = Watchdog::new();
        for _ in 0..2 {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
            rt.block_on(async {
                let start = Instant::now();
                let limit = start + Duration::from_millis(30);
                let slow = watchdog.limit(limit, tokio::time::sleep(Duration::from_secs(60)));
                assert_eq!(slow.await, Err(Elapsed));
                assert_eq!(start.elapsed(), Duration::from_millis(30));
                // Leave a call waiting as the runtime ends: the next runtime's calls must still be timed.
                let watchdog = watchdog.clone();
                tokio::spawn(async move {
                    let _ = watchdog.limit(start + Duration::from_secs(100), std::future::pending::<()>()).await;
                });
                tokio::task::yield_now().await;
            });
        }
    }
}
