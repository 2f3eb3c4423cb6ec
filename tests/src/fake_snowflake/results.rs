//! Result sets and their wire forms: `rowtype`, JSON `rowset`, Arrow `rowsetBase64`, and the bodies
//! of downloadable chunks (JSON rows or Arrow IPC streams).
//!
//! Values are kept as Snowflake's JSON rowsets carry them: strings, or null. The Arrow form follows
//! the captured answers: an IPC *stream* whose fields carry `logicalType`, `precision`, `scale` and
//! `charLength` metadata; FIXED columns as Int64, TEXT as Utf8, BOOLEAN as Boolean, REAL as Float64,
//! TIMESTAMP_NTZ(9) as a struct of `epoch` (Int64 seconds) and `fraction` (Int32 nanoseconds).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Array, Int64Array, Int64Builder, StringBuilder,
    StructArray,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema};
use arrow::record_batch::RecordBatch;
use base64::Engine as _;
use serde_json::{Value, json};

/// Snowflake's statement type ids (`statementTypeId`).
pub mod statement_type {
    /// SELECT.
    pub const SELECT: u64 = 0x1000;
    /// INSERT.
    pub const INSERT: u64 = 0x3100;
    /// UPDATE.
    pub const UPDATE: u64 = 0x3200;
    /// DELETE.
    pub const DELETE: u64 = 0x3300;
    /// DDL (CREATE, DROP, ALTER).
    pub const DDL: u64 = 0x6000;
    /// PUT / GET / LIST and other file statements.
    pub const FILE: u64 = 0x7000;
    /// A multi-statement request's parent.
    pub const MULTI: u64 = 0xA000;
}

/// A column's Snowflake type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    /// NUMBER(38, scale).
    Fixed {
        /// Digits after the point.
        scale: u32,
    },
    /// VARCHAR.
    Text,
    /// BOOLEAN.
    Boolean,
    /// FLOAT / DOUBLE.
    Real,
    /// TIMESTAMP_NTZ(9); values are kept as Snowflake's JSON rowsets carry them, seconds since
    /// the epoch with nine fraction digits (`1700000001.000001000`).
    TimestampNtz,
}

impl ColType {
    /// The type of a column declared as `decl` in a CREATE TABLE.
    pub fn from_decl(decl: &str) -> ColType {
        let d = decl.to_ascii_lowercase();
        let base = d.split(['(', ' ']).next().unwrap_or("");
        match base {
            "int" | "integer" | "bigint" | "smallint" | "tinyint" | "byteint" => {
                ColType::Fixed { scale: 0 }
            }
            "number" | "numeric" | "decimal" => {
                let scale = d
                    .split_once('(')
                    .and_then(|(_, r)| r.trim_end_matches(')').split(',').nth(1))
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0);
                ColType::Fixed { scale }
            }
            "boolean" => ColType::Boolean,
            "float" | "float4" | "float8" | "double" | "real" => ColType::Real,
            "timestamp" | "timestamp_ntz" | "datetime" => ColType::TimestampNtz,
            _ => ColType::Text,
        }
    }

    fn logical(self) -> &'static str {
        match self {
            ColType::Fixed { .. } => "FIXED",
            ColType::Text => "TEXT",
            ColType::Boolean => "BOOLEAN",
            ColType::Real => "REAL",
            ColType::TimestampNtz => "TIMESTAMP_NTZ",
        }
    }
}

/// One result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name as the driver shows it.
    pub name: String,
    /// Its type.
    pub ty: ColType,
}

impl Column {
    /// A column.
    pub fn new(name: impl Into<String>, ty: ColType) -> Column {
        Column {
            name: name.into(),
            ty,
        }
    }
}

/// A result: columns and rows of optional strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultSet {
    /// The columns.
    pub columns: Vec<Column>,
    /// The rows, each as long as `columns`.
    pub rows: Vec<Vec<Option<String>>>,
    /// `statementTypeId`.
    pub statement_type: u64,
}

impl ResultSet {
    /// A one-column, one-row text status (`Table T1 successfully created.`).
    pub fn status(text: impl Into<String>, statement_type: u64) -> ResultSet {
        ResultSet {
            columns: vec![Column::new("status", ColType::Text)],
            rows: vec![vec![Some(text.into())]],
            statement_type,
        }
    }

    /// A DML count (`number of rows inserted`).
    pub fn count(label: &str, n: usize, statement_type: u64) -> ResultSet {
        ResultSet {
            columns: vec![Column::new(label, ColType::Fixed { scale: 0 })],
            rows: vec![vec![Some(n.to_string())]],
            statement_type,
        }
    }

    /// `n` generated rows with these columns: FIXED → 1..=n, TEXT → `<column>_<i>`, REAL →
    /// `<i>.5`, BOOLEAN → `i` is even, TIMESTAMP_NTZ → 1700000000 + `i` seconds and `i`
    /// microseconds.
    pub fn generated(columns: Vec<Column>, n: usize, statement_type: u64) -> ResultSet {
        let rows = (1..=n)
            .map(|i| {
                columns
                    .iter()
                    .map(|c| {
                        Some(match c.ty {
                            ColType::Fixed { .. } => i.to_string(),
                            ColType::Real => format!("{i}.5"),
                            ColType::Boolean => if i % 2 == 0 { "1" } else { "0" }.to_owned(),
                            ColType::Text => format!("{}_{i}", c.name.to_ascii_lowercase()),
                            ColType::TimestampNtz => {
                                format!("{}.{:09}", 1_700_000_000 + i, (i % 1000) * 1000)
                            }
                        })
                    })
                    .collect()
            })
            .collect();
        ResultSet {
            columns,
            rows,
            statement_type,
        }
    }

    /// The `rowtype` array, field for field as Snowflake sends it.
    pub fn rowtype(&self) -> Value {
        Value::Array(
            self.columns
                .iter()
                .map(|c| {
                    let (byte_length, length, scale, precision) = match c.ty {
                        ColType::Fixed { scale } => {
                            (json!(null), json!(null), json!(scale), json!(38))
                        }
                        ColType::Text => (
                            json!(16_777_216),
                            json!(16_777_216),
                            json!(null),
                            json!(null),
                        ),
                        ColType::Boolean | ColType::Real => {
                            (json!(null), json!(null), json!(null), json!(null))
                        }
                        ColType::TimestampNtz => (json!(null), json!(null), json!(9), json!(0)),
                    };
                    json!({
                        "name": c.name,
                        "database": "",
                        "schema": "",
                        "table": "",
                        "nullable": true,
                        "type": c.ty.logical().to_ascii_lowercase(),
                        "byteLength": byte_length,
                        "length": length,
                        "scale": scale,
                        "precision": precision,
                        "collation": null,
                    })
                })
                .collect(),
        )
    }

    /// Rows `range` as a JSON `rowset`.
    pub fn json_rows(rows: &[Vec<Option<String>>]) -> Value {
        json!(rows)
    }

    /// Rows as the body of a JSON chunk: rows joined by commas, without the outer brackets.
    pub fn json_chunk(rows: &[Vec<Option<String>>]) -> Vec<u8> {
        let parts: Vec<String> = rows
            .iter()
            .map(|r| serde_json::to_string(r).unwrap_or_else(|_| "[]".into()))
            .collect();
        parts.join(",").into_bytes()
    }

    /// Rows as an Arrow IPC stream with Snowflake's field metadata.
    pub fn arrow_stream(&self, rows: &[Vec<Option<String>>]) -> anyhow::Result<Vec<u8>> {
        let fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| {
                let (dt, char_length, scale, precision) = match c.ty {
                    ColType::Fixed { scale } => (DataType::Int64, "0", scale, "38"),
                    ColType::Text => (DataType::Utf8, "16777216", 0, "38"),
                    ColType::Boolean => (DataType::Boolean, "0", 0, "38"),
                    ColType::Real => (DataType::Float64, "0", 0, "38"),
                    ColType::TimestampNtz => (DataType::Struct(timestamp_fields()), "0", 9, "0"),
                };
                let meta: HashMap<String, String> = [
                    ("logicalType", c.ty.logical().to_owned()),
                    ("precision", precision.to_owned()),
                    ("scale", scale.to_string()),
                    ("charLength", char_length.to_owned()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
                Field::new(&c.name, dt, true).with_metadata(meta)
            })
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let arrays: Vec<ArrayRef> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| column_array(c.ty, rows.iter().map(|r| r.get(i).cloned().flatten())))
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), arrays)?;
        let mut out = Vec::new();
        {
            let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema)?;
            w.write(&batch)?;
            w.finish()?;
        }
        Ok(out)
    }

    /// Rows as `rowsetBase64` (empty when there are no rows, as Snowflake sends it).
    pub fn arrow_base64(&self, rows: &[Vec<Option<String>>]) -> anyhow::Result<String> {
        if rows.is_empty() {
            return Ok(String::new());
        }
        Ok(base64::engine::general_purpose::STANDARD.encode(self.arrow_stream(rows)?))
    }
}

fn column_array(ty: ColType, values: impl Iterator<Item = Option<String>>) -> ArrayRef {
    match ty {
        ColType::Fixed { scale } => {
            let mut b = Int64Builder::new();
            for v in values {
                b.append_option(v.and_then(|s| scaled_integer(&s, scale)));
            }
            Arc::new(b.finish())
        }
        ColType::Text => {
            let mut b = StringBuilder::new();
            for v in values {
                b.append_option(v);
            }
            Arc::new(b.finish())
        }
        ColType::Boolean => {
            let mut b = BooleanBuilder::new();
            for v in values {
                b.append_option(v.map(|s| matches!(s.to_ascii_lowercase().as_str(), "1" | "true")));
            }
            Arc::new(b.finish())
        }
        ColType::Real => {
            let mut b = Float64Builder::new();
            for v in values {
                b.append_option(v.and_then(|s| s.parse().ok()));
            }
            Arc::new(b.finish())
        }
        ColType::TimestampNtz => {
            let parsed: Vec<Option<(i64, i32)>> = values
                .map(|v| v.as_deref().and_then(epoch_fraction))
                .collect();
            let epoch = Int64Array::from_iter_values(parsed.iter().map(|p| p.map_or(0, |p| p.0)));
            let fraction =
                Int32Array::from_iter_values(parsed.iter().map(|p| p.map_or(0, |p| p.1)));
            let nulls = NullBuffer::from_iter(parsed.iter().map(Option::is_some));
            Arc::new(StructArray::new(
                timestamp_fields(),
                vec![Arc::new(epoch), Arc::new(fraction)],
                Some(nulls),
            ))
        }
    }
}

/// Snowflake's TIMESTAMP_NTZ struct: `epoch` seconds and `fraction` nanoseconds, both required
/// (a NULL timestamp is a null struct).
fn timestamp_fields() -> Fields {
    Fields::from(vec![
        Field::new("epoch", DataType::Int64, false),
        Field::new("fraction", DataType::Int32, false),
    ])
}

/// `"1700000001.000001000"` → (1700000001, 1000): seconds and nanoseconds.
fn epoch_fraction(s: &str) -> Option<(i64, i32)> {
    let (secs, frac) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    Some((secs.parse().ok()?, digits.parse().ok()?))
}

/// `"12.5"` at scale 2 → 1250, as Snowflake's Arrow FIXED columns carry scaled integers.
fn scaled_integer(s: &str, scale: u32) -> Option<i64> {
    let (int, frac) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
    let mut frac: String = frac.chars().take(scale as usize).collect();
    while frac.len() < scale as usize {
        frac.push('0');
    }
    format!("{int}{frac}").parse().ok()
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;
    use arrow::array::Array as _;

    use super::*;

    #[test]
    fn arrow_stream_reads_back() -> anyhow::Result<()> {
        let rs = ResultSet::generated(
            vec![
                Column::new("ID", ColType::Fixed { scale: 0 }),
                Column::new("NAME", ColType::Text),
            ],
            3,
            statement_type::SELECT,
        );
        let bytes = rs.arrow_stream(&rs.rows)?;
        let reader = arrow::ipc::reader::StreamReader::try_new(&bytes[..], None)?;
        let schema = reader.schema();
        assert_eq!(schema.field(0).metadata()["logicalType"], "FIXED");
        let mut n = 0;
        for b in reader {
            n += b?.num_rows();
        }
        assert_eq!(n, 3);
        assert_eq!(scaled_integer("12.5", 2), Some(1250));
        Ok(())
    }

    #[test]
    fn timestamps_are_epoch_fraction_structs() -> anyhow::Result<()> {
        let rs = ResultSet {
            columns: vec![Column::new("T", ColType::from_decl("timestamp_ntz(9)"))],
            rows: vec![vec![Some("1700000001.000001000".into())], vec![None]],
            statement_type: statement_type::SELECT,
        };
        assert_eq!(rs.rowtype()[0]["type"], "timestamp_ntz");
        let bytes = rs.arrow_stream(&rs.rows)?;
        let mut reader = arrow::ipc::reader::StreamReader::try_new(&bytes[..], None)?;
        assert_eq!(reader.schema().field(0).metadata()["scale"], "9");
        let batch = reader.next().context("no batch")??;
        let t = batch
            .column(0)
            .as_any()
            .downcast_ref::<StructArray>()
            .context("not a struct")?;
        assert!(t.is_valid(0) && t.is_null(1));
        let epoch = t
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .context("epoch")?;
        let fraction = t
            .column(1)
            .as_any()
            .downcast_ref::<Int32Array>()
            .context("fraction")?;
        assert_eq!((epoch.value(0), fraction.value(0)), (1_700_000_001, 1000));
        Ok(())
    }

    #[test]
    fn json_chunk_has_no_brackets() {
        let rows = vec![vec![Some("1".into())], vec![None]];
        assert_eq!(ResultSet::json_chunk(&rows), br#"["1"],[null]"#.to_vec());
    }
}
