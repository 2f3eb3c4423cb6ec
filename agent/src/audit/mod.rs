//! The audit trail: events in, a crash-safe journal, hourly Parquet files out.
//!
//! Every part of the agent that has something to record builds an [`Event`] and hands it to an
//! [`EventSink`]. The sink acknowledges an event once it is durable; whoever needs that guarantee
//! (a statement about to go upstream) awaits the [`Ack`]. The promise: every event the agent
//! acknowledges ends up in exactly one Parquet file, whatever happens to the process.
//!
//! A statement is recorded in two steps but is one row (docs/decisions.md §10–12). Before it goes
//! upstream the proxy submits its *intent* ([`EventSink::submit_intent`]) and, with
//! `durability = "before_forward"`, awaits its acknowledgement; when the response comes back it
//! submits the *completion* ([`EventSink::submit`], same `event_id` and `event_time`) and does not
//! wait. The completion is the statement's row. An intent that is never completed (the agent
//! crashed or stopped first, or the intent waited past `intent_timeout_s` or was the oldest beyond
//! `max_pending_intents`) is written as it is, with the flag `outcome_unknown`; a completion that
//! comes after that is refused ([`AuditError::IntentExpired`]). Either way one row, exactly once:
//! the journal records both kinds, and the writer and recovery pair them by `event_id` in journal
//! order (`recovery` has the argument).
//!
//! Files, one concern each:
//! - `event`: the row ([`Event`], [`EventKind`]); `vocabulary`: the values of the flags,
//!   decision, close reason, lifecycle action and connection mode columns as types, each with its
//!   one stable text; `connection`: the who/where columns a connection shares with the events of
//!   its exchanges ([`ConnectionIdentity`]); `schema`: the Arrow schema, its documentation
//!   (with OCSF Datastore Activity names) and the Event ↔ Arrow conversion;
//! - `journal`: the write-ahead journal's format (event and intent records), in the frames of
//!   `frame` (length, CRC-32, head, body), which the recordings' spools are made of too; `files`: Parquet
//!   layout and naming; `publish`: the atomic publish (temporary name, fsync, digest-log record,
//!   rename without replacing, directory fsync) the audit and the recordings tables share;
//! - `recovery`: journal → Parquet at start (pairing intents with completions), and the
//!   exactly-once argument;
//! - `writer`: [`AuditWriter`] and its threads (group commit, rotation, pending intents, failure
//!   handling);
//! - `digest`: signed digests (tamper evidence): the format, the host's Ed25519 key, naming;
//!   `digest_log`: the writer's side (files closed since the last digest, the chain head, writing
//!   a digest on an interval, at shutdown, and after a crash); `digest_verify`: walking the chains;
//! - `clock`, `config`: injected time and the `[audit]` settings; `error`: [`AuditError`] and its
//!   typed causes;
//! - `readback`: the audit read back for people: the `audit ls|tail|verify` and `replay` commands
//!   as library functions.
//!
//! Not here: redaction of secrets (done before an event is built), shipping files elsewhere, and
//! retention.

mod clock;
mod config;
mod connection;
pub mod digest;
pub mod digest_log;
pub mod digest_verify;
mod error;
mod event;
pub mod files;
pub mod frame;
pub mod journal;
pub mod publish;
pub mod readback;
pub mod recovery;
pub mod schema;
pub mod vocabulary;
mod writer;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{
    AuditConfig, DEFAULT_BATCH_WINDOW_MS, DEFAULT_CHANNEL_CAPACITY, DEFAULT_INTENT_TIMEOUT_S,
    DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PENDING_INTENTS, DEFAULT_MAX_SQL_BYTES,
    DEFAULT_ROW_GROUP_ROWS, DEFAULT_SEGMENT_BYTES, Durability, MIN_MAX_SQL_BYTES, OnAuditFailure,
};
pub use connection::ConnectionIdentity;
pub use error::{AuditError, JournalFailure, Shared, StartFailure, WriterFailure};
pub use event::{Event, EventKind};
pub use recovery::RecoveryReport;
pub use vocabulary::{
    CloseReason, ConnectionMode, Decision, Flag, LifecycleAction, RecordingStatus, Term,
    UnknownTerm,
};
pub use writer::{AuditWriter, ShutdownReport, WriterOptions, WriterStats, WriterTask};

use std::future::Future;
use std::pin::Pin;

/// The acknowledgement of one submitted event: resolves once the event is durable or failed.
pub type Ack = Pin<Box<dyn Future<Output = Result<(), AuditError>> + Send>>;

/// Where events go. Implemented by the audit writer; a logging sink stands in where no writer runs.
pub trait EventSink: Send + Sync + 'static {
    /// Takes a complete event; the returned [`Ack`] resolves when it is durable. If an intent with
    /// the same `event_id` is pending, this event completes it: the event is the statement's one
    /// row. Dropping the ack is fine for callers that do not need to wait.
    fn submit(&self, event: Event) -> Ack;

    /// Journals `event` as a statement's intent; the [`Ack`] resolves when it is durable (what
    /// `durability = "before_forward"` waits for before the statement goes upstream). No row is
    /// written for it while it is pending: the complete event submitted later with the same
    /// `event_id` is the row. An intent never completed (the agent crashed or stopped first, it
    /// waited longer than `intent_timeout_s`, or it was the oldest beyond `max_pending_intents`) is
    /// written as it is, with the flag `outcome_unknown`. Submitting an intent again while it is
    /// pending replaces it.
    fn submit_intent(&self, event: Event) -> Ack;

    /// Whether the sink can record events now; the proxy refuses statements while it cannot
    /// (`on_audit_failure = "block"`).
    fn healthy(&self) -> bool {
        true
    }
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

    fn submit_intent(&self, event: Event) -> Ack {
        match serde_json::to_string(&event) {
            Ok(line) => tracing::debug!(target: "snowtrail::audit", event = %line, "audit intent"),
            Err(e) => tracing::warn!(error = %e, "audit intent could not be serialised"),
        }
        Box::pin(std::future::ready(Ok(())))
    }
}
