//! Watches the consumers settle deliveries: which orders are done, and which were dead-lettered.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use courier::{BusObserver, Consumed, Message, Outcome};
use uuid::Uuid;

use super::order::OrderPlaced;

/// The consumers whose settlements complete an order, as bits.
const SERVICES: [(&str, u8); 2] = [(super::SHIPPING, 1), (super::EMAIL, 2)];
const ALL_SERVICES: u8 = 3;

/// A [`BusObserver`] on the Shipping and Email buses: counts deliveries of this run's orders that were handled or
/// dead-lettered (retries settle later, so they do not count).
#[derive(Debug)]
pub(crate) struct Tracker {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Which services settled each order of this run at least once.
    settled_by: HashMap<Uuid, u8>,
    /// Deliveries settled (handled or dead-lettered), duplicates included.
    deliveries: u64,
    /// Orders every service settled.
    completed: u64,
    /// Orders with at least one dead-lettered message.
    dead_orders: HashSet<Uuid>,
    /// Dead-lettered messages.
    dead_messages: u64,
}

/// A snapshot of a [`Tracker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Deliveries settled.
    pub(crate) deliveries: u64,
    /// Orders every service settled.
    pub(crate) completed: u64,
    /// Orders with a dead-lettered message.
    pub(crate) dead_orders: u64,
    /// Dead-lettered messages.
    pub(crate) dead_messages: u64,
}

impl Tracker {
    /// Tracks the orders in `orders` (deliveries of any other order, e.g. left over from an earlier run, are ignored).
    pub(crate) fn new(orders: &HashSet<Uuid>) -> Self {
        let settled_by = orders.iter().map(|id| (*id, 0)).collect();
        Self { state: Mutex::new(State { settled_by, ..State::default() }) }
    }

    /// The counts so far.
    pub(crate) fn progress(&self) -> Progress {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Progress {
            deliveries: s.deliveries,
            completed: s.completed,
            dead_orders: s.dead_orders.len() as u64,
            dead_messages: s.dead_messages,
        }
    }
}

impl BusObserver for Tracker {
    fn consumed(&self, event: &Consumed) {
        let dead = match event.outcome {
            Outcome::Handled => false,
            Outcome::DeadLettered { .. } => true,
            Outcome::Redelivered { .. } | Outcome::Released => return,
        };
        let Some(envelope) = event.envelope.as_ref().filter(|e| e.message_type == OrderPlaced::NAME) else { return };
        let Ok(order) = envelope.decode::<OrderPlaced>() else { return };
        let Some(bit) = SERVICES.iter().find(|(q, _)| *q == event.queue).map(|(_, bit)| *bit) else { return };
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = &mut *guard;
        let Some(mask) = state.settled_by.get_mut(&order.order_id) else { return };
        let was_complete = *mask == ALL_SERVICES;
        *mask |= bit;
        if !was_complete && *mask == ALL_SERVICES {
            state.completed += 1;
        }
        state.deliveries += 1;
        if dead {
            state.dead_messages += 1;
            state.dead_orders.insert(order.order_id);
        }
    }
}
