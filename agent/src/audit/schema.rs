//! The audit table's Arrow schema, its documentation, and the conversion between [`Event`]s and
//! Arrow record batches.
//!
//! One table, one row per event; the columns are exactly the fields of [`Event`], in the same order,
//! listed once in the `columns!` table below together with each column's documentation and, where
//! OCSF Datastore Activity (class_uid 6005) has a name for the same thing, that name. The documentation
//! travels with the data: every Arrow field carries `description` and `ocsf` metadata, which the
//! Parquet files keep in their embedded Arrow schema.
//!
//! Types are chosen for analysts' tools (DuckDB, Spark, Athena, pyarrow):
//! - `event_time`, `decided_at`: `timestamp[us, tz=UTC]`;
//! - `event_id`: the UUID as a lower-case hyphenated string (joins and filters need no casts);
//! - integers are signed (Spark and Athena lack unsigned types): ports as `int32`, every other
//!   integer as `int64` (a `u64` above `i64::MAX` is stored as `i64::MAX`);
//! - IP addresses as strings; `labels` as `map<string, string>`; `flags` as `list<string>`;
//! - `event_time`, `event_id`, `event_kind`, `host`, `agent_version`, `labels` and `flags` are never
//!   null (an empty map or list when there is nothing); every other column is null where not known.
//!
//! The schema version is stored in each file's key-value metadata under [`META_SCHEMA_VERSION`]. A
//! later version only adds columns (docs/decisions.md §9), so readers combine versions by name
//! (`union_by_name` in DuckDB, `mergeSchema` in Spark). Reading a batch back into events accepts files
//! that lack columns added later (they read as null).
//!
//! This module does no I/O: file writing is in `files`, reading directories in `readback`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

use arrow::array::{ArrayBuilder, ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use uuid::Uuid;

use super::event::{Event, EventKind};
use super::vocabulary::{
    CloseReason, ConnectionMode, Decision, Flag, LifecycleAction, RecordingStatus,
};

mod convert;

pub use self::convert::from_micros;
#[cfg(test)]
use self::convert::micros;
use self::convert::{ColumnValue, field};

/// The schema version this build writes; bumped whenever columns are added.
pub const SCHEMA_VERSION: u32 = 4;
/// Key-value metadata key holding [`SCHEMA_VERSION`] in every Parquet file.
pub const META_SCHEMA_VERSION: &str = "snowtrail.schema_version";

/// Why a record batch could not be read back as events.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// A column this build knows has another type in the file.
    #[error("column {column}: expected {expected}, found {found}")]
    ColumnType {
        /// The column's name.
        column: &'static str,
        /// The type this build writes.
        expected: String,
        /// The type found.
        found: String,
    },
    /// A column that is never null is missing or holds a null.
    #[error("column {0} is missing or null")]
    Missing(&'static str),
    /// A value does not parse (a UUID, an event kind, an IP address).
    #[error("column {column}: bad value {value:?}")]
    BadValue {
        /// The column's name.
        column: &'static str,
        /// The offending value.
        value: String,
    },
    /// Arrow refused the batch (a bug: the builders and the schema disagree).
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
}

/// The documentation of one column, as printed by tools and embedded in the Arrow field metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnDoc {
    /// The column's name.
    pub name: &'static str,
    /// The OCSF Datastore Activity (6005) attribute for the same thing, if there is one.
    pub ocsf: Option<&'static str>,
    /// Whether the Parquet writer dictionary-encodes the column (low cardinality).
    pub dictionary: bool,
    /// What the column holds.
    pub doc: &'static str,
}

macro_rules! columns {
    ($( $name:ident : $ty:ty, dict = $dict:expr, ocsf = $ocsf:expr, $doc:expr; )*) => {
        /// Every column's documentation, in schema order.
        pub const COLUMNS: &[ColumnDoc] = &[
            $( ColumnDoc { name: stringify!($name), ocsf: $ocsf, dictionary: $dict, doc: $doc }, )*
        ];

        fn build_fields() -> Vec<Field> {
            vec![ $( field::<$ty>(stringify!($name), $ocsf, $doc), )* ]
        }

        /// Accumulates events column by column and hands them out as record batches; reused across
        /// batches so that appending an event allocates nothing beyond the columns' own growth.
        pub struct EventBatchBuilder {
            rows: usize,
            capacity: usize,
            $( $name: <$ty as ColumnValue>::Builder, )*
        }

        impl EventBatchBuilder {
            /// Starts empty builders sized for `capacity` rows.
            pub fn new(capacity: usize) -> Self {
                EventBatchBuilder {
                    rows: 0,
                    capacity,
                    $( $name: <$ty as ColumnValue>::builder(capacity), )*
                }
            }

            /// Appends one event as a row.
            pub fn append(&mut self, e: &Event) {
                $( <$ty as ColumnValue>::append(&mut self.$name, &e.$name); )*
                self.rows += 1;
            }

            /// Takes the rows appended so far as one batch and leaves the builder empty, sized
            /// for `capacity` rows again (a finished Arrow builder starts from nothing, and
            /// regrowing every column by doubling cost a copy per growth).
            pub fn finish(&mut self) -> Result<RecordBatch, SchemaError> {
                let capacity = self.capacity;
                let mut full = std::mem::replace(self, EventBatchBuilder::new(capacity));
                let columns: Vec<ArrayRef> = vec![ $( ArrayBuilder::finish(&mut full.$name), )* ];
                self.rows = 0;
                Ok(RecordBatch::try_new(schema(), columns)?)
            }
        }

        /// Reads every row of a batch (of this or an earlier schema version) back into events.
        pub fn events_from_batch(batch: &RecordBatch) -> Result<Vec<Event>, SchemaError> {
            $( let $name = batch.column_by_name(stringify!($name)).map(|a| a.as_ref()); )*
            (0..batch.num_rows())
                .map(|row| {
                    Ok(Event { $( $name: <$ty as ColumnValue>::read($name, row, stringify!($name))?, )* })
                })
                .collect()
        }
    };
}

columns! {
    event_time: SystemTime, dict = false, ocsf = Some("time"),
        "When the agent saw the event (for a query: received the statement); files are partitioned by it.";
    event_id: Uuid, dict = false, ocsf = Some("metadata.uid"),
        "UUID v7 of the event, unique; the key that makes the trail exactly-once.";
    event_kind: EventKind, dict = true, ocsf = Some("activity_name"),
        "connection, login, logout, query, denial, lifecycle or request.";
    host: String, dict = true, ocsf = Some("device.hostname"),
        "Host name of the machine the agent runs on.";
    agent_version: String, dict = true, ocsf = Some("metadata.product.version"),
        "Version of the agent that recorded the event.";
    pid: Option<u32>, dict = false, ocsf = Some("actor.process.tid"),
        "Thread id of the calling process.";
    tgid: Option<u32>, dict = true, ocsf = Some("actor.process.pid"),
        "Process id of the caller.";
    ppid: Option<u32>, dict = true, ocsf = Some("actor.process.parent_process.pid"),
        "Parent process id of the caller.";
    uid: Option<u32>, dict = true, ocsf = Some("actor.process.user.uid"),
        "Real user id of the caller.";
    gid: Option<u32>, dict = true, ocsf = Some("actor.process.user.groups"),
        "Real group id of the caller.";
    user_name: Option<String>, dict = true, ocsf = Some("actor.process.user.name"),
        "User name of uid.";
    comm: Option<String>, dict = true, ocsf = Some("actor.process.name"),
        "The caller's comm (process name).";
    exe: Option<String>, dict = true, ocsf = Some("actor.process.file.path"),
        "The caller's executable path.";
    cmdline: Option<String>, dict = false, ocsf = Some("actor.process.cmd_line"),
        "The caller's command line, bounded in length.";
    cgroup_path: Option<String>, dict = true, ocsf = None,
        "The caller's cgroup, relative to the cgroup2 mount.";
    cgroup_id: Option<u64>, dict = true, ocsf = None,
        "The caller's cgroup id (the cgroup directory's inode number).";
    systemd_unit: Option<String>, dict = true, ocsf = None,
        "The systemd unit the caller's cgroup belongs to.";
    container_id: Option<String>, dict = true, ocsf = Some("container.uid"),
        "A container id found in the cgroup path.";
    pod_uid: Option<String>, dict = true, ocsf = Some("container.pod_uuid"),
        "A Kubernetes pod UID found in the cgroup path.";
    workload_identity: Option<String>, dict = true, ocsf = Some("actor.app_name"),
        "The enrolled workload's identity (snowtrail enroll/exec --identity).";
    labels: BTreeMap<String, String>, dict = true, ocsf = None,
        "The enrollment's labels as a map (OCSF's metadata.labels is a flat list).";
    human_identity: Option<String>, dict = true, ocsf = Some("actor.user.name"),
        "The human behind the workload, when known.";
    src_ip: Option<IpAddr>, dict = true, ocsf = Some("src_endpoint.ip"),
        "The client's IP address.";
    src_port: Option<u16>, dict = false, ocsf = Some("src_endpoint.port"),
        "The client's port.";
    dst_ip: Option<IpAddr>, dict = true, ocsf = Some("dst_endpoint.ip"),
        "The destination IP address the client connected to.";
    dst_port: Option<u16>, dict = true, ocsf = Some("dst_endpoint.port"),
        "The destination port the client connected to.";
    sni: Option<String>, dict = true, ocsf = Some("dst_endpoint.hostname"),
        "The TLS server name the client sent.";
    connection_mode: Option<ConnectionMode>, dict = true, ocsf = None,
        "How a connection was carried (connection events): intercepted, passthrough, refused.";
    connection_id: Option<u64>, dict = false, ocsf = Some("connection_info.uid"),
        "The agent's id of the connection; joins the events of one connection.";
    close_reason: Option<CloseReason>, dict = true, ocsf = None,
        "Why a connection ended: completed, error: <what failed>, idle_timeout, shutdown, denied: unidentified traffic, denied: unverified destination, denied: connection limit, denied: lockdown (on a `denial` event of the egress lockdown), connect_failed: <io error kind>, connect_timeout.";
    account: Option<String>, dict = true, ocsf = Some("cloud.account.uid"),
        "Snowflake account.";
    login_user: Option<String>, dict = true, ocsf = Some("user.name"),
        "The Snowflake user named at login.";
    authenticator: Option<String>, dict = true, ocsf = Some("auth_protocol"),
        "The authenticator used at login.";
    role: Option<String>, dict = true, ocsf = None,
        "Snowflake role in effect.";
    warehouse: Option<String>, dict = true, ocsf = None,
        "Snowflake warehouse in effect.";
    database: Option<String>, dict = true, ocsf = Some("database.name"),
        "Snowflake database in effect.";
    schema: Option<String>, dict = true, ocsf = None,
        "Snowflake schema in effect.";
    snowflake_session_id: Option<String>, dict = false, ocsf = Some("session.uid"),
        "Snowflake's session id.";
    session_id: Option<String>, dict = false, ocsf = Some("actor.session.uid"),
        "The agent's session id; what snowtrail replay --session takes.";
    correlation_id: Option<String>, dict = false, ocsf = Some("metadata.correlation_uid"),
        "The run's correlation id, also placed in Snowflake's QUERY_TAG.";
    request_id: Option<String>, dict = false, ocsf = Some("api.request.uid"),
        "The driver's request id.";
    query_id: Option<String>, dict = false, ocsf = Some("query_info.uid"),
        "Snowflake's query id.";
    parent_query_id: Option<String>, dict = false, ocsf = None,
        "For a statement of a multi-statement request, the request's query id.";
    driver: Option<String>, dict = true, ocsf = None,
        "Driver name (e.g. PythonConnector, JDBC).";
    driver_version: Option<String>, dict = true, ocsf = None,
        "Driver version.";
    sql_text: Option<String>, dict = false, ocsf = Some("query_info.query_string"),
        "SQL text with credential literals redacted (all literals with redact_literals).";
    statement_type: Option<String>, dict = true, ocsf = None,
        "Statement type: SELECT, INSERT, ...";
    bind_count: Option<u32>, dict = true, ocsf = None,
        "Number of bind values sent with the statement.";
    is_async: Option<bool>, dict = true, ocsf = None,
        "Whether the statement was submitted asynchronously.";
    decision: Option<Decision>, dict = true, ocsf = Some("disposition"),
        "Policy decision: allow, alert, deny, require_approval, mask, row_limit, approved.";
    policy_rule: Option<String>, dict = true, ocsf = Some("policy.name"),
        "The policy rule that decided.";
    approver: Option<String>, dict = true, ocsf = None,
        "Who approved or rejected a held statement.";
    decided_at: Option<SystemTime>, dict = false, ocsf = None,
        "When a held statement was approved or rejected.";
    success: Option<bool>, dict = true, ocsf = Some("status_id"),
        "Whether the operation succeeded (OCSF status_id 1 Success, 2 Failure).";
    error_code: Option<String>, dict = true, ocsf = Some("status_code"),
        "Snowflake's error code, or the agent's own.";
    sql_state: Option<String>, dict = true, ocsf = None,
        "SQL state of an error.";
    error_message: Option<String>, dict = false, ocsf = Some("status_detail"),
        "Error message.";
    rows_produced: Option<u64>, dict = false, ocsf = None,
        "Rows the statement produced; after a truncating row limit (flag rows_truncated), the rows delivered.";
    result_bytes: Option<u64>, dict = false, ocsf = None,
        "Bytes of result seen by the agent.";
    chunk_count: Option<u32>, dict = true, ocsf = None,
        "Number of result chunks.";
    duration_ms: Option<u64>, dict = false, ocsf = Some("duration"),
        "Duration in milliseconds.";
    bytes_in: Option<u64>, dict = false, ocsf = Some("traffic.bytes_out"),
        "Bytes the agent read from the client, TLS records included (OCSF counts them from the client's side).";
    bytes_out: Option<u64>, dict = false, ocsf = Some("traffic.bytes_in"),
        "Bytes the agent wrote to the client, TLS records included.";
    flags: Vec<Flag>, dict = true, ocsf = None,
        "Marks: uninspected, unparsed, alert, describe_only, outcome_unknown, chunks_unseen, transfer_unseen, aborted, tls_untrusted, not_tls, no_sni, hello_incomplete, hello_oversized, guarded, via_proxy, sql_truncated, rows_truncated, identity_unverified, audit_gap, too_many_holds, result_refused.";
    lifecycle_action: Option<LifecycleAction>, dict = true, ocsf = None,
        "For lifecycle events: start, stop, audit_gap, policy_reload, policy_rejected.";
    detail: Option<String>, dict = false, ocsf = Some("message"),
        "Free-text detail of lifecycle and denial events (for audit_gap: JSON); for a login, its session parameters as JSON.";
    pod_qos: Option<String>, dict = true, ocsf = None,
        "Kubernetes QoS class of the pod: guaranteed, burstable or besteffort (schema 2).";
    container_runtime: Option<String>, dict = true, ocsf = None,
        "Runtime of container_id: docker, containerd, cri-o, podman (schema 2).";
    parent_chain: Vec<String>, dict = true, ocsf = None,
        "The caller's ancestors inside the enrolled cgroup, nearest first, as pid:comm (schema 2).";
    process_start_time: Option<SystemTime>, dict = false, ocsf = Some("actor.process.created_time"),
        "When the caller's process started; with tgid it names one process (schema 2).";
    started_by: Option<String>, dict = true, ocsf = None,
        "User who started the snowtrail exec run or enrolled the cgroup (SO_PEERCRED) (schema 2).";
    started_by_login: Option<String>, dict = true, ocsf = None,
        "Login user (loginuid) of whoever started the run or enrolled the cgroup (schema 2).";
    stage_requests: Option<u32>, dict = false, ocsf = None,
        "For a PUT/GET statement: the storage requests of its transfers seen by the agent (schema 2).";
    stage_bytes_sent: Option<u64>, dict = false, ocsf = None,
        "For a PUT/GET statement: bytes its transfers sent to storage (uploads) (schema 2).";
    stage_bytes_received: Option<u64>, dict = false, ocsf = None,
        "For a PUT/GET statement: bytes its transfers received from storage (downloads) (schema 2).";
    human_groups: Vec<String>, dict = true, ocsf = Some("actor.user.groups"),
        "The groups claim of the session's verified OIDC login token (schema 2).";
    brokered: Option<bool>, dict = true, ocsf = None,
        "Whether the agent logged the session in with a key pair it holds (credential brokering); on login events and the session's events (schema 3).";
    recording: Option<RecordingStatus>, dict = true, ocsf = None,
        "For a statement, its recorded result: full, truncated (a cap stopped it), off (recording not configured, off for the identity, or a result the agent does not follow) or failed (schema 3).";
    recording_bytes_kept: Option<u64>, dict = false, ocsf = None,
        "Plaintext result bytes kept in the statement's recording (schema 3).";
    recording_bytes_seen: Option<u64>, dict = false, ocsf = None,
        "Result bytes the agent saw for the statement's recording (schema 3).";
    sql_sha256: Option<String>, dict = false, ocsf = None,
        "For a statement whose text was longer than audit.max_sql_bytes (sql_text holds its start, flagged sql_truncated): the SHA-256 (hex) of the whole text (schema 4).";
    attempts: Option<u32>, dict = false, ocsf = None,
        "For a statement: how many times the driver sent it with the same request id (a retry after HTTP 5xx, a timeout or an expired session); 1 without a retry. The row holds the last attempt's outcome (schema 4).";
    http_method: Option<String>, dict = true, ocsf = Some("http_request.http_method"),
        "For a request event (or the denial of one): the HTTP method (schema 4).";
    http_path: Option<String>, dict = true, ocsf = Some("http_request.url.path"),
        "For a request event (or the denial of one): the URL's path, without its query string (schema 4).";
    http_status: Option<u16>, dict = true, ocsf = Some("http_response.code"),
        "For a request event: the HTTP status the workload received (schema 4).";
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let meta = HashMap::from([(META_SCHEMA_VERSION.to_owned(), SCHEMA_VERSION.to_string())]);
    Arc::new(Schema::new_with_metadata(build_fields(), meta))
});

/// The audit table's Arrow schema (this build's version), with column documentation as field metadata.
pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}

impl EventBatchBuilder {
    /// Rows appended since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no rows wait in the builder.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use arrow::datatypes::DataType;
    use std::net::Ipv6Addr;
    use std::time::{Duration, UNIX_EPOCH};

    pub(crate) fn full_event() -> Event {
        let mut e = Event::new(
            EventKind::Query,
            UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            "h1",
        );
        e.pid = Some(7);
        e.tgid = Some(8);
        e.uid = Some(u32::MAX);
        e.cgroup_id = Some(u64::from(u32::MAX) + 5);
        e.labels.insert("team".into(), "data".into());
        e.labels.insert("env".into(), "prod".into());
        e.src_ip = Some(IpAddr::V6(Ipv6Addr::LOCALHOST));
        e.dst_ip = Some("10.1.2.3".parse().unwrap());
        e.src_port = Some(65535);
        e.sql_text = Some("select 1".into());
        e.is_async = Some(false);
        e.success = Some(true);
        e.decided_at = Some(UNIX_EPOCH + Duration::from_secs(5));
        e.flags = vec![Flag::Alert, Flag::DescribeOnly];
        e.decision = Some(Decision::RowLimit);
        e.close_reason = Some(CloseReason::connect_failed(std::io::ErrorKind::TimedOut));
        e.connection_mode = Some(ConnectionMode::Intercepted);
        e.lifecycle_action = Some(LifecycleAction::Start);
        e
    }

    #[test]
    fn round_trip() {
        let a = full_event();
        let b = Event::new(EventKind::Lifecycle, SystemTime::now(), "h2");
        let mut builder = EventBatchBuilder::new(4);
        builder.append(&a);
        builder.append(&b);
        assert_eq!(builder.len(), 2);
        let batch = builder.finish().unwrap();
        assert!(builder.is_empty());
        let back = events_from_batch(&batch).unwrap();
        let mut b_us = b.clone();
        b_us.event_time = from_micros(micros(b.event_time));
        assert_eq!(back, vec![a, b_us]);
        // Builders are reusable.
        builder.append(&full_event());
        assert_eq!(builder.finish().unwrap().num_rows(), 1);
    }

    #[test]
    fn schema_matches_docs() {
        let s = schema();
        assert_eq!(s.fields().len(), COLUMNS.len());
        assert!(matches!(
            s.field_with_name("event_time").unwrap().data_type(),
            DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some(tz)) if tz.as_ref() == "UTC"
        ));
        assert!(matches!(
            s.field_with_name("labels").unwrap().data_type(),
            DataType::Map(_, false)
        ));
        assert!(
            s.field_with_name("sql_text")
                .unwrap()
                .metadata()
                .contains_key("ocsf")
        );
    }

    #[test]
    fn the_flags_documentation_lists_every_flag() {
        let doc = COLUMNS.iter().find(|c| c.name == "flags").unwrap().doc;
        let listed: Vec<&str> = doc
            .strip_prefix("Marks: ")
            .and_then(|d| d.strip_suffix('.'))
            .unwrap()
            .split(", ")
            .collect();
        let mut every: Vec<&str> = Flag::ALL.iter().map(|f| f.as_str()).collect();
        let mut sorted = listed.clone();
        sorted.sort_unstable();
        every.sort_unstable();
        assert_eq!(sorted, every, "{doc}");
        assert_eq!(listed.len(), Flag::ALL.len(), "each flag once: {doc}");
    }

    /// The values a column's documentation lists after `prefix`, in order.
    fn listed<'a>(column: &str, prefix: &str) -> Vec<&'a str> {
        let doc = COLUMNS.iter().find(|c| c.name == column).unwrap().doc;
        doc.strip_prefix(prefix)
            .and_then(|d| d.strip_suffix('.'))
            .unwrap()
            .split(", ")
            .collect()
    }

    #[test]
    fn the_decision_and_lifecycle_documentation_list_every_value() {
        let decisions: Vec<&str> = Decision::ALL.iter().map(|d| d.as_str()).collect();
        assert_eq!(listed("decision", "Policy decision: "), decisions);
        let actions: Vec<&str> = LifecycleAction::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(
            listed("lifecycle_action", "For lifecycle events: "),
            actions
        );
        let modes: Vec<&str> = ConnectionMode::ALL.iter().map(|m| m.as_str()).collect();
        assert_eq!(
            listed(
                "connection_mode",
                "How a connection was carried (connection events): "
            ),
            modes
        );
    }

    #[test]
    fn vocabulary_columns_hold_their_text() {
        use arrow::array::AsArray;
        let mut builder = EventBatchBuilder::new(1);
        builder.append(&full_event());
        let batch = builder.finish().unwrap();
        let text = |name: &str| {
            let col = batch.column_by_name(name).unwrap();
            col.as_string::<i32>().value(0).to_owned()
        };
        assert_eq!(text("decision"), "row_limit");
        assert_eq!(text("close_reason"), "connect_failed: timed out");
        assert_eq!(text("connection_mode"), "intercepted");
        assert_eq!(text("lifecycle_action"), "start");
        let flags = batch
            .column_by_name("flags")
            .unwrap()
            .as_list::<i32>()
            .value(0);
        let flags: Vec<&str> = flags.as_string::<i32>().iter().flatten().collect();
        assert_eq!(flags, ["alert", "describe_only"]);
    }

    #[test]
    fn an_unknown_vocabulary_value_is_a_bad_value() {
        let mut builder = EventBatchBuilder::new(1);
        builder.append(&full_event());
        let batch = builder.finish().unwrap();
        let idx = batch.schema().index_of("decision").unwrap();
        let mut columns = batch.columns().to_vec();
        columns[idx] = Arc::new(arrow::array::StringArray::from(vec![Some("hold")]));
        let batch = RecordBatch::try_new(batch.schema(), columns).unwrap();
        assert!(matches!(
            events_from_batch(&batch),
            Err(SchemaError::BadValue { column: "decision", value }) if value == "hold"
        ));
    }

    #[test]
    fn older_files_read_missing_columns_as_null() {
        let mut builder = EventBatchBuilder::new(1);
        builder.append(&full_event());
        let batch = builder.finish().unwrap();
        let idx = batch.schema().index_of("sql_text").unwrap();
        let mut batch = batch;
        batch.remove_column(idx);
        let back = events_from_batch(&batch).unwrap();
        assert_eq!(back[0].sql_text, None);
    }
}
