//! Session recording: the result each statement returned to the workload, encrypted at rest.
//!
//! On once `recording.recipient` (an age X25519 public key) is configured, off until then
//! (docs/decisions.md §21). For every statement it follows, the proxy captures what the workload
//! received, after masking: the row type, the rows (a JSON rowset as sent, an Arrow
//! `rowsetBase64` as its IPC stream), the rows of the result chunks it downloads, and for a failed
//! statement the error envelope ([`payload`]). The capture is bounded by
//! `recording.max_bytes_per_statement` and by what `recording.max_bytes_per_session` leaves; past a
//! cap nothing more is kept (the workload still gets every byte) and the audit row says
//! `recording = "truncated"` with the bytes kept and seen.
//!
//! Each statement becomes one row of the recordings table ([`table`]) under `recording_dir`
//! (never under `audit_dir`), with the audit's `date=/hour=` layout, joined to the audit by
//! `event_id`. Its `payload` is the payload document encrypted with age to the recipient: the
//! agent can write recordings but never read them; `snowtrail replay --key` does ([`replay`]).
//! The writer ([`writer`]) spools each row durably before the statement's audit row is
//! submitted, publishes files atomically, and registers each in the signed digest chain
//! (`root = "recordings"`), so `snowtrail audit verify --recordings-dir` proves them intact.
//!
//! Results fetched by a request of their own are recorded when that fetch comes: an
//! asynchronous statement's (`GET /queries/<id>/result` after monitoring said it ended; a failure
//! monitoring reports is recorded as its error) and each statement's of a multi-statement request
//! (the request's own answer names the statements and is no statement's result). A PUT/GET
//! statement's answer has no rows: its recording holds the file command and the stage transfer
//! requests seen for it (never the files' bytes), and waits with its event until the transfers
//! are quiet.
//!
//! Not recorded (the audit row says `recording = "off"`): statements of identities listed in
//! `recording.off_for_identities` or decided by a rule with `record = false`, and results the
//! workload did not fetch through the agent (an async result read with `RESULT_SCAN`, a statement
//! of its own that is recorded; a multi-statement request's statement whose result the driver
//! never fetched). A result too large to inspect (`limits.max_response_inspect_bytes`) is
//! `truncated` with nothing kept.

pub mod config;
pub mod keys;
pub mod payload;
pub mod replay;
pub mod table;
pub mod writer;

pub use config::{DEFAULT_MAX_BYTES_PER_SESSION, DEFAULT_MAX_BYTES_PER_STATEMENT, RecordingConfig};
pub use payload::{Capture, Captured, Status};
pub use writer::{RecordingError, RecordingTask, RecordingWriter, Submission, WriterOptions};
