//! The conformance cases, one `async fn(Engine)` each (plus the parameterised [`exactly_once_at_scale`]).
//!
//! Each panics with a message saying what was expected and what happened when the engine falls short.
//!
//! | case | checks |
//! |---|---|
//! | [`fan_out`] | a published event reaches every subscribing service's queue, once each |
//! | [`competing_consumers`] | two buses on one queue share the messages, each handled once, both get some |
//! | [`ack_nack_release`] | an acked message is gone; a retried one comes back counted; a released one uncounted; a dropped one comes back |
//! | [`delayed_redelivery`] | a failing handler sees attempts 1, 2, 3 no sooner than the backoff allows, then succeeds |
//! | [`dead_letter_after_max_attempts`] | after its attempts a message is dead-lettered with its annotations; a replay handles it afresh |
//! | [`request_response`] | `request` gets the handler's `ctx.reply`, concurrent requests each get their own |
//! | [`request_to_failing_handler_fails_fast`] | a request whose handler fails permanently errors at once, not by timeout |
//! | [`request_without_consumer_times_out`] | a request nobody answers times out with a clear error |
//! | [`scheduled_publish`] / [`scheduled_send`] | a scheduled message is not handled before its time, and is handled after |
//! | [`undecodable_messages_are_dead_lettered`] | bad headers, a bad body and an unknown type are dead-lettered with their reason; the consumer goes on |
//! | [`shutdown_finishes_in_flight_work`] | shutdown lets an in-flight handler finish and ack; unstarted messages go to the next bus |
//! | [`shutdown_timeout_releases_message`] | a handler outliving the shutdown timeout is cut off and its message redelivered |
//! | [`large_payload_round_trips`] | a 1 MiB body arrives intact |
//! | [`trace_context_propagates`] | correlation, causation and the W3C trace id flow from a handler's publish to the next handler |
//! | [`exactly_once_at_scale`] | N consumers share M messages: none lost, none handled twice |

mod delivery;
mod failure;
mod payload;
mod request;
mod scale;
mod schedule;
mod shutdown;

pub use self::delivery::{ack_nack_release, competing_consumers, fan_out};
pub use self::failure::{dead_letter_after_max_attempts, delayed_redelivery, undecodable_messages_are_dead_lettered};
pub use self::payload::{large_payload_round_trips, trace_context_propagates};
pub use self::request::{request_response, request_to_failing_handler_fails_fast, request_without_consumer_times_out};
pub use self::scale::{exactly_once_at_scale, exactly_once_at_scale_small};
pub use self::schedule::{scheduled_publish, scheduled_send};
pub use self::shutdown::{shutdown_finishes_in_flight_work, shutdown_timeout_releases_message};
