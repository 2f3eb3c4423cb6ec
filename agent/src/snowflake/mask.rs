//! Result shaping: column masking and row limits applied to a query response and its chunks
//! (no I/O: bytes in, bytes out).
//!
//! What the driver sees in a masked column: text columns (`text`, Snowflake's `VARCHAR`/`STRING`
//! family) carry [`MASKED_TEXT`]; every other type carries NULL. The drivers convert JSON cells by
//! their column's type (connector 5.x parses `fixed` cells as decimal numbers, `date` as day
//! counts, `timestamp_*` as epoch fractions, `boolean` as `1`/`0`), so a placeholder string in a
//! non-text column would fail the whole fetch; NULL is the one value every type accepts. Column
//! names are matched to `rowtype` names as Snowflake resolves identifiers: a rule column written
//! `"Quoted"` matches exactly, an unquoted one case-insensitively (a superset of Snowflake's
//! upper-casing, so a quoted mixed-case alias of the same name is masked too).
//!
//! Only JSON results are rewritten here. An Arrow result (`rowsetBase64`, Arrow chunks) that holds
//! a masked column, or that a truncating row limit would have to cut, is reported as
//! [`ShapeError::Arrow`], and the caller fails closed.

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
    /// The result is in Arrow form, which this version does not rewrite.
    #[error("the result is in Arrow format, which the agent cannot mask or truncate")]
    Arrow,
    /// The body is not the JSON shape expected.
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

/// What a chunk download of a shaped result must become.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChunkShape {
    /// Columns to mask.
    pub columns: Vec<MaskedColumn>,
    /// Keep at most this many rows of the chunk (the chunk a truncation cuts through).
    pub keep_rows: Option<usize>,
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
    pub truncated: bool,
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
fn masked_columns(rowtype: &[Value], mask: &[String]) -> Vec<MaskedColumn> {
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

fn mask_row(row: &mut Value, columns: &[MaskedColumn]) {
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
            truncated: false,
        });
    };
    let rowtype = data
        .get("rowtype")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let columns = masked_columns(&rowtype, &shape.mask);
    let arrow = data
        .get("queryResultFormat")
        .and_then(Value::as_str)
        .is_some_and(|f| f.eq_ignore_ascii_case("arrow"))
        || data
            .get("rowsetBase64")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty());
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
        .map_or(0, Vec::len);
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
    if arrow && (!columns.is_empty() || keep.is_some()) {
        return Err(ShapeError::Arrow);
    }
    if columns.is_empty() && keep.is_none() {
        return Ok(Shaped {
            body: None,
            chunks: (0..chunk_rows.len())
                .map(|index| KeptChunk {
                    index,
                    shape: ChunkShape::default(),
                })
                .collect(),
            truncated: false,
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
        truncated: keep.is_some(),
    })
}

fn set_counts(data: &mut Map<String, Value>, kept: u64) {
    for key in ["total", "returned"] {
        if data.contains_key(key) {
            data.insert(key.into(), Value::from(kept));
        }
    }
}

/// Shapes a JSON chunk body (rows joined by commas, without the outer brackets).
pub fn shape_json_chunk(body: &[u8], shape: &ChunkShape) -> Result<Vec<u8>, ShapeError> {
    let trimmed = body.trim_ascii();
    if trimmed.first() != Some(&b'[') {
        return Err(ShapeError::Arrow);
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

    fn data(body: &[u8]) -> Value {
        serde_json::from_slice::<Value>(body).unwrap()["data"].clone()
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
        assert!(!s.truncated);
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
        assert!(s.truncated);
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
        assert!(s.truncated && s.chunks.is_empty());
        let d = data(&s.body.unwrap());
        assert_eq!(d["rowset"].as_array().unwrap().len(), 2);
        assert_eq!(d["chunks"], json!([]));
        assert_eq!(d["total"], json!(2));
    }

    #[test]
    fn a_refusing_limit_refuses_larger_results_only() {
        let body = response(json!([["1", "a", "2"], ["2", "b", "3"]]), json!([]), 2);
        let refuse = |n| Shape {
            mask: vec![],
            row_limit: Some((n, LimitMode::Refuse)),
        };
        assert_eq!(
            shape_response(&body, &refuse(1)),
            Err(ShapeError::TooManyRows { total: 2, limit: 1 })
        );
        assert_eq!(shape_response(&body, &refuse(2)).unwrap().body, None);
    }

    #[test]
    fn arrow_results_with_masked_columns_are_refused() {
        let body = serde_json::to_vec(&json!({"success": true, "data": {
            "rowtype": [{"name": "EMAIL", "type": "text"}],
            "queryResultFormat": "arrow", "rowsetBase64": "QUJD", "total": 1
        }}))
        .unwrap();
        let mask = Shape {
            mask: vec!["email".into()],
            row_limit: None,
        };
        assert_eq!(shape_response(&body, &mask), Err(ShapeError::Arrow));
        let other = Shape {
            mask: vec!["ssn".into()],
            row_limit: Some((1, LimitMode::Truncate)),
        };
        assert_eq!(shape_response(&body, &other).unwrap().body, None);
        assert_eq!(
            shape_json_chunk(b"\xff\xff\xff\xff", &ChunkShape::default()),
            Err(ShapeError::Arrow)
        );
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
