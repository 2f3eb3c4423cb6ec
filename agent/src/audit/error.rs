//! Why the audit trail could not take an event, start or stop: [`AuditError`] and the typed causes
//! it carries.
//!
//! One failure often fails many events at once (every event waiting on a failed fdatasync), so
//! each acknowledgement gets a clone: the causes are shared ([`Shared`]) rather than copied into
//! text. The messages are those the writer has always given.

use std::fmt;
use std::io;
use std::sync::Arc;

use super::digest::DigestError;
use super::journal::JournalError;
use super::recovery::RecoveryError;

/// Why the audit trail could not take an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The writer has stopped; nothing more can be recorded.
    #[error("the audit writer has stopped")]
    Closed,
    /// Writing or syncing the journal failed (disk full, directory unwritable).
    #[error("audit journal write failed: {0}")]
    Journal(#[source] JournalFailure),
    /// Start-up could not open the journal or turn what it held into Parquet.
    #[error("audit recovery failed: {0}")]
    Recovery(#[source] StartFailure),
    /// A writer thread died or could not be started (a bug or resource exhaustion).
    #[error("audit writer failed: {0}")]
    Internal(#[source] WriterFailure),
    /// A completion (or the intent again) came for an intent the writer had already written with
    /// `outcome_unknown` (it waited longer than `intent_timeout_s`, or was the oldest beyond
    /// `max_pending_intents`); the statement keeps that row and this event is not recorded.
    #[error("the statement's intent was already recorded with outcome_unknown")]
    IntentExpired,
}

/// Why the journal did not make an event durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JournalFailure {
    /// The fdatasync covering the event failed.
    #[error("fdatasync: {0}")]
    Sync(#[source] Shared<io::Error>),
    /// Appending to the segment failed.
    #[error("write: {0}")]
    Write(#[source] Shared<io::Error>),
    /// No segment was open to append to.
    #[error("the journal is not open")]
    NotOpen,
    /// The journal failed earlier and could not be reopened.
    #[error("the journal is not writable")]
    NotWritable,
    /// The event could not be encoded as a record.
    #[error(transparent)]
    Encode(Shared<JournalError>),
    /// The event was written after a failure the journal is cut back from, before any sync.
    #[error("the journal failed before this event was synced")]
    Unsynced,
}

/// Why the writer could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StartFailure {
    /// The journal could not be opened or a segment created.
    #[error(transparent)]
    Journal(Shared<JournalError>),
    /// The digest log could not be opened.
    #[error(transparent)]
    Digest(Shared<DigestError>),
    /// What the journal held could not be turned into Parquet.
    #[error(transparent)]
    Recovery(Shared<RecoveryError>),
    /// The new segment could not be opened for syncing.
    #[error(transparent)]
    Io(Shared<io::Error>),
    /// The blocking task that starts the writer failed.
    #[error("start-up task failed: {0}")]
    Task(#[source] Shared<tokio::task::JoinError>),
}

/// Why a writer thread failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriterFailure {
    /// A thread of the writer panicked (`journal`, `sync` or `parquet`).
    #[error("audit {0} thread panicked")]
    Panicked(&'static str),
    /// A thread could not be started.
    #[error("cannot start audit thread: {0}")]
    Spawn(#[source] Shared<io::Error>),
    /// The blocking task that stops the writer failed.
    #[error("shutdown task failed: {0}")]
    Task(#[source] Shared<tokio::task::JoinError>),
}

/// A cause shared by every error value cloned from one failure; shows and compares as the cause.
#[derive(Debug)]
pub struct Shared<E>(Arc<E>);

impl<E> Shared<E> {
    /// The cause.
    pub fn get(&self) -> &E {
        &self.0
    }
}

impl<E> Clone for Shared<E> {
    fn clone(&self) -> Self {
        Shared(self.0.clone())
    }
}

impl<E> From<E> for Shared<E> {
    fn from(e: E) -> Self {
        Shared(Arc::new(e))
    }
}

impl<E: fmt::Display> fmt::Display for Shared<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: std::error::Error> std::error::Error for Shared<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Two causes are equal when they are the same failure or read the same.
impl<E: fmt::Display> PartialEq for Shared<E> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

impl<E: fmt::Display> Eq for Shared<E> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_before_and_keep_their_cause() {
        let e = AuditError::Journal(JournalFailure::Sync(
            io::Error::from_raw_os_error(28).into(),
        ));
        assert_eq!(
            e.to_string(),
            format!(
                "audit journal write failed: fdatasync: {}",
                io::Error::from_raw_os_error(28)
            )
        );
        let cause = std::error::Error::source(&e).map(ToString::to_string);
        assert!(cause.is_some_and(|c| c.starts_with("fdatasync: ")));
        assert_eq!(e.clone(), e);
        assert_eq!(
            AuditError::Journal(JournalFailure::Unsynced).to_string(),
            "audit journal write failed: the journal failed before this event was synced"
        );
        assert_eq!(
            AuditError::Internal(WriterFailure::Panicked("sync")).to_string(),
            "audit writer failed: audit sync thread panicked"
        );
        assert_eq!(
            AuditError::Journal(JournalFailure::Encode(JournalError::TooLarge(9).into()))
                .to_string(),
            "audit journal write failed: event of 9 bytes is too large for the journal"
        );
    }
}
