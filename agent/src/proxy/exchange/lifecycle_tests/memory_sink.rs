//! An [`EventSink`] that keeps every event in memory, so a test can read back exactly what the
//! audit would have written: completions (the rows) and intents apart.

use std::sync::Mutex;

use crate::audit::{Ack, Event, EventKind, EventSink};
use crate::sync::lock;

/// Every event and intent submitted, in order.
#[derive(Default)]
pub(super) struct MemorySink {
    events: Mutex<Vec<Event>>,
    intents: Mutex<Vec<Event>>,
}

impl MemorySink {
    /// The events submitted as rows, in order.
    pub(super) fn events(&self) -> Vec<Event> {
        lock(&self.events).clone()
    }

    /// The rows of one kind, in order.
    pub(super) fn of_kind(&self, kind: EventKind) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|e| e.event_kind == kind)
            .collect()
    }

    /// The statements' rows (`event_kind = query`), in order.
    pub(super) fn queries(&self) -> Vec<Event> {
        self.of_kind(EventKind::Query)
    }

    /// The intents journaled before statements were forwarded, in order.
    pub(super) fn intents(&self) -> Vec<Event> {
        lock(&self.intents).clone()
    }
}

impl EventSink for MemorySink {
    fn submit(&self, event: Event) -> Ack {
        lock(&self.events).push(event);
        Box::pin(std::future::ready(Ok(())))
    }

    fn submit_intent(&self, event: Event) -> Ack {
        lock(&self.intents).push(event);
        Box::pin(std::future::ready(Ok(())))
    }
}
