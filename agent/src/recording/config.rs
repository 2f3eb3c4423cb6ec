//! The `[recording]` settings: whom results are encrypted to, and how much is kept.

use serde::{Deserialize, Serialize};

/// Default `recording.max_bytes_per_statement`: 1 MiB of uncompressed result.
pub const DEFAULT_MAX_BYTES_PER_STATEMENT: u64 = 1024 * 1024;
/// Default `recording.max_bytes_per_session`: 64 MiB of uncompressed result.
pub const DEFAULT_MAX_BYTES_PER_SESSION: u64 = 64 * 1024 * 1024;

/// The `[recording]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    /// The age X25519 public key (`age1…`, from `snowtrail recording keygen`) results are
    /// encrypted to. Recording is on once it is set, off until then.
    pub recipient: Option<String>,
    /// Result bytes (uncompressed) kept per statement; past it the recording is truncated.
    pub max_bytes_per_statement: u64,
    /// Result bytes kept per session, over all its statements; past it the session's further
    /// results are truncated (nothing kept).
    pub max_bytes_per_session: u64,
    /// Workload identities whose statements are not recorded.
    pub off_for_identities: Vec<String>,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            recipient: None,
            max_bytes_per_statement: DEFAULT_MAX_BYTES_PER_STATEMENT,
            max_bytes_per_session: DEFAULT_MAX_BYTES_PER_SESSION,
            off_for_identities: Vec::new(),
        }
    }
}

impl RecordingConfig {
    /// Checks what the types alone cannot: the recipient is an age X25519 key.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(r) = &self.recipient {
            super::keys::parse_recipient(r).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Whether statements of `identity` are recorded (recording being on).
    pub fn records_identity(&self, identity: Option<&str>) -> bool {
        identity.is_none_or(|i| !self.off_for_identities.iter().any(|o| o == i))
    }

    /// The cap of a statement whose session has kept `session_kept` bytes so far.
    pub fn statement_limit(&self, session_kept: u64) -> u64 {
        self.max_bytes_per_statement
            .min(self.max_bytes_per_session.saturating_sub(session_kept))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_identities() {
        let c = RecordingConfig {
            off_for_identities: vec!["etl".into()],
            max_bytes_per_statement: 100,
            max_bytes_per_session: 250,
            ..RecordingConfig::default()
        };
        assert!(!c.records_identity(Some("etl")));
        assert!(c.records_identity(Some("bi")) && c.records_identity(None));
        assert_eq!(c.statement_limit(0), 100);
        assert_eq!(c.statement_limit(200), 50);
        assert_eq!(c.statement_limit(300), 0);
        assert!(c.validate().is_ok());
        let bad = RecordingConfig {
            recipient: Some("age1nope".into()),
            ..RecordingConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("recording.recipient"));
    }
}
