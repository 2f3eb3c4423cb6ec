//! The audit writer's settings: the `[audit]` section and the top-level `on_audit_failure` key.
//!
//! This module only declares the shapes, their defaults and their serde names; reading the TOML file
//! and validating the whole configuration belong to the `config` module.

use serde::{Deserialize, Serialize};

/// Default for [`AuditConfig::batch_window_ms`].
pub const DEFAULT_BATCH_WINDOW_MS: u64 = 10;
/// Default for [`AuditConfig::max_file_bytes`]: 256 MiB, a size Spark and Athena split well.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;
/// Default for [`AuditConfig::row_group_rows`]: DuckDB's own row group size, so one reader thread per group.
pub const DEFAULT_ROW_GROUP_ROWS: usize = 122_880;
/// Default for [`AuditConfig::channel_capacity`].
pub const DEFAULT_CHANNEL_CAPACITY: usize = 8192;
/// Default for [`AuditConfig::intent_timeout_s`]: an hour.
pub const DEFAULT_INTENT_TIMEOUT_S: u64 = 3600;
/// Default for [`AuditConfig::max_pending_intents`].
pub const DEFAULT_MAX_PENDING_INTENTS: usize = 100_000;
/// Default for [`AuditConfig::digest_interval_s`]: an hour, as CloudTrail.
pub const DEFAULT_DIGEST_INTERVAL_S: u64 = 3600;
/// Most bytes of a statement's text an audit row holds.
pub const DEFAULT_MAX_SQL_BYTES: usize = 64 * 1024;
/// The smallest `max_sql_bytes` accepted: enough to tell any statement's kind and objects.
pub const MIN_MAX_SQL_BYTES: usize = 1024;
/// Default for [`AuditConfig::segment_bytes`]: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = super::journal::SEGMENT_BYTES;

/// When a statement's intent must be durable relative to forwarding it; read by the proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// The proxy awaits the intent's acknowledgement (journal fdatasync) before forwarding (the default).
    #[default]
    BeforeForward,
    /// The proxy forwards at once and does not await acknowledgements; a crash can lose the newest events.
    Async,
}

/// What the proxy does with intercepted statements while the audit trail cannot record them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnAuditFailure {
    /// Refuse statements with a clear error until the writer recovers (the default).
    #[default]
    Block,
    /// Let statements go ahead; the writer counts the gap and records an `audit_gap` lifecycle event.
    Allow,
}

impl OnAuditFailure {
    /// The configuration spelling, as written into `audit_gap` details.
    pub fn as_str(self) -> &'static str {
        match self {
            OnAuditFailure::Block => "block",
            OnAuditFailure::Allow => "allow",
        }
    }
}

/// The `[audit]` section of the configuration; every key is optional.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Whether the proxy waits for the intent's acknowledgement before forwarding a statement.
    pub durability: Durability,
    /// How long, in milliseconds, events may wait for an fdatasync while another is in flight. The
    /// writer keeps one fdatasync in flight and starts the next the moment it returns, so events wait
    /// at most one fdatasync; a disk slower than this window is reported in the log.
    pub batch_window_ms: u64,
    /// A Parquet file closes once it reaches about this many bytes.
    pub max_file_bytes: u64,
    /// A Parquet file closes this many seconds after it was opened, for fresher files (off by default).
    pub max_file_age_s: Option<u64>,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// How many submitted events may wait for the writer before submitters are held back.
    pub channel_capacity: usize,
    /// How long, in seconds, a statement's intent waits for its completion; past it the intent is
    /// written as its own row with the flag `outcome_unknown`, and a completion that comes later is
    /// refused ([`AuditError::IntentExpired`](super::AuditError::IntentExpired)).
    pub intent_timeout_s: u64,
    /// How many intents may wait for their completion at once; beyond it the oldest is written
    /// with `outcome_unknown` (and a warning), as if it had timed out.
    pub max_pending_intents: usize,
    /// A journal segment is sealed and the next one started past this many bytes. Sealed segments
    /// are deleted once their events are in published files; intents still pending in them are
    /// copied forward first, so a long statement never holds old segments.
    pub segment_bytes: u64,
    /// At most this many seconds pass between two signed digests (`_digests/`) naming the files
    /// closed meanwhile; one is also written at shutdown and, after a crash, at start.
    pub digest_interval_s: u64,
    /// A statement's text longer than this many bytes is cut (at a character boundary) in the
    /// audit, flagged `sql_truncated`, and identified whole by `sql_sha256`: one workload's
    /// megabyte statements must not fill the audit disk for all.
    pub max_sql_bytes: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            durability: Durability::default(),
            batch_window_ms: DEFAULT_BATCH_WINDOW_MS,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_file_age_s: None,
            row_group_rows: DEFAULT_ROW_GROUP_ROWS,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            intent_timeout_s: DEFAULT_INTENT_TIMEOUT_S,
            max_pending_intents: DEFAULT_MAX_PENDING_INTENTS,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            digest_interval_s: DEFAULT_DIGEST_INTERVAL_S,
            max_sql_bytes: DEFAULT_MAX_SQL_BYTES,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_names() {
        let c: AuditConfig = toml::from_str("").unwrap();
        assert_eq!(c, AuditConfig::default());
        let c: AuditConfig =
            toml::from_str("durability = \"async\"\nbatch_window_ms = 3\nmax_file_age_s = 60")
                .unwrap();
        assert_eq!(c.durability, Durability::Async);
        assert_eq!(c.batch_window_ms, 3);
        assert_eq!(c.max_file_age_s, Some(60));
        assert_eq!(c.intent_timeout_s, 3600);
        assert_eq!(c.max_pending_intents, 100_000);
        let c: AuditConfig =
            toml::from_str("intent_timeout_s = 5\nmax_pending_intents = 7\nsegment_bytes = 4096")
                .unwrap();
        assert_eq!(
            (c.intent_timeout_s, c.max_pending_intents, c.segment_bytes),
            (5, 7, 4096)
        );
        assert_eq!(c.digest_interval_s, 3600);
        let c: AuditConfig = toml::from_str("digest_interval_s = 5\nmax_file_age_s = 10").unwrap();
        assert_eq!((c.digest_interval_s, c.max_file_age_s), (5, Some(10)));
        assert!(toml::from_str::<AuditConfig>("bogus = 1").is_err());
        #[derive(Deserialize)]
        struct Top {
            on_audit_failure: OnAuditFailure,
        }
        let t: Top = toml::from_str("on_audit_failure = \"allow\"").unwrap();
        assert_eq!(t.on_audit_failure, OnAuditFailure::Allow);
    }
}
