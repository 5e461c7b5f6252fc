//! Where handlers run: the consumer polls each handling once on its own loop and hands it to a task only if it
//! waits; a handler that computes for long before its first wait sends the following deliveries straight to tasks.
//! These tests pin down what users can rely on either way: the concurrency limit is used, order holds with a
//! concurrency of 1, and CPU-bound handlers still run in parallel.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_bus::{Bus, Context, HandlerError, MemoryTransport};
use courier_core::{Json, Message};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    n: u64,
}

impl Message for Job {
    const NAME: &'static str = "test.scheduling.job.v1";
    type Codec = Json;
}

/// How many handlers run at once, the most seen, the order they started in, and a wake-up once `expected` ended.
#[derive(Default)]
struct Observed {
    running: AtomicUsize,
    most: AtomicUsize,
    ended: AtomicUsize,
    started: Mutex<Vec<u64>>,
    all_ended: Notify,
}

impl Observed {
    fn start(&self, n: u64) {
        self.started.lock().unwrap().push(n);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
    }

    fn end(&self, expected: usize) {
        self.running.fetch_sub(1, Ordering::SeqCst);
        if self.ended.fetch_add(1, Ordering::SeqCst) + 1 == expected {
            self.all_ended.notify_one();
        }
    }

    async fn wait_all(&self, expected: usize) {
        let all = self.all_ended.notified();
        if self.ended.load(Ordering::SeqCst) < expected {
            tokio::time::timeout(Duration::from_secs(20), all).await.expect("every message handled within 20 s");
        }
    }
}

/// Sends `jobs` jobs to a fresh queue on a private broker, then starts a consumer with `concurrency` whose handler
/// runs `work(n)` for job `n`; returns what it observed once every job was handled and the consumer shut down.
async fn observe<W, Fut>(jobs: u64, concurrency: usize, work: W) -> Arc<Observed>
where
    W: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    observe_with(jobs, concurrency, Vec::new(), work).await
}

/// [`observe`], with bus observers.
async fn observe_with<W, Fut>(
    jobs: u64,
    concurrency: usize,
    observers: Vec<Arc<dyn courier_bus::BusObserver>>,
    work: W,
) -> Arc<Observed>
where
    W: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let engine = MemoryTransport::new().into_engine();
    let sender = Bus::builder("sender").engine_instance(engine.clone()).start().await.expect("sender");
    for n in 0..jobs {
        sender.send("jobs", Job { n }).await.expect("send");
    }
    let seen = Arc::new(Observed::default());
    let s = seen.clone();
    let mut builder = Bus::builder("jobs").engine_instance(engine).prefetch(64).concurrency(concurrency);
    for observer in observers {
        builder = builder.observer(observer);
    }
    let bus = builder
        .consume(move |job: Job, _ctx: Context| {
            let (s, work) = (s.clone(), work.clone());
            async move {
                s.start(job.n);
                work(job.n).await;
                s.end(jobs as usize);
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await
        .expect("consumer");
    seen.wait_all(jobs as usize).await;
    bus.shutdown().await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handlers_that_block_the_thread_still_run_in_parallel() {
    // CPU-bound work (or a blocking call) before any wait: each handler's first poll takes 30 ms.
    let seen = observe(12, 4, |_| async { std::thread::sleep(Duration::from_millis(30)) }).await;
    let most = seen.most.load(Ordering::SeqCst);
    assert!(most >= 2, "blocking handlers ran one at a time (at most {most} at once) with a concurrency of 4");
    assert!(most <= 4, "{most} handlers ran at once, over the concurrency of 4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_that_wait_fill_the_concurrency_limit() {
    let seen = observe(24, 8, |_| tokio::time::sleep(Duration::from_millis(50))).await;
    let most = seen.most.load(Ordering::SeqCst);
    assert_eq!(most, 8, "handlers that wait should run 8 at once with a concurrency of 8, saw at most {most}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_of_one_handles_in_queue_order() {
    const JOBS: u64 = 300;
    // Every tenth waits, so both paths (finished at the first poll, and continued as a task) are taken.
    let seen = observe(JOBS, 1, |n| async move {
        if n % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert_eq!(seen.most.load(Ordering::SeqCst), 1, "a concurrency of 1 ran two handlers at once");
    let started = seen.started.lock().unwrap().clone();
    assert_eq!(started, (0..JOBS).collect::<Vec<_>>(), "a concurrency of 1 should handle in queue order");
}

/// Panics when told the first message was handled.
#[derive(Debug)]
struct PanickyObserver;

impl courier_bus::BusObserver for PanickyObserver {
    fn consumed(&self, event: &courier_bus::Consumed) {
        let first = event.envelope.as_ref().and_then(|e| e.decode::<Job>().ok()).is_some_and(|job| job.n == 0);
        if first && event.outcome == courier_bus::Outcome::Handled {
            panic!("observer failed");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_outside_the_handler_does_not_stop_the_consumer() {
    const JOBS: u64 = 20;
    // `observe` waits until every job was handled (or fails after 20 s).
    let seen = observe_with(JOBS, 4, vec![Arc::new(PanickyObserver)], |_| async {}).await;
    assert_eq!(
        seen.ended.load(Ordering::SeqCst),
        JOBS as usize,
        "every message is handled although an observer panicked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_messages_are_in_hand_than_the_prefetch() {
    const JOBS: u64 = 60;
    const PREFETCH: usize = 8;
    let engine = MemoryTransport::new().into_engine();
    let sender = Bus::builder("sender").engine_instance(engine.clone()).start().await.expect("sender");
    for n in 0..JOBS {
        sender.send("jobs", Job { n }).await.expect("send");
    }
    let seen = Arc::new(Observed::default());
    // Every third job waits until released; the others finish at their first poll. Once the waiting ones fill the
    // prefetch, the consumer may take nothing more, however many handlers the concurrency would allow.
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let (s, r) = (seen.clone(), release.clone());
    let bus = Bus::builder("jobs")
        .engine_instance(engine)
        .prefetch(PREFETCH)
        .concurrency(100)
        .consume(move |job: Job, _ctx: Context| {
            let (s, r) = (s.clone(), r.clone());
            async move {
                s.start(job.n);
                if job.n.is_multiple_of(3) {
                    r.acquire().await.expect("released").forget();
                }
                s.end(JOBS as usize);
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await
        .expect("consumer");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.running.load(Ordering::SeqCst) < PREFETCH && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Give the consumer time to (wrongly) take more.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (running, started) = (seen.running.load(Ordering::SeqCst), seen.started.lock().unwrap().len());
    assert_eq!(running, PREFETCH, "with {PREFETCH} waiting handlers in hand, {running} run ({started} started)");
    release.add_permits(JOBS as usize);
    seen.wait_all(JOBS as usize).await;
    bus.shutdown().await;
    let most = seen.most.load(Ordering::SeqCst);
    assert!(most <= PREFETCH, "{most} messages were in hand at once with a prefetch of {PREFETCH}");
}

/// A transport that hands out more deliveries than asked for (`EXTRA` more a batch), as a careless engine might.
#[derive(Debug)]
struct Generous(Arc<dyn courier_core::Transport>);

/// A subscription of [`Generous`].
#[derive(Debug)]
struct GenerousSubscription(Box<dyn courier_core::Subscription>);

const EXTRA: usize = 3;

#[async_trait::async_trait]
impl courier_core::Subscription for GenerousSubscription {
    async fn next_batch(&mut self, max: usize) -> courier_core::Result<Vec<courier_core::Delivery>> {
        self.0.next_batch(max + EXTRA).await
    }
    async fn close(&mut self) {
        self.0.close().await
    }
}

#[async_trait::async_trait]
impl courier_core::Transport for Generous {
    async fn declare_queue(&self, queue: &str) -> courier_core::Result<()> {
        self.0.declare_queue(queue).await
    }
    async fn bind(&self, queue: &str, message_type: &str) -> courier_core::Result<()> {
        self.0.bind(queue, message_type).await
    }
    async fn delete_queue(&self, queue: &str) -> courier_core::Result<()> {
        self.0.delete_queue(queue).await
    }
    async fn publish(
        &self,
        message: courier_core::RawMessage,
        at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> courier_core::Result<()> {
        self.0.publish(message, at).await
    }
    async fn send(
        &self,
        queue: &str,
        message: courier_core::RawMessage,
        at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> courier_core::Result<()> {
        self.0.send(queue, message, at).await
    }
    async fn subscribe(
        &self,
        queue: &str,
        options: courier_core::SubscriptionOptions,
    ) -> courier_core::Result<Box<dyn courier_core::Subscription>> {
        Ok(Box::new(GenerousSubscription(self.0.subscribe(queue, options).await?)))
    }
    async fn flush(&self) -> courier_core::Result<()> {
        self.0.flush().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_that_hands_out_more_than_asked_neither_stalls_nor_overfills_the_consumer() {
    const JOBS: u64 = 200;
    const PREFETCH: usize = 4;
    let memory = MemoryTransport::new().into_engine();
    let engine = courier_core::Engine { transport: Arc::new(Generous(memory.transport.clone())), admin: memory.admin };
    let sender = Bus::builder("sender").engine_instance(engine.clone()).start().await.expect("sender");
    for n in 0..JOBS {
        sender.send("jobs", Job { n }).await.expect("send");
    }
    let seen = Arc::new(Observed::default());
    let s = seen.clone();
    let bus = Bus::builder("jobs")
        .engine_instance(engine)
        .prefetch(PREFETCH)
        .concurrency(100)
        .consume(move |job: Job, _ctx: Context| {
            let s = s.clone();
            async move {
                s.start(job.n);
                // Most finish at their first poll; every tenth waits, so both kinds hold permits.
                if job.n.is_multiple_of(10) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                s.end(JOBS as usize);
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await
        .expect("consumer");
    seen.wait_all(JOBS as usize).await;
    tokio::time::timeout(Duration::from_secs(10), bus.shutdown()).await.expect("the consumer shuts down");
    let most = seen.most.load(Ordering::SeqCst);
    assert!(most <= PREFETCH, "{most} handlers ran at once with a prefetch of {PREFETCH}");
}
