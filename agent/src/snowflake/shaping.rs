//! Result shaping: column masking and row limits applied to a query response and its chunks
//! (no I/O: bytes in, bytes out).
//!
//! What the driver sees in a masked column: text columns (`text`, Snowflake's `VARCHAR`/`STRING`
//! family) carry [`MASKED_TEXT`] in every cell, NULLs included (whether a value was there is
//! itself withheld); every other type carries NULL. The drivers convert cells by their column's
//! type (connector 5.x parses JSON `fixed` cells as decimal numbers, `date` as day counts,
//! `timestamp_*` as epoch fractions, `boolean` as `1`/`0`; Arrow columns by the field's
//! `logicalType` and Arrow type), so a placeholder string in a non-text column would fail the
//! whole fetch; NULL is the one value every type accepts. Column names are matched to `rowtype`
//! names as Snowflake resolves identifiers: a rule column written `"Quoted"` matches exactly, an
//! unquoted one case-insensitively (a superset of Snowflake's upper-casing, so a quoted
//! mixed-case alias of the same name is masked too).
//!
//! Both row formats are rewritten, inline and in chunks:
//! - JSON: `rowset` arrays, and chunks of rows joined by commas;
//! - Arrow: `rowsetBase64`, the base64 of an IPC stream, and chunks that are IPC streams. Each is
//!   decoded whole, its masked columns replaced batch by batch (a text column, Arrow `Utf8`,
//!   `LargeUtf8` or `Utf8View`, by [`MASKED_TEXT`]; any other type, structs of timestamps
//!   included, by an all-NULL column of the same type), rows past a truncating limit sliced off,
//!   and written back as a stream with the same schema, field metadata and schema metadata, the
//!   masked fields made nullable. An empty `rowsetBase64` stays empty, as Snowflake sends it.
//!
//! A row limit counts the rows of the inline part and of every chunk (by its `rowCount`); a
//! truncating one cuts the inline rows, cuts the chunk it ends in and drops the chunks after it,
//! and sets `total` and `returned` to the rows kept. A chunk stored gzip'd and served without a
//! `Content-Encoding` is unpacked, shaped and packed again. Anything that cannot be read (bad
//! JSON, bad base64, an IPC stream the Arrow decoder refuses, IPC body compression among it) is
//! [`ShapeError::Unreadable`], and the caller withholds the result.

mod ipc;

use base64::Engine as _;
use serde_json::{Map, Value};

/// The value a masked text cell carries.
pub const MASKED_TEXT: &str = "***";

/// What to do with a result past its row limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitMode {
    /// Refuse the whole result.
    Refuse,
    /// Keep the first rows.
    Truncate,
}

/// How a statement's result must be shaped, from its policy rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Shape {
    /// Columns to mask, as the rule names them (`"Quoted"` or unquoted).
    pub mask: Vec<String>,
    /// The most rows the workload may receive, and what happens past it.
    pub row_limit: Option<(u64, LimitMode)>,
}

/// Why a result could not be shaped; the caller answers with an error instead of the result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// The result has more rows than the rule allows and the rule refuses.
    #[error("the result has {total} rows, more than the {limit} the rule allows")]
    TooManyRows {
        /// Rows in the result.
        total: u64,
        /// The rule's limit.
        limit: u64,
    },
    /// The body (or a chunk, or an Arrow stream in either) is not in the shape expected.
    #[error("the result could not be read to apply the rule")]
    Unreadable,
}

/// A masked column: its position in each row and the value its cells become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedColumn {
    /// Index in the row.
    pub index: usize,
    /// `Some(MASKED_TEXT)` for text columns, `None` (NULL) for the others.
    pub value: Option<&'static str>,
}

/// How a result's rows are encoded, inline and in its chunks; a chunk is rewritten in its
/// result's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RowFormat {
    /// JSON `rowset` arrays; chunks of rows joined by commas.
    #[default]
    Json,
    /// Arrow: `rowsetBase64` and chunks that are IPC streams.
    Arrow,
}

impl RowFormat {
    /// The format of a response's `data`: Arrow when `queryResultFormat` says so or when it
    /// carries a `rowsetBase64`.
    fn of(data: &Map<String, Value>) -> RowFormat {
        let arrow = data
            .get("queryResultFormat")
            .and_then(Value::as_str)
            .is_some_and(|f| f.eq_ignore_ascii_case("arrow"))
            || data
                .get("rowsetBase64")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty());
        if arrow {
            RowFormat::Arrow
        } else {
            RowFormat::Json
        }
    }
}

/// What a chunk download of a shaped result must become.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChunkShape {
    /// Columns to mask.
    pub columns: Vec<MaskedColumn>,
    /// Keep at most this many rows of the chunk (the chunk a truncation cuts through).
    pub keep_rows: Option<usize>,
    /// How the chunk's rows are encoded.
    pub format: RowFormat,
}

impl ChunkShape {
    /// Whether the chunk must be rewritten at all (a masked column, or a cut); one that need not
    /// passes untouched.
    pub fn rewrites(&self) -> bool {
        !self.columns.is_empty() || self.keep_rows.is_some()
    }
}

/// A chunk kept in a shaped result: its index in the original `chunks` and how to shape it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptChunk {
    /// Index in the response's original `chunks`.
    pub index: usize,
    /// How its body must be rewritten.
    pub shape: ChunkShape,
}

/// A shaped query response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shaped {
    /// The rewritten body (decoded JSON), or `None` when nothing needed changing.
    pub body: Option<Vec<u8>>,
    /// The chunks the driver will still download, each with its shape.
    pub chunks: Vec<KeptChunk>,
    /// Whether rows were dropped by a truncating row limit.
    /// The rows the driver receives, when a truncating row limit dropped some (`None` when
    /// nothing was dropped).
    pub truncated: Option<u64>,
}

/// Whether a rule's column name denotes the `rowtype` column `name` (Snowflake's identifier rules).
pub fn column_matches(rule_column: &str, name: &str) -> bool {
    let r = rule_column.trim();
    match r.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(quoted) if !quoted.is_empty() => quoted.replace("\"\"", "\"") == name,
        _ => r.eq_ignore_ascii_case(name),
    }
}

/// The masked columns of a `rowtype` array.
pub(crate) fn masked_columns(rowtype: &[Value], mask: &[String]) -> Vec<MaskedColumn> {
    rowtype
        .iter()
        .enumerate()
        .filter_map(|(index, c)| {
            let name = c.get("name")?.as_str()?;
            if !mask.iter().any(|m| column_matches(m, name)) {
                return None;
            }
            let text = c
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.eq_ignore_ascii_case("text"));
            Some(MaskedColumn {
                index,
                value: text.then_some(MASKED_TEXT),
            })
        })
        .collect()
}

pub(crate) fn mask_row(row: &mut Value, columns: &[MaskedColumn]) {
    if let Some(cells) = row.as_array_mut() {
        for c in columns {
            if let Some(cell) = cells.get_mut(c.index) {
                *cell = c.value.map_or(Value::Null, |v| Value::String(v.to_owned()));
            }
        }
    }
}

fn as_u64(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_u64)
}

/// Shapes a query response body (decoded JSON) by `shape`. A response without rows (an error,
/// an in-progress answer, a DML count) comes back unchanged.
pub fn shape_response(body: &[u8], shape: &Shape) -> Result<Shaped, ShapeError> {
    let mut root: Value = serde_json::from_slice(body).map_err(|_| ShapeError::Unreadable)?;
    let Some(data) = root.get_mut("data").and_then(Value::as_object_mut) else {
        return Ok(Shaped {
            body: None,
            chunks: Vec::new(),
            truncated: None,
        });
    };
    let rowtype = data
        .get("rowtype")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let columns = masked_columns(&rowtype, &shape.mask);
    let format = RowFormat::of(data);
    // The inline Arrow rows are read only when the rule needs them: to mask, or to count.
    let arrow_inline = if !columns.is_empty() || shape.row_limit.is_some() {
        inline_stream(data)?
    } else {
        None
    };
    let chunk_rows: Vec<u64> = data
        .get("chunks")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| as_u64(c.get("rowCount")).unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    let inline_rows = data
        .get("rowset")
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
        .saturating_add(arrow_inline.as_ref().map_or(0, ipc::Stream::rows));
    let counted = u64::try_from(inline_rows)
        .unwrap_or(u64::MAX)
        .saturating_add(chunk_rows.iter().sum());
    let total = as_u64(data.get("total")).map_or(counted, |t| t.max(counted));

    // Row limit: how many rows stay, if fewer than the result has.
    let mut keep: Option<u64> = None;
    if let Some((limit, mode)) = shape.row_limit
        && total > limit
    {
        match mode {
            LimitMode::Refuse => return Err(ShapeError::TooManyRows { total, limit }),
            LimitMode::Truncate => keep = Some(limit),
        }
    }
    if columns.is_empty() && keep.is_none() {
        return Ok(Shaped {
            body: None,
            chunks: (0..chunk_rows.len())
                .map(|index| KeptChunk {
                    index,
                    shape: ChunkShape {
                        format,
                        ..ChunkShape::default()
                    },
                })
                .collect(),
            truncated: None,
        });
    }
    let mut remaining = keep.unwrap_or(u64::MAX);
    if let Some(rows) = data.get_mut("rowset").and_then(Value::as_array_mut) {
        let n = usize::try_from(remaining).unwrap_or(usize::MAX);
        rows.truncate(n);
        remaining = remaining.saturating_sub(u64::try_from(rows.len()).unwrap_or(u64::MAX));
        for r in rows.iter_mut() {
            mask_row(r, &columns);
        }
    }
    if let Some(stream) = arrow_inline {
        let n = usize::try_from(remaining).unwrap_or(usize::MAX);
        let rows = stream.rows();
        if !columns.is_empty() || rows > n {
            let shaped = stream.shape(&columns, Some(n))?;
            let text = if shaped.rows() == 0 {
                String::new()
            } else {
                base64::engine::general_purpose::STANDARD.encode(shaped.write()?)
            };
            data.insert("rowsetBase64".into(), Value::String(text));
        }
        remaining = remaining.saturating_sub(u64::try_from(rows.min(n)).unwrap_or(u64::MAX));
    }
    let mut kept = Vec::new();
    if let Some(cs) = data.get_mut("chunks").and_then(Value::as_array_mut) {
        let mut out = Vec::new();
        for (index, (mut c, rows)) in std::mem::take(cs).into_iter().zip(chunk_rows).enumerate() {
            if remaining == 0 {
                break;
            }
            let mut shape = ChunkShape {
                columns: columns.clone(),
                keep_rows: None,
                format,
            };
            if rows > remaining {
                shape.keep_rows = usize::try_from(remaining).ok();
                if let Some(o) = c.as_object_mut() {
                    o.insert("rowCount".into(), Value::from(remaining));
                }
                remaining = 0;
            } else {
                remaining -= rows;
            }
            out.push(c);
            kept.push(KeptChunk { index, shape });
        }
        *cs = out;
    }
    if let Some(limit) = keep {
        set_counts(data, limit);
    }
    let body = serde_json::to_vec(&root).map_err(|_| ShapeError::Unreadable)?;
    Ok(Shaped {
        body: Some(body),
        chunks: kept,
        truncated: keep,
    })
}

/// The inline Arrow rows of a response, read whole: `None` when `rowsetBase64` is absent or
/// empty (an empty result, or one whose rows all come in chunks).
fn inline_stream(data: &Map<String, Value>) -> Result<Option<ipc::Stream>, ShapeError> {
    let text = match data.get("rowsetBase64") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.is_empty() => return Ok(None),
        Some(Value::String(s)) => s,
        Some(_) => return Err(ShapeError::Unreadable),
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| ShapeError::Unreadable)?;
    ipc::Stream::read(bytes).map(Some)
}

fn set_counts(data: &mut Map<String, Value>, kept: u64) {
    for key in ["total", "returned"] {
        if data.contains_key(key) {
            data.insert(key.into(), Value::from(kept));
        }
    }
}

/// The first bytes of a gzip stream (magic and the deflate method).
const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];

/// Shapes a chunk download's body, already decoded by its `Content-Encoding`, in the format of
/// its result. A body that is itself a gzip stream (cloud storage serves chunks stored compressed
/// without saying so, and the drivers unpack them by their magic) is unpacked to at most `limit`
/// bytes, shaped, and packed again.
pub fn shape_chunk(body: &[u8], shape: &ChunkShape, limit: usize) -> Result<Vec<u8>, ShapeError> {
    if body.starts_with(&GZIP_MAGIC) {
        let inner = super::encoding::decode(super::ContentEncoding::Gzip, body, limit)
            .map_err(|_| ShapeError::Unreadable)?;
        return shape_plain_chunk(&inner, shape).map(|b| super::gzip(&b));
    }
    shape_plain_chunk(body, shape)
}

fn shape_plain_chunk(body: &[u8], shape: &ChunkShape) -> Result<Vec<u8>, ShapeError> {
    match shape.format {
        RowFormat::Json => shape_json_chunk(body, shape),
        RowFormat::Arrow => ipc::Stream::read(body.to_vec())?
            .shape(&shape.columns, shape.keep_rows)?
            .write(),
    }
}

/// Shapes a JSON chunk body (rows joined by commas, without the outer brackets).
fn shape_json_chunk(body: &[u8], shape: &ChunkShape) -> Result<Vec<u8>, ShapeError> {
    let trimmed = body.trim_ascii();
    if trimmed.first() != Some(&b'[') {
        return Err(ShapeError::Unreadable);
    }
    let mut wrapped = Vec::with_capacity(trimmed.len() + 2);
    wrapped.push(b'[');
    wrapped.extend_from_slice(trimmed);
    wrapped.push(b']');
    let mut rows: Vec<Value> =
        serde_json::from_slice(&wrapped).map_err(|_| ShapeError::Unreadable)?;
    if let Some(n) = shape.keep_rows {
        rows.truncate(n);
    }
    let mut out = Vec::with_capacity(body.len());
    for (i, r) in rows.iter_mut().enumerate() {
        mask_row(r, &shape.columns);
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, r).map_err(|_| ShapeError::Unreadable)?;
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn response(rows: Value, chunks: Value, total: u64) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "code": null, "success": true, "message": null,
            "data": {
                "queryId": "q1",
                "rowtype": [
                    {"name": "ID", "type": "fixed"},
                    {"name": "EMAIL", "type": "text"},
                    {"name": "Born", "type": "date"},
                ],
                "rowset": rows,
                "total": total,
                "returned": total,
                "queryResultFormat": "json",
                "chunks": chunks,
            }
        }))
        .unwrap()
    }

    /// The `data` object of a response body.
    pub(super) fn data(body: &[u8]) -> Value {
        serde_json::from_slice::<Value>(body).unwrap()["data"].clone()
    }

    /// Asserts that a limit refusing results of more than `limit` rows refuses `body`, which
    /// has `total`, and that a limit of `total` lets it pass as it is.
    pub(super) fn assert_refused_over(body: &[u8], limit: u64, total: u64) {
        let refusing = |n| Shape {
            mask: vec![],
            row_limit: Some((n, LimitMode::Refuse)),
        };
        assert_eq!(
            shape_response(body, &refusing(limit)),
            Err(ShapeError::TooManyRows { total, limit })
        );
        assert_eq!(shape_response(body, &refusing(total)).unwrap().body, None);
    }

    #[test]
    fn identifiers_match_as_snowflake_resolves_them() {
        assert!(column_matches("email", "EMAIL"));
        assert!(column_matches("Email", "EMAIL"));
        assert!(column_matches("\"Born\"", "Born"));
        assert!(!column_matches("\"born\"", "Born"));
        assert!(column_matches("\"a\"\"b\"", "a\"b"));
        assert!(!column_matches("mail", "EMAIL"));
    }

    #[test]
    fn masks_text_with_stars_and_other_types_with_null() {
        let body = response(
            json!([["1", "a@x", "19000"], ["2", null, "1"]]),
            json!([]),
            2,
        );
        let shape = Shape {
            mask: vec!["email".into(), "\"Born\"".into()],
            row_limit: None,
        };
        let s = shape_response(&body, &shape).unwrap();
        assert_eq!(s.truncated, None);
        let d = data(&s.body.unwrap());
        assert_eq!(d["rowset"], json!([["1", "***", null], ["2", "***", null]]));
        assert_eq!(d["total"], json!(2));
    }

    #[test]
    fn a_result_without_masked_columns_is_unchanged() {
        let body = response(json!([["1", "a", "2"]]), json!([]), 1);
        let shape = Shape {
            mask: vec!["ssn".into()],
            row_limit: Some((5, LimitMode::Truncate)),
        };
        let s = shape_response(&body, &shape).unwrap();
        assert_eq!(s.body, None);
    }

    #[test]
    fn chunks_carry_the_mask_and_a_truncation_cuts_through_them() {
        let body = response(
            json!([["1", "a", "2"], ["2", "b", "3"]]),
            json!([{"url": "u0", "rowCount": 3}, {"url": "u1", "rowCount": 3}, {"url": "u2", "rowCount": 3}]),
            8,
        );
        let shape = Shape {
            mask: vec!["EMAIL".into()],
            row_limit: Some((6, LimitMode::Truncate)),
        };
        let s = shape_response(&body, &shape).unwrap();
        assert_eq!(s.truncated, Some(6));
        assert_eq!(s.chunks.len(), 2);
        assert_eq!(s.chunks[0].shape.keep_rows, None);
        assert_eq!(s.chunks[1].shape.keep_rows, Some(1));
        assert_eq!(s.chunks[1].shape.columns[0].index, 1);
        let d = data(&s.body.unwrap());
        assert_eq!(d["total"], json!(6));
        assert_eq!(d["returned"], json!(6));
        assert_eq!(d["chunks"].as_array().unwrap().len(), 2);
        assert_eq!(d["chunks"][1]["rowCount"], json!(1));
        assert_eq!(d["rowset"][1], json!(["2", "***", "3"]));

        let chunk = br#"["3","c","4"],["4",null,"5"],["5","e","6"]"#;
        let out = shape_json_chunk(chunk, &s.chunks[1].shape).unwrap();
        assert_eq!(out, br#"["3","***","4"]"#.to_vec());
        let out = shape_json_chunk(chunk, &s.chunks[0].shape).unwrap();
        assert_eq!(
            out,
            br#"["3","***","4"],["4","***","5"],["5","***","6"]"#.to_vec()
        );
    }

    #[test]
    fn truncation_inside_the_rowset_drops_every_chunk() {
        let body = response(
            json!([["1", "a", "2"], ["2", "b", "3"], ["3", "c", "4"]]),
            json!([{"url": "u0", "rowCount": 3}]),
            6,
        );
        let shape = Shape {
            mask: vec![],
            row_limit: Some((2, LimitMode::Truncate)),
        };
        let s = shape_response(&body, &shape).unwrap();
        assert!(s.truncated == Some(2) && s.chunks.is_empty());
        let d = data(&s.body.unwrap());
        assert_eq!(d["rowset"].as_array().unwrap().len(), 2);
        assert_eq!(d["chunks"], json!([]));
        assert_eq!(d["total"], json!(2));
    }

    #[test]
    fn a_refusing_limit_refuses_larger_results_only() {
        let body = response(json!([["1", "a", "2"], ["2", "b", "3"]]), json!([]), 2);
        assert_refused_over(&body, 1, 2);
    }

    #[test]
    fn errors_and_bodies_without_rows_pass() {
        let body = br#"{"success":false,"code":"002003","message":"no","data":null}"#;
        let s = shape_response(body, &Shape::default()).unwrap();
        assert_eq!(s.body, None);
        assert_eq!(
            shape_response(b"not json", &Shape::default()),
            Err(ShapeError::Unreadable)
        );
    }
}

/// Arrow results: streams built here as Snowflake builds them (field metadata, its types per
/// logical type), shaped, and read back with the Arrow reader.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod arrow_tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use arrow::array::{
        Array, ArrayRef, BooleanArray, Decimal128Array, Int32Array, Int64Array, StringArray,
        StructArray,
    };
    use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
    use arrow::ipc::reader::StreamReader;
    use arrow::ipc::writer::StreamWriter;
    use arrow::record_batch::RecordBatch;
    use base64::Engine as _;
    use serde_json::{Value, json};

    use super::tests::{assert_refused_over, data};
    use super::*;

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    fn meta(logical: &str, scale: u32, char_length: u32) -> HashMap<String, String> {
        [
            ("logicalType", logical.to_owned()),
            ("precision", "38".to_owned()),
            ("scale", scale.to_string()),
            ("charLength", char_length.to_string()),
            ("finalType", "T".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn ts_fields() -> Fields {
        Fields::from(vec![
            Field::new("epoch", DataType::Int64, false),
            Field::new("fraction", DataType::Int32, false),
        ])
    }

    /// ID fixed → Int64 (not null), NAME text → Utf8, BALANCE NUMBER(38,2) → Decimal128 (not
    /// null), CREATED TIMESTAMP_NTZ(9) → struct{epoch, fraction} (not null), ACTIVE boolean,
    /// NOTE variant → Utf8.
    fn schema() -> SchemaRef {
        Arc::new(Schema::new_with_metadata(
            vec![
                Field::new("ID", DataType::Int64, false).with_metadata(meta("FIXED", 0, 0)),
                Field::new("NAME", DataType::Utf8, true).with_metadata(meta("TEXT", 0, 16_777_216)),
                Field::new("BALANCE", DataType::Decimal128(38, 2), false)
                    .with_metadata(meta("FIXED", 2, 0)),
                Field::new("CREATED", DataType::Struct(ts_fields()), false).with_metadata(meta(
                    "TIMESTAMP_NTZ",
                    9,
                    0,
                )),
                Field::new("ACTIVE", DataType::Boolean, true).with_metadata(meta("BOOLEAN", 0, 0)),
                Field::new("NOTE", DataType::Utf8, true)
                    .with_metadata(meta("VARIANT", 0, 16_777_216)),
            ],
            HashMap::from([("origin".to_owned(), "snowflake".to_owned())]),
        ))
    }

    fn rowtype() -> Value {
        json!([
            {"name": "ID", "type": "fixed", "scale": 0, "precision": 38, "nullable": false},
            {"name": "NAME", "type": "text", "length": 16_777_216, "nullable": true},
            {"name": "BALANCE", "type": "fixed", "scale": 2, "precision": 38, "nullable": false},
            {"name": "CREATED", "type": "timestamp_ntz", "scale": 9, "nullable": false},
            {"name": "ACTIVE", "type": "boolean", "nullable": true},
            {"name": "NOTE", "type": "variant", "nullable": true},
        ])
    }

    /// A batch of rows `ids`; the second row of each batch has a NULL name.
    fn batch(ids: std::ops::Range<i64>) -> RecordBatch {
        let n = usize::try_from(ids.end - ids.start).unwrap();
        let id: Vec<i64> = ids.clone().collect();
        let name: Vec<Option<String>> = ids
            .clone()
            .enumerate()
            .map(|(i, v)| (i != 1).then(|| format!("name {v}")))
            .collect();
        let created = StructArray::new(
            ts_fields(),
            vec![
                Arc::new(Int64Array::from_iter_values(
                    ids.clone().map(|v| 1_700_000_000 + v),
                )) as ArrayRef,
                Arc::new(Int32Array::from_iter_values(
                    (0..n).map(|i| i32::try_from(i).unwrap() * 1000),
                )),
            ],
            None,
        );
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(id.clone())),
            Arc::new(StringArray::from(name)),
            Arc::new(
                Decimal128Array::from_iter_values(id.iter().map(|v| i128::from(*v) * 1025))
                    .with_precision_and_scale(38, 2)
                    .unwrap(),
            ),
            Arc::new(created),
            Arc::new(BooleanArray::from_iter(id.iter().map(|v| Some(v % 2 == 0)))),
            Arc::new(StringArray::from_iter_values(
                id.iter().map(|v| format!("{{\"k\":{v}}}")),
            )),
        ];
        RecordBatch::try_new(schema(), arrays).unwrap()
    }

    fn stream(batches: &[RecordBatch]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = StreamWriter::try_new(&mut out, &schema()).unwrap();
        for b in batches {
            w.write(b).unwrap();
        }
        w.finish().unwrap();
        drop(w);
        out
    }

    fn read(bytes: &[u8]) -> (SchemaRef, Vec<RecordBatch>) {
        let reader = StreamReader::try_new(bytes, None).unwrap();
        let schema = reader.schema();
        let batches = reader.collect::<Result<Vec<_>, _>>().unwrap();
        (schema, batches)
    }

    fn arrow_response(inline: &[u8], chunks: Value, total: u64) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "code": null, "success": true, "message": null,
            "data": {
                "queryId": "q1",
                "rowtype": rowtype(),
                "rowsetBase64": B64.encode(inline),
                "total": total,
                "returned": total,
                "queryResultFormat": "arrow",
                "chunks": chunks,
            }
        }))
        .unwrap()
    }

    fn inline_of(d: &Value) -> Vec<u8> {
        B64.decode(d["rowsetBase64"].as_str().unwrap()).unwrap()
    }

    fn mask(columns: &[&str]) -> Shape {
        Shape {
            mask: columns.iter().map(|c| (*c).to_owned()).collect(),
            row_limit: None,
        }
    }

    fn rows_per_batch(batches: &[RecordBatch]) -> Vec<usize> {
        batches.iter().map(RecordBatch::num_rows).collect()
    }

    fn ids(batches: &[RecordBatch]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                a.values().to_vec()
            })
            .collect()
    }

    const MASKED: [usize; 4] = [1, 2, 3, 5];

    /// The shaped stream against the original: the schema field for field (nullability aside
    /// for masked fields), `***` in NAME, NULL in the other masked columns, and the unmasked
    /// columns equal to the original's, value buffers byte for byte.
    fn assert_masked(out: &[u8], original: &[RecordBatch]) {
        let (got, batches) = read(out);
        let before = schema();
        assert_eq!(got.metadata(), before.metadata());
        for (i, (f, g)) in got.fields().iter().zip(before.fields()).enumerate() {
            assert_eq!(f.name(), g.name());
            assert_eq!(f.data_type(), g.data_type());
            assert_eq!(f.metadata(), g.metadata());
            let masked = MASKED.contains(&i);
            assert_eq!(f.is_nullable(), masked || g.is_nullable(), "{f:?}");
        }
        assert_eq!(batches.len(), original.len());
        for (b, o) in batches.iter().zip(original) {
            assert_eq!(b.num_rows(), o.num_rows());
            let name = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
            assert_eq!(name.null_count(), 0);
            assert!(name.iter().all(|v| v == Some(MASKED_TEXT)), "{name:?}");
            for i in [2, 3, 5] {
                assert_eq!(b.column(i).null_count(), b.num_rows(), "column {i}");
                assert_eq!(b.column(i).data_type(), o.column(i).data_type());
            }
            for i in [0, 4] {
                assert_eq!(b.column(i).to_data(), o.column(i).to_data(), "column {i}");
                assert_eq!(
                    b.column(i).to_data().buffers()[0].as_slice(),
                    o.column(i).to_data().buffers()[0].as_slice()
                );
            }
        }
    }

    #[test]
    fn an_inline_arrow_result_is_masked_with_its_schema_kept() {
        let original = [batch(1..4), batch(4..6)];
        let body = arrow_response(&stream(&original), json!([]), 5);
        let s = shape_response(&body, &mask(&["name", "BALANCE", "created", "note"])).unwrap();
        assert_eq!(s.truncated, None);
        let d = data(&s.body.unwrap());
        assert_eq!(d["total"], json!(5));
        assert_eq!(d["queryResultFormat"], json!("arrow"));
        assert_masked(&inline_of(&d), &original);
    }

    #[test]
    fn arrow_chunks_are_masked_and_a_truncation_cuts_across_batches() {
        let inline = stream(&[batch(1..4), batch(4..6)]);
        let chunk = stream(&[batch(6..9), batch(9..11)]);
        let chunks = json!([{"url": "u0", "rowCount": 5}, {"url": "u1", "rowCount": 5}]);

        // A mask: the inline rows and every chunk, in Arrow.
        let body = arrow_response(&inline, chunks.clone(), 15);
        let s = shape_response(&body, &mask(&["name", "balance", "created", "note"])).unwrap();
        assert_eq!(s.chunks.len(), 2);
        for k in &s.chunks {
            assert_eq!(k.shape.format, RowFormat::Arrow);
            assert!(k.shape.rewrites());
        }
        let out = shape_chunk(&chunk, &s.chunks[1].shape, 1 << 20).unwrap();
        assert_masked(&out, &[batch(6..9), batch(9..11)]);

        // A truncation inside the inline rows: the first batch whole, one row of the second,
        // no chunks; the counts fixed.
        let cut = Shape {
            mask: vec![],
            row_limit: Some((4, LimitMode::Truncate)),
        };
        let s = shape_response(&body, &cut).unwrap();
        assert!(s.truncated == Some(4) && s.chunks.is_empty());
        let d = data(&s.body.unwrap());
        assert_eq!(
            (d["total"].clone(), d["returned"].clone()),
            (json!(4), json!(4))
        );
        assert_eq!(d["chunks"], json!([]));
        let (got, batches) = read(&inline_of(&d));
        assert_eq!(got, schema());
        assert_eq!(rows_per_batch(&batches), [3, 1]);
        assert_eq!(ids(&batches), [1, 2, 3, 4]);

        // A truncation inside the first chunk: the inline rows untouched (the very same
        // base64), that chunk cut across its batches, the next one dropped.
        let cut = Shape {
            mask: vec![],
            row_limit: Some((9, LimitMode::Truncate)),
        };
        let s = shape_response(&body, &cut).unwrap();
        assert_eq!(s.chunks.len(), 1);
        assert_eq!(s.chunks[0].shape.keep_rows, Some(4));
        assert!(s.chunks[0].shape.columns.is_empty());
        let d = data(&s.body.unwrap());
        assert_eq!(d["rowsetBase64"], data(&body)["rowsetBase64"]);
        assert_eq!(d["chunks"][0]["rowCount"], json!(4));
        assert_eq!(d["total"], json!(9));
        let out = shape_chunk(&chunk, &s.chunks[0].shape, 1 << 20).unwrap();
        let (_, batches) = read(&out);
        assert_eq!(rows_per_batch(&batches), [3, 1]);
        assert_eq!(ids(&batches), [6, 7, 8, 9]);
    }

    #[test]
    fn a_refusing_limit_counts_arrow_rows() {
        let body = serde_json::to_vec(&json!({"success": true, "data": {
            "rowtype": rowtype(), "queryResultFormat": "arrow",
            "rowsetBase64": B64.encode(stream(&[batch(1..4), batch(4..6)])),
        }}))
        .unwrap();
        assert_refused_over(&body, 3, 5);
    }

    #[test]
    fn an_empty_arrow_rowset_stays_empty() {
        let body = arrow_response(b"", json!([{"url": "u0", "rowCount": 5}]), 5);
        let s = shape_response(&body, &mask(&["name"])).unwrap();
        let d = data(&s.body.unwrap());
        assert_eq!(d["rowsetBase64"], json!(""));
        assert_eq!(s.chunks[0].shape.columns[0].value, Some(MASKED_TEXT));
    }

    #[test]
    fn a_gzip_chunk_is_shaped_and_gzipped_again() {
        let chunk = stream(&[batch(6..9)]);
        let shape = ChunkShape {
            columns: masked_columns(rowtype().as_array().unwrap(), &["NAME".into()]),
            keep_rows: Some(2),
            format: RowFormat::Arrow,
        };
        let out = shape_chunk(&crate::snowflake::gzip(&chunk), &shape, 1 << 20).unwrap();
        assert!(out.starts_with(&GZIP_MAGIC));
        let plain = crate::snowflake::decode_body(Some(b"gzip"), &out, 1 << 20).unwrap();
        let (_, batches) = read(&plain);
        assert_eq!(ids(&batches), [6, 7]);
        let name = batches[0]
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert!(name.iter().all(|v| v == Some(MASKED_TEXT)));

        // JSON chunks stored gzip'd too; and the unpacking is bounded.
        let json_shape = ChunkShape {
            columns: vec![MaskedColumn {
                index: 1,
                value: None,
            }],
            keep_rows: None,
            format: RowFormat::Json,
        };
        let packed = crate::snowflake::gzip(br#"["1","a"],["2","b"]"#);
        let out = shape_chunk(&packed, &json_shape, 1 << 20).unwrap();
        let plain = crate::snowflake::decode_body(Some(b"gzip"), &out, 1 << 20).unwrap();
        assert_eq!(&plain[..], br#"["1",null],["2",null]"#);
        assert_eq!(
            shape_chunk(&packed, &json_shape, 8),
            Err(ShapeError::Unreadable)
        );
    }

    #[test]
    fn a_stream_claiming_more_rows_than_its_bytes_hold_is_refused() {
        // A NULL-typed column costs no bytes per row: a header may claim any length.
        let schema = Arc::new(Schema::new(vec![Field::new("X", DataType::Null, true)]));
        let claim = |rows: usize| {
            let b = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(arrow::array::NullArray::new(rows)) as ArrayRef],
            )
            .unwrap();
            let mut out = Vec::new();
            let mut w = StreamWriter::try_new(&mut out, &schema).unwrap();
            w.write(&b).unwrap();
            w.finish().unwrap();
            drop(w);
            out
        };
        let shape = ChunkShape {
            columns: vec![MaskedColumn {
                index: 0,
                value: None,
            }],
            keep_rows: None,
            format: RowFormat::Arrow,
        };
        assert!(shape_chunk(&claim(10), &shape, 1 << 20).is_ok());
        assert_eq!(
            shape_chunk(&claim(1 << 30), &shape, 1 << 20),
            Err(ShapeError::Unreadable)
        );
    }

    #[test]
    fn unreadable_arrow_fails_closed() {
        let good = stream(&[batch(1..4)]);
        let masked = mask(&["name"]);
        for inline in [
            json!("QUJD"),
            json!("not base64!"),
            json!(B64.encode(&good[..good.len() / 2])),
            json!(B64.encode([&good[..], b"trailing"].concat())),
            json!(42),
        ] {
            let body = serde_json::to_vec(&json!({"success": true, "data": {
                "rowtype": rowtype(), "queryResultFormat": "arrow",
                "rowsetBase64": inline, "total": 3
            }}))
            .unwrap();
            assert_eq!(
                shape_response(&body, &masked),
                Err(ShapeError::Unreadable),
                "{inline}"
            );
            // A rule with nothing to do in this result does not read it.
            let other = Shape {
                mask: vec!["ssn".into()],
                row_limit: None,
            };
            assert_eq!(shape_response(&body, &other).unwrap().body, None);
        }
        let shape = ChunkShape {
            columns: vec![MaskedColumn {
                index: 1,
                value: Some(MASKED_TEXT),
            }],
            keep_rows: None,
            format: RowFormat::Arrow,
        };
        assert_eq!(
            shape_chunk(b"\xff\xff\xff\xff", &shape, 1 << 20),
            Err(ShapeError::Unreadable)
        );
        assert_eq!(
            shape_chunk(br#"["1","a"]"#, &shape, 1 << 20),
            Err(ShapeError::Unreadable)
        );
        // A JSON result's chunk that is not JSON is unreadable too.
        let json_shape = ChunkShape {
            format: RowFormat::Json,
            ..shape.clone()
        };
        assert_eq!(
            shape_chunk(&good, &json_shape, 1 << 20),
            Err(ShapeError::Unreadable)
        );
        // A masked column the stream does not have: not the result the rowtype describes.
        let beyond = ChunkShape {
            columns: vec![MaskedColumn {
                index: 6,
                value: None,
            }],
            ..shape
        };
        assert_eq!(
            shape_chunk(&good, &beyond, 1 << 20),
            Err(ShapeError::Unreadable)
        );
    }
}
