//! What a transition may do besides changing state: publish, send and schedule messages, committed with the state.

use std::time::Duration;

use chrono::Utc;
use courier_bus::Context;
use courier_core::{Envelope, Message, OutboxDestination, Result, SagaOutgoing};

/// Messages a transition sends. They are stored with the new state in one transaction and delivered by the outbox
/// relay, carrying the triggering message's correlation id, causation and trace.
#[derive(Debug)]
pub struct Actions<'a> {
    ctx: &'a Context,
    pub(crate) outgoing: Vec<SagaOutgoing>,
}

impl<'a> Actions<'a> {
    pub(crate) fn new(ctx: &'a Context) -> Self {
        Self { ctx, outgoing: Vec::new() }
    }

    fn envelope<M: Message>(&self, message: &M) -> Result<Envelope> {
        let mut envelope = Envelope::for_message(self.ctx.bus().service(), message)?;
        envelope.correlation_id = Some(self.ctx.correlation_id().to_owned());
        envelope.causation_id = Some(self.ctx.message_id().to_owned());
        envelope.traceparent = Some(self.ctx.trace().child().to_string());
        Ok(envelope)
    }

    fn push(&mut self, destination: OutboxDestination, envelope: Envelope, delay: Option<Duration>) {
        let deliver_at = delay.and_then(|d| chrono::Duration::from_std(d).ok()).map(|d| Utc::now() + d);
        self.outgoing.push(SagaOutgoing { destination, message: envelope.into_raw(), deliver_at });
    }

    /// Publishes an event.
    pub fn publish<M: Message>(&mut self, message: &M) -> Result<()> {
        let envelope = self.envelope(message)?;
        self.push(OutboxDestination::Publish, envelope, None);
        Ok(())
    }

    /// Sends a command to `endpoint`.
    pub fn send<M: Message>(&mut self, endpoint: &str, message: &M) -> Result<()> {
        let envelope = self.envelope(message)?;
        self.push(OutboxDestination::Send(endpoint.to_owned()), envelope, None);
        Ok(())
    }

    /// Publishes `message` after `delay`: how a saga sets a timeout (handle the message as a transition that checks
    /// whether the awaited step happened meanwhile).
    pub fn schedule<M: Message>(&mut self, delay: Duration, message: &M) -> Result<()> {
        let envelope = self.envelope(message)?;
        self.push(OutboxDestination::Publish, envelope, Some(delay));
        Ok(())
    }

    /// Sends `message` to `endpoint` after `delay`.
    pub fn schedule_send<M: Message>(&mut self, endpoint: &str, delay: Duration, message: &M) -> Result<()> {
        let envelope = self.envelope(message)?;
        self.push(OutboxDestination::Send(endpoint.to_owned()), envelope, Some(delay));
        Ok(())
    }

    /// The context of the message being handled.
    pub fn context(&self) -> &Context {
        self.ctx
    }
}
