//! Reading recordings back: the rows of a session from the recordings table, decrypted with the
//! auditor's key and shown as tables (`snowtrail replay --key`). Without the key, only what the
//! table says in clear (which statements were recorded, how much) is shown.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Value, json};

use super::keys::{self, KeyError};
use super::payload::{ErrorEnvelope, Format, Payload, PayloadError, TransferPart};
use super::table::{Row, from_batch};
use crate::audit::files::is_hidden;

/// Rows shown per result without `--full`.
pub const FIRST_ROWS: usize = 10;

/// Why recordings could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// A directory or file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A recordings file is not readable Parquet of the recordings table.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The key could not be read.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Writing the output failed.
    #[error("output: {0}")]
    Output(#[from] io::Error),
}

fn sorted(dir: &Path) -> Result<Vec<PathBuf>, ReplayError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ReplayError::Io {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| !is_hidden(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    v.sort();
    Ok(v)
}

/// Every published recordings file under `dir` (`date=*/hour=*/*.parquet`).
pub fn list_files(dir: &Path) -> Result<Vec<PathBuf>, ReplayError> {
    let mut out = Vec::new();
    for date in sorted(dir)?.into_iter().filter(|p| p.is_dir()) {
        for hour in sorted(&date)?.into_iter().filter(|p| p.is_dir()) {
            out.extend(
                sorted(&hour)?
                    .into_iter()
                    .filter(|p| p.extension().is_some_and(|e| e == "parquet")),
            );
        }
    }
    Ok(out)
}

/// The rows of one recordings file.
pub fn read_file(path: &Path) -> Result<Vec<Row>, ReplayError> {
    let bad = |m: String| ReplayError::File {
        path: path.to_owned(),
        message: m,
    };
    let f = File::open(path).map_err(|source| ReplayError::Io {
        path: path.to_owned(),
        source,
    })?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.build())
        .map_err(|e| bad(e.to_string()))?;
    let mut rows = Vec::new();
    for b in reader {
        let b = b.map_err(|e| bad(e.to_string()))?;
        rows.extend(from_batch(&b).map_err(|e| bad(e.to_string()))?);
    }
    Ok(rows)
}

/// The rows of a session (and of one query id, when given), oldest first.
pub fn session_rows(
    dir: &Path,
    session: &str,
    query_id: Option<&str>,
) -> Result<Vec<Row>, ReplayError> {
    let mut rows = Vec::new();
    for f in list_files(dir)? {
        rows.extend(read_file(&f)?.into_iter().filter(|r| {
            r.session_id.as_deref() == Some(session)
                && query_id.is_none_or(|q| r.query_id.as_deref() == Some(q))
        }));
    }
    rows.sort_by_key(|r| r.event_time);
    Ok(rows)
}

/// A decrypted result as a table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    /// Column names and Snowflake types, from the row type.
    pub columns: Vec<(String, String)>,
    /// Cells as text (`None` for SQL NULL).
    pub rows: Vec<Vec<Option<String>>>,
    /// The error envelope of a failed statement.
    pub error: Option<ErrorEnvelope>,
    /// Whether a cap stopped the recording.
    pub truncated: bool,
    /// A PUT/GET statement's file command and transfers.
    pub transfer: Option<TransferPart>,
}

/// The columns a PUT/GET recording is shown with: one row per transfer request.
const TRANSFER_COLUMNS: [&str; 6] = [
    "method",
    "host",
    "path",
    "status",
    "bytes_sent",
    "bytes_received",
];

/// Reads a payload as a table: JSON rows as sent, Arrow IPC streams decoded; a PUT/GET
/// recording without rows of its own as its transfers.
pub fn table_of(p: &Payload) -> Result<Table, String> {
    let columns: Vec<(String, String)> = p
        .rowtype
        .as_ref()
        .and_then(Value::as_array)
        .map(|cols| {
            cols.iter()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap_or_default().to_owned(),
                        c["type"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut rows = Vec::new();
    match p.format {
        Format::Json => {
            for r in p.json_rows() {
                let cells = r.as_array().cloned().unwrap_or_default();
                rows.push(
                    cells
                        .iter()
                        .map(|v| match v {
                            Value::Null => None,
                            Value::String(s) => Some(s.clone()),
                            other => Some(other.to_string()),
                        })
                        .collect(),
                );
            }
        }
        Format::Arrow => {
            for stream in p.arrow_streams() {
                let reader =
                    arrow::ipc::reader::StreamReader::try_new(io::Cursor::new(stream), None)
                        .map_err(|e| format!("Arrow stream: {e}"))?;
                for batch in reader {
                    let batch = batch.map_err(|e| format!("Arrow stream: {e}"))?;
                    let opts = FormatOptions::default();
                    let fmts = batch
                        .columns()
                        .iter()
                        .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| format!("Arrow stream: {e}"))?;
                    for i in 0..batch.num_rows() {
                        rows.push(
                            batch
                                .columns()
                                .iter()
                                .zip(&fmts)
                                .map(|(c, f)| (!c.is_null(i)).then(|| f.value(i).to_string()))
                                .collect(),
                        );
                    }
                }
            }
        }
    }
    let mut columns = columns;
    if let Some(t) = p
        .transfer
        .as_ref()
        .filter(|_| columns.is_empty() && rows.is_empty())
    {
        columns = TRANSFER_COLUMNS
            .iter()
            .map(|c| ((*c).to_owned(), "text".to_owned()))
            .collect();
        for f in &t.files {
            rows.push(vec![
                Some(f.method.clone()),
                Some(f.host.clone()),
                Some(f.path.clone()),
                f.status.map(|s| s.to_string()),
                Some(f.bytes_sent.to_string()),
                Some(f.bytes_received.to_string()),
            ]);
        }
    }
    Ok(Table {
        columns,
        rows,
        error: p.error.clone(),
        truncated: p.truncated,
        transfer: p.transfer.clone(),
    })
}

/// Decrypts a row's payload with `ids` and reads it as a table.
pub fn decrypt_row(ids: &[age::x25519::Identity], row: &Row) -> Result<Table, String> {
    let plain = keys::decrypt(ids, &row.payload).map_err(|e| e.to_string())?;
    let p = Payload::from_bytes(&plain).map_err(|e: PayloadError| e.to_string())?;
    table_of(&p)
}

/// What `replay` shows of the recordings.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// The auditor's key file (`recording keygen --out`); without it results stay encrypted.
    pub key: Option<PathBuf>,
    /// Every row rather than the first [`FIRST_ROWS`].
    pub full: bool,
    /// Only this query id.
    pub query_id: Option<String>,
}

/// One recorded result as JSON (for `replay --json`).
pub fn result_json(row: &Row, table: Option<&Result<Table, String>>, full: bool) -> Value {
    let mut v = json!({
        "event_id": row.event_id,
        "query_id": row.query_id,
        "event_time": crate::audit::digest::time_text(row.event_time),
        "format": row.format,
        "truncated": row.truncated,
        "bytes_kept": row.bytes_kept,
        "bytes_seen": row.bytes_seen,
        "encrypted": table.is_none(),
    });
    match table {
        Some(Ok(t)) => {
            let n = if full {
                t.rows.len()
            } else {
                t.rows.len().min(FIRST_ROWS)
            };
            v["columns"] = json!(
                t.columns
                    .iter()
                    .map(|(n, ty)| json!({"name": n, "type": ty}))
                    .collect::<Vec<_>>()
            );
            v["row_count"] = json!(t.rows.len());
            v["rows"] = json!(t.rows[..n]);
            v["error"] = serde_json::to_value(&t.error).unwrap_or(Value::Null);
            if let Some(tr) = &t.transfer {
                v["transfer"] = serde_json::to_value(tr).unwrap_or(Value::Null);
            }
        }
        Some(Err(e)) => v["decrypt_error"] = json!(e),
        None => {}
    }
    v
}

fn cell(s: &Option<String>) -> String {
    let s = s.as_deref().unwrap_or("NULL");
    let one: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one.chars().count() > 40 {
        format!("{}…", one.chars().take(39).collect::<String>())
    } else {
        one
    }
}

/// Writes one result as a text table.
pub fn print_table(t: &Table, full: bool, out: &mut dyn Write) -> io::Result<()> {
    if let Some(e) = &t.error {
        writeln!(
            out,
            "    error {} (sqlState {}): {}",
            e.code.as_deref().unwrap_or("-"),
            e.sql_state.as_deref().unwrap_or("-"),
            e.message.as_deref().unwrap_or("")
        )?;
        return Ok(());
    }
    let n = if full {
        t.rows.len()
    } else {
        t.rows.len().min(FIRST_ROWS)
    };
    let head: Vec<String> = t.columns.iter().map(|(n, _)| n.clone()).collect();
    let body: Vec<Vec<String>> = t.rows[..n]
        .iter()
        .map(|r| r.iter().map(cell).collect())
        .collect();
    let cols = head.len().max(body.iter().map(Vec::len).max().unwrap_or(0));
    let mut width = vec![0usize; cols];
    for r in std::iter::once(&head).chain(&body) {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |r: &[String]| {
        r.iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = width[i]))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    if !head.is_empty() {
        writeln!(out, "    {}", line(&head).trim_end())?;
        writeln!(
            out,
            "    {}",
            width
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .join("-+-")
        )?;
    }
    for r in &body {
        writeln!(out, "    {}", line(r).trim_end())?;
    }
    if n < t.rows.len() {
        writeln!(
            out,
            "    … {} more rows (--full shows all)",
            t.rows.len() - n
        )?;
    }
    if t.truncated {
        writeln!(
            out,
            "    (recording truncated by a cap: the workload received more)"
        )?;
    }
    Ok(())
}

/// The recorded results of a session as text, after its timeline; returns how many there are.
pub fn print_results(
    rows: &[Row],
    opts: &ReplayOptions,
    out: &mut dyn Write,
) -> Result<usize, ReplayError> {
    let ids = opts.key.as_deref().map(keys::read_identities).transpose()?;
    if rows.is_empty() {
        writeln!(out, "no recorded results for this session")?;
        return Ok(0);
    }
    match &ids {
        None => writeln!(
            out,
            "{} recorded results; they are encrypted: pass --key FILE (the private key from `snowtrail recording keygen`) to read them",
            rows.len()
        )?,
        Some(_) => writeln!(out, "{} recorded results:", rows.len())?,
    }
    for r in rows {
        writeln!(
            out,
            "  query {} ({}, {}, {} of {} bytes kept)",
            r.query_id.as_deref().unwrap_or("-"),
            r.format,
            if r.truncated { "truncated" } else { "full" },
            r.bytes_kept,
            r.bytes_seen
        )?;
        if let Some(ids) = &ids {
            match decrypt_row(ids, r) {
                Ok(t) => print_table(&t, opts.full, out)?,
                Err(e) => writeln!(out, "    cannot read: {e}")?,
            }
        }
    }
    Ok(rows.len())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::recording::payload::Capture;
    use std::sync::Arc;

    #[test]
    fn arrow_and_json_payloads_read_as_tables() {
        use arrow::array::{Int64Array, StringArray};
        use arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![
            Field::new("ID", DataType::Int64, false),
            Field::new("NAME", DataType::Utf8, true),
        ]));
        let batch = arrow::record_batch::RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec![Some("Ada"), None])),
            ],
        )
        .unwrap();
        let mut ipc = Vec::new();
        {
            let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &schema).unwrap();
            w.write(&batch).unwrap();
            w.finish().unwrap();
        }
        use base64::Engine as _;
        let body = format!(
            r#"{{"success":true,"data":{{"queryResultFormat":"arrow","rowtype":[{{"name":"ID","type":"fixed"}},{{"name":"NAME","type":"text"}}],"rowsetBase64":"{}"}}}}"#,
            base64::engine::general_purpose::STANDARD.encode(&ipc)
        );
        let mut c = Capture::new(1 << 20);
        c.response(body.as_bytes());
        let t = table_of(&c.finish().payload).unwrap();
        assert_eq!(t.columns[1], ("NAME".to_owned(), "text".to_owned()));
        assert_eq!(
            t.rows,
            vec![
                vec![Some("1".to_owned()), Some("Ada".to_owned())],
                vec![Some("2".to_owned()), None]
            ]
        );
        let mut out = Vec::new();
        print_table(&t, false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("ID | NAME") && text.contains("2  | NULL"),
            "{text}"
        );
    }
}
