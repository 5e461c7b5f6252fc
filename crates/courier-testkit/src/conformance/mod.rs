//! The transport conformance suite: what every engine must do, checked through the bus as users drive it.
//!
//! An engine passes by running [`conformance_tests!`](crate::conformance_tests) in a test file, with a factory
//! that returns a fresh [`Engine`]:
//!
//! ```
//! // tests/conformance.rs of an engine crate
//! use courier_bus::MemoryTransport;
//!
//! courier_testkit::conformance_tests!(|| async { MemoryTransport::new().into_engine() });
//! # fn main() {}
//! ```
//!
//! This expands to one `#[test]` per case (named after the case, so each is reported on its own), each running its
//! case from [`cases`] on a fresh multi-threaded Tokio runtime with two workers (see [`run_case`]).
//!
//! # What the cases assume
//!
//! - The factory may return a handle to shared, durable state (one database file, one broker): every case names
//!   its queues and services uniquely (`ct-<case>-<random>`), tags its messages with a run id and ignores other
//!   runs' messages, and on success purges its dead letters and deletes its queues.
//! - Every wait has a deadline ([`WAIT`], or no progress for [`WAIT`] in the at-scale case), so a broken engine
//!   fails with a message instead of hanging. No case asserts that anything is fast; the timing cases assert only
//!   that nothing happens *before* it should, less [`CLOCK_TOLERANCE`] for engines that keep times in
//!   milliseconds.
//! - The cases that drop or cut off a delivery (ack/release, the shutdown cases) take messages with a 2 s
//!   [`VISIBILITY_TIMEOUT`], so an engine that redelivers by lease rather than by an explicit release still passes
//!   within the deadline. The other cases keep the default (30 s), so a slow machine does not cause redeliveries
//!   the exactly-once checks would count as duplicates.

pub mod cases;
mod messages;
mod support;

use std::future::Future;
use std::time::Duration;

use courier_core::Engine;

/// How long any single wait in the suite lasts before the case fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// How much earlier than asked a delayed or scheduled message may arrive: engines store delivery times in whole
/// milliseconds, and the test's clock and the engine's are read at slightly different moments.
pub const CLOCK_TOLERANCE: Duration = Duration::from_millis(5);

/// The visibility timeout of the cases that drop or cut off deliveries (see the [module docs](self)).
pub const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest a whole case may run before it is failed as hung.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs one case: builds a multi-threaded Tokio runtime with two workers, makes an engine with `factory`, and runs
/// `case` on it, failing the case if it runs longer than [`CASE_TIMEOUT`].
///
/// This is what [`conformance_tests!`](crate::conformance_tests) calls; call it directly for a parameterised case:
///
/// ```no_run
/// use courier_bus::MemoryTransport;
/// use courier_testkit::conformance::{cases, run_case};
///
/// #[test]
/// fn exactly_once_8_consumers_10k_messages() {
///     run_case(
///         || async { MemoryTransport::new().into_engine() },
///         |engine| cases::exactly_once_at_scale(engine, 8, 10_000),
///     );
/// }
/// # fn main() {}
/// ```
pub fn run_case<F, FFut, C, CFut>(factory: F, case: C)
where
    F: FnOnce() -> FFut,
    FFut: Future<Output = Engine>,
    C: FnOnce(Engine) -> CFut,
    CFut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot build a Tokio runtime for the conformance case");
    runtime.block_on(async {
        let engine = factory().await;
        if tokio::time::timeout(CASE_TIMEOUT, case(engine)).await.is_err() {
            panic!("the case did not finish within {CASE_TIMEOUT:?}: something hangs");
        }
    });
}

/// Expands to one `#[test]` per conformance case, each running the case on an engine from `factory` (an
/// expression evaluating to something callable as `factory().await -> Engine`, such as `|| async { .. }`, an
/// async closure, or the name of an `async fn`).
///
/// For an engine with a server, add `requires = courier_testkit::services::NATS` (or another
/// [`Service`](crate::services::Service)): each test then skips with one line when the server is unreachable, or
/// fails when `CI=true`.
///
/// Invoke it once per module: the tests are named after the cases (`fan_out`, `request_response`, ...).
/// The at-scale case runs with 4 consumers and 1,000 messages; call
/// [`cases::exactly_once_at_scale`](crate::conformance::cases::exactly_once_at_scale) through
/// [`run_case`](crate::conformance::run_case) for a bigger run.
///
/// ```
/// use courier_bus::MemoryTransport;
///
/// async fn engine() -> courier_core::Engine {
///     MemoryTransport::new().into_engine()
/// }
///
/// courier_testkit::conformance_tests!(engine);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! conformance_tests {
    (@cases $factory:expr, $service:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                if let ::core::option::Option::Some(service) = $service {
                    if !$crate::services::Service::require(&service) {
                        return;
                    }
                }
                $crate::conformance::run_case($factory, $crate::conformance::cases::$case);
            }
        )*
    };
    ($factory:expr, requires = $service:expr $(,)?) => {
        $crate::conformance_tests!(@list $factory, ::core::option::Option::Some($service));
    };
    ($factory:expr $(,)?) => {
        $crate::conformance_tests!(@list $factory, ::core::option::Option::<$crate::services::Service>::None);
    };
    (@list $factory:expr, $service:expr) => {
        $crate::conformance_tests!(@cases $factory, $service;
            fan_out,
            competing_consumers,
            ack_nack_release,
            delayed_redelivery,
            dead_letter_after_max_attempts,
            request_response,
            request_to_failing_handler_fails_fast,
            request_without_consumer_times_out,
            scheduled_publish,
            scheduled_send,
            undecodable_messages_are_dead_lettered,
            shutdown_finishes_in_flight_work,
            shutdown_timeout_releases_message,
            large_payload_round_trips,
            trace_context_propagates,
            exactly_once_at_scale_small,
        );
    };
}
