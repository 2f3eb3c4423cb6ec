//! The recordings table: its Arrow schema and the conversion between [`Row`]s and record
//! batches. One row per recorded statement; `event_id` joins it to the audit. Everything but
//! `payload` is cleartext metadata about the recording, never result data: the row type (column
//! names and types) is inside the encrypted payload.
//!
//! No I/O here: file writing and reading are in `writer` and `replay`.

use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

use arrow::array::{
    Array, BinaryArray, BinaryBuilder, BooleanArray, BooleanBuilder, Int64Array, Int64Builder,
    RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;

use crate::audit::schema::from_micros;

/// The recordings table's schema version; bumped whenever columns are added (at the end).
pub const TABLE_VERSION: u32 = 1;
/// Key-value metadata key holding [`TABLE_VERSION`] in every recordings file.
pub const META_TABLE_VERSION: &str = "snowtrail.recording_schema_version";

/// One recorded statement: a row of the recordings table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The statement's audit `event_id` (the join key).
    pub event_id: String,
    /// Snowflake's query id.
    pub query_id: Option<String>,
    /// The agent's session id.
    pub session_id: Option<String>,
    /// The statement's `event_time` (the partition key, as in the audit).
    pub event_time: SystemTime,
    /// The host that recorded it.
    pub host: String,
    /// `json` or `arrow`.
    pub format: String,
    /// Plaintext result bytes kept in the payload.
    pub bytes_kept: u64,
    /// Result bytes the agent saw.
    pub bytes_seen: u64,
    /// Whether a cap stopped the recording.
    pub truncated: bool,
    /// The age recipient the payload is encrypted to.
    pub recipient: String,
    /// The payload (see `payload`), encrypted: one age file.
    pub payload: Vec<u8>,
}

/// The columns: name, type, nullable, documentation.
const COLUMNS: &[(&str, &str)] = &[
    (
        "event_id",
        "The statement's audit event_id: join key to the audit table.",
    ),
    ("query_id", "Snowflake's query id of the statement."),
    ("session_id", "The agent's session id (as in the audit)."),
    (
        "event_time",
        "When the agent received the statement (UTC); files are partitioned by it.",
    ),
    ("host", "The host whose agent recorded the result."),
    ("format", "How the rows came: json or arrow."),
    ("bytes_kept", "Plaintext result bytes in the payload."),
    (
        "bytes_seen",
        "Result bytes the agent saw for the statement.",
    ),
    (
        "truncated",
        "Whether a cap stopped the recording before the end of the result.",
    ),
    (
        "recipient",
        "The age X25519 recipient (public key) the payload is encrypted to.",
    ),
    (
        "payload",
        "The recorded result (row type, rows, chunks, error), an age-encrypted JSON document.",
    ),
];

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let types = [
        DataType::Utf8,
        DataType::Utf8,
        DataType::Utf8,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        DataType::Utf8,
        DataType::Utf8,
        DataType::Int64,
        DataType::Int64,
        DataType::Boolean,
        DataType::Utf8,
        DataType::Binary,
    ];
    let fields: Vec<Field> = COLUMNS
        .iter()
        .zip(types)
        .map(|((name, doc), t)| {
            let nullable = matches!(*name, "query_id" | "session_id");
            Field::new(*name, t, nullable).with_metadata(
                [("description".to_owned(), (*doc).to_owned())]
                    .into_iter()
                    .collect::<std::collections::HashMap<_, _>>(),
            )
        })
        .collect();
    let meta = [(META_TABLE_VERSION.to_owned(), TABLE_VERSION.to_string())]
        .into_iter()
        .collect::<std::collections::HashMap<_, _>>();
    Arc::new(Schema::new_with_metadata(fields, meta))
});

/// The recordings table's Arrow schema.
pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}

fn micros(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Rows as one record batch.
pub fn to_batch(rows: &[Row]) -> Result<RecordBatch, ArrowError> {
    let mut event_id = StringBuilder::new();
    let mut query_id = StringBuilder::new();
    let mut session_id = StringBuilder::new();
    let mut event_time = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut host = StringBuilder::new();
    let mut format = StringBuilder::new();
    let mut kept = Int64Builder::new();
    let mut seen = Int64Builder::new();
    let mut truncated = BooleanBuilder::new();
    let mut recipient = StringBuilder::new();
    let mut payload = BinaryBuilder::new();
    for r in rows {
        event_id.append_value(&r.event_id);
        query_id.append_option(r.query_id.as_deref());
        session_id.append_option(r.session_id.as_deref());
        event_time.append_value(micros(r.event_time));
        host.append_value(&r.host);
        format.append_value(&r.format);
        kept.append_value(int(r.bytes_kept));
        seen.append_value(int(r.bytes_seen));
        truncated.append_value(r.truncated);
        recipient.append_value(&r.recipient);
        payload.append_value(&r.payload);
    }
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(event_id.finish()),
            Arc::new(query_id.finish()),
            Arc::new(session_id.finish()),
            Arc::new(event_time.finish()),
            Arc::new(host.finish()),
            Arc::new(format.finish()),
            Arc::new(kept.finish()),
            Arc::new(seen.finish()),
            Arc::new(truncated.finish()),
            Arc::new(recipient.finish()),
            Arc::new(payload.finish()),
        ],
    )
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, ArrowError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            ArrowError::SchemaError(format!(
                "recordings column {name} missing or of another type"
            ))
        })
}

fn opt(a: &StringArray, i: usize) -> Option<String> {
    (!a.is_null(i)).then(|| a.value(i).to_owned())
}

/// A record batch read back as rows.
pub fn from_batch(batch: &RecordBatch) -> Result<Vec<Row>, ArrowError> {
    let event_id = column::<StringArray>(batch, "event_id")?;
    let query_id = column::<StringArray>(batch, "query_id")?;
    let session_id = column::<StringArray>(batch, "session_id")?;
    let event_time = column::<TimestampMicrosecondArray>(batch, "event_time")?;
    let host = column::<StringArray>(batch, "host")?;
    let format = column::<StringArray>(batch, "format")?;
    let kept = column::<Int64Array>(batch, "bytes_kept")?;
    let seen = column::<Int64Array>(batch, "bytes_seen")?;
    let truncated = column::<BooleanArray>(batch, "truncated")?;
    let recipient = column::<StringArray>(batch, "recipient")?;
    let payload = column::<BinaryArray>(batch, "payload")?;
    Ok((0..batch.num_rows())
        .map(|i| Row {
            event_id: event_id.value(i).to_owned(),
            query_id: opt(query_id, i),
            session_id: opt(session_id, i),
            event_time: from_micros(event_time.value(i)),
            host: host.value(i).to_owned(),
            format: format.value(i).to_owned(),
            bytes_kept: u64::try_from(kept.value(i)).unwrap_or(0),
            bytes_seen: u64::try_from(seen.value(i)).unwrap_or(0),
            truncated: truncated.value(i),
            recipient: recipient.value(i).to_owned(),
            payload: payload.value(i).to_vec(),
        })
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rows_round_trip_through_a_batch() {
        let rows = vec![
            Row {
                event_id: "e1".into(),
                query_id: Some("q1".into()),
                session_id: None,
                event_time: UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
                host: "h".into(),
                format: "arrow".into(),
                bytes_kept: 5,
                bytes_seen: 9,
                truncated: true,
                recipient: "age1x".into(),
                payload: vec![0, 1, 2],
            },
            Row {
                event_id: "e2".into(),
                query_id: None,
                session_id: Some("s".into()),
                event_time: UNIX_EPOCH,
                host: "h".into(),
                format: "json".into(),
                bytes_kept: 0,
                bytes_seen: 0,
                truncated: false,
                recipient: "age1x".into(),
                payload: vec![],
            },
        ];
        let b = to_batch(&rows).unwrap();
        assert_eq!(b.schema().fields().len(), COLUMNS.len());
        assert_eq!(from_batch(&b).unwrap(), rows);
    }
}
