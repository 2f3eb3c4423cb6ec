//! The audit trail: events in, a crash-safe journal, hourly Parquet files out.
//!
//! Every part of the agent that has something to record builds an [`Event`] and hands it to an
//! [`EventSink`]. The sink acknowledges an event once it is durable; whoever needs that guarantee
//! (a statement about to go upstream) awaits the [`Ack`].

mod event;

pub use event::{Event, EventKind};

use std::future::Future;
use std::pin::Pin;

/// Why the audit trail could not take an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The writer has stopped; nothing more can be recorded.
    #[error("the audit writer has stopped")]
    Closed,
    /// Writing or syncing the journal failed (disk full, directory unwritable).
    #[error("audit journal write failed: {0}")]
    Journal(String),
}

/// The acknowledgement of one submitted event: resolves once the event is durable or failed.
pub type Ack = Pin<Box<dyn Future<Output = Result<(), AuditError>> + Send>>;

/// Where events go. Implemented by the audit writer; a logging sink stands in where no writer runs.
pub trait EventSink: Send + Sync + 'static {
    /// Takes an event; the returned [`Ack`] resolves when it is durable. Dropping the ack is fine for
    /// callers that do not need to wait.
    fn submit(&self, event: Event) -> Ack;
}

/// A sink that writes each event to the log and acknowledges at once; for tools and tests that run
/// without an audit directory.
#[derive(Debug, Default, Clone)]
pub struct LogSink;

impl EventSink for LogSink {
    fn submit(&self, event: Event) -> Ack {
        match serde_json::to_string(&event) {
            Ok(line) => tracing::info!(target: "snowtrail::audit", event = %line, "audit event"),
            Err(e) => tracing::warn!(error = %e, "audit event could not be serialised"),
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

/// The `[audit]` section (provisional: the writer defines the full set).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// How long events wait for a shared fsync.
    pub batch_window_ms: u64,
}

/// What happens to statements while the audit cannot be written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnAuditFailure {
    /// Refuse statements until the writer recovers.
    #[default]
    Block,
    /// Let statements through and record the gap.
    Allow,
}
