//! The messages the conformance cases exchange. Each carries the id of the case run that sent it, so a case on a
//! shared engine ignores messages from other runs that reach its queues by fan-out.

use courier_macros::Message;
use serde::{Deserialize, Serialize};

/// A message that names the case run that sent it.
pub(crate) trait Tagged {
    /// The run id.
    fn run(&self) -> &str;
}

macro_rules! tagged {
    ($($ty:ty),* $(,)?) => {
        $(impl Tagged for $ty {
            fn run(&self) -> &str {
                &self.run
            }
        })*
    };
}

tagged!(Job, FanOutEvent, ScheduledEvent, TraceStarted, TraceContinued, Blob, Counted);

/// A command with a number, the suite's general-purpose message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[message(name = "courier.conformance.job.v1", crate = "courier_core")]
pub(crate) struct Job {
    pub(crate) run: String,
    pub(crate) n: u64,
}

/// An event for the fan-out case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[message(name = "courier.conformance.fanned-out.v1", crate = "courier_core")]
pub(crate) struct FanOutEvent {
    pub(crate) run: String,
    pub(crate) n: u64,
}

/// An event for the scheduled-delivery cases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[message(name = "courier.conformance.scheduled.v1", crate = "courier_core")]
pub(crate) struct ScheduledEvent {
    pub(crate) run: String,
}

/// The first event of the trace-propagation case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[message(name = "courier.conformance.trace-started.v1", crate = "courier_core")]
pub(crate) struct TraceStarted {
    pub(crate) run: String,
}

/// The event a handler of [`TraceStarted`] publishes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[message(name = "courier.conformance.trace-continued.v1", crate = "courier_core")]
pub(crate) struct TraceContinued {
    pub(crate) run: String,
}

/// A large payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[message(name = "courier.conformance.blob.v1", crate = "courier_core")]
pub(crate) struct Blob {
    pub(crate) run: String,
    pub(crate) data: String,
}

/// A numbered message for the exactly-once case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[message(name = "courier.conformance.counted.v1", crate = "courier_core")]
pub(crate) struct Counted {
    pub(crate) run: String,
    pub(crate) seq: u64,
}

/// A request answered with a [`Sum`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[message(name = "courier.conformance.add.v1", response = "Sum", crate = "courier_core")]
pub(crate) struct Add {
    pub(crate) a: i64,
    pub(crate) b: i64,
}

/// The reply to [`Add`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[message(name = "courier.conformance.sum.v1", crate = "courier_core")]
pub(crate) struct Sum {
    pub(crate) value: i64,
}

/// A request whose handler always fails permanently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[message(name = "courier.conformance.explode.v1", response = "Sum", crate = "courier_core")]
pub(crate) struct Explode {
    pub(crate) why: String,
}

/// A type no consumer in the suite handles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[message(name = "courier.conformance.unknown.v1", crate = "courier_core")]
pub(crate) struct Unknown {
    pub(crate) run: String,
}
