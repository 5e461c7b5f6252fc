//! The saga definition and the handler that runs a transition against the store.

use std::sync::Arc;

use chrono::Utc;
use courier_bus::{BusBuilder, Context, HandlerError};
use courier_core::{Message, SagaRecord, SagaStore, SagaTransition, SaveOutcome};
use serde::{Serialize, de::DeserializeOwned};

use crate::Actions;

/// The state of one saga instance.
pub trait SagaState: Serialize + DeserializeOwned + Default + Clone + Send + Sync + 'static {
    /// A short label for the current state (`Reserving`, `Charging`, `Completed`, `Cancelled`), shown in history
    /// and by `courier saga list`.
    fn status(&self) -> String;
    /// Whether this is a terminal state: later messages for the instance are ignored.
    fn is_finished(&self) -> bool;
}

/// How many times a transition is re-run on a fresh copy after a version conflict before the message is retried
/// through the bus's retry policy.
const MAX_CONFLICTS: u32 = 32;

type Registration = Box<dyn FnOnce(BusBuilder) -> BusBuilder + Send>;

/// A saga: a name, a store, and the transitions for each message type.
pub struct Saga<S: SagaState> {
    name: Arc<str>,
    store: Arc<dyn SagaStore>,
    registrations: Vec<Registration>,
    _state: std::marker::PhantomData<fn() -> S>,
}

impl<S: SagaState> std::fmt::Debug for Saga<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saga").field("name", &self.name).field("transitions", &self.registrations.len()).finish()
    }
}

impl<S: SagaState> Saga<S> {
    /// A saga named `name` (stable: instances are stored under it) persisted in `store`.
    pub fn new(name: impl Into<String>, store: impl SagaStore) -> Self {
        Self {
            name: Arc::from(name.into()),
            store: Arc::new(store),
            registrations: Vec::new(),
            _state: std::marker::PhantomData,
        }
    }

    /// When a message of type `M` arrives: find the instance `correlate(&message)` (creating it from
    /// `S::default()` if new) and apply `transition`. An `Err` from the transition changes nothing and is retried
    /// or dead-lettered like any handler failure.
    pub fn on<M, C, T, E>(mut self, correlate: C, transition: T) -> Self
    where
        M: Message,
        C: Fn(&M) -> String + Send + Sync + 'static,
        T: Fn(&mut S, &M, &mut Actions<'_>) -> Result<(), E> + Send + Sync + 'static,
        E: Into<HandlerError>,
    {
        let step = Arc::new(Step { name: self.name.clone(), store: self.store.clone(), correlate, transition });
        self.registrations.push(Box::new(move |builder: BusBuilder| {
            builder.consume(move |message: M, ctx: Context| {
                let step = step.clone();
                async move { step.apply(message, ctx).await }
            })
        }));
        self
    }

    /// Registers the saga's handlers on a bus builder (the saga consumes on that bus's queue).
    pub fn attach(self, mut builder: BusBuilder) -> BusBuilder {
        for register in self.registrations {
            builder = register(builder);
        }
        builder
    }
}

struct Step<C, T> {
    name: Arc<str>,
    store: Arc<dyn SagaStore>,
    correlate: C,
    transition: T,
}

impl<C, T> Step<C, T> {
    async fn apply<S, M, E>(&self, message: M, ctx: Context) -> Result<(), HandlerError>
    where
        S: SagaState,
        M: Message,
        C: Fn(&M) -> String,
        T: Fn(&mut S, &M, &mut Actions<'_>) -> Result<(), E>,
        E: Into<HandlerError>,
    {
        let id = (self.correlate)(&message);
        if id.is_empty() {
            return Err(HandlerError::permanent(format!(
                "saga '{}': {} has an empty correlation id",
                self.name,
                M::NAME
            )));
        }
        for _ in 0..MAX_CONFLICTS {
            let stored = self.store.load(&self.name, &id).await.map_err(HandlerError::transient)?;
            let (mut state, version, from_status) = match &stored {
                Some(record) if record.finished => {
                    tracing::debug!(saga = %self.name, id, message = M::NAME, "message for a finished saga ignored");
                    return Ok(());
                }
                Some(record) => {
                    let state: S = serde_json::from_str(&record.state).map_err(|e| {
                        HandlerError::permanent(format!(
                            "saga '{}' instance '{id}' has unreadable state: {e}",
                            self.name
                        ))
                    })?;
                    (state, record.version, record.status.clone())
                }
                None => (S::default(), 0, "New".to_owned()),
            };
            let mut actions = Actions::new(&ctx);
            (self.transition)(&mut state, &message, &mut actions).map_err(Into::into)?;
            let record = SagaRecord {
                saga: self.name.to_string(),
                id: id.clone(),
                state: serde_json::to_string(&state)
                    .map_err(|e| HandlerError::permanent(format!("cannot store the saga state: {e}")))?,
                status: state.status(),
                finished: state.is_finished(),
                version: version + 1,
                updated_at: Utc::now(),
            };
            let step = SagaTransition {
                message_id: ctx.message_id().to_owned(),
                message_type: M::NAME.to_owned(),
                from_status,
                to_status: record.status.clone(),
                at: Utc::now(),
            };
            match self.store.save(&record, version, &step, actions.outgoing).await.map_err(HandlerError::transient)? {
                SaveOutcome::Saved => {
                    metrics::counter!("courier_saga_transitions_total", "saga" => self.name.to_string()).increment(1);
                    return Ok(());
                }
                SaveOutcome::Duplicate => {
                    tracing::debug!(saga = %self.name, id, message = %ctx.message_id(), "duplicate message ignored");
                    return Ok(());
                }
                SaveOutcome::Conflict => {
                    metrics::counter!("courier_saga_conflicts_total", "saga" => self.name.to_string()).increment(1);
                }
            }
        }
        Err(HandlerError::transient(format!(
            "saga '{}' instance '{id}' changed under us {MAX_CONFLICTS} times in a row; will retry",
            self.name
        )))
    }
}
