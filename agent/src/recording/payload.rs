//! What one recorded statement holds once decrypted, and how it is captured within its caps.
//!
//! The payload is one JSON document (UTF-8), encrypted as a whole into the row's `payload`
//! column:
//!
//! ```json
//! {"version": 1, "format": "json" | "arrow",
//!  "rowtype": [ ...the response's data.rowtype as sent... ],
//!  "rowset": [ [..], [..] ],                    // JSON rows of the response itself
//!  "arrow": "<base64 Arrow IPC stream>",        // data.rowsetBase64 as sent, when Arrow
//!  "chunks": [{"index": 0, "rows": [[..]]} | {"index": 1, "arrow": "<base64 IPC stream>"}],
//!  "error": {"code": "002003", "sql_state": "02000", "message": "..."},
//!  "transfer": {"command": "UPLOAD", "location": "DB.SCHEMA.STAGE/", "sources": ["data.csv"],
//!               "files": [{"method": "PUT", "host": "...", "path": "/...", "status": 200,
//!                          "bytes_sent": 42, "bytes_received": 0}]},
//!  "truncated": false}
//! ```
//!
//! `transfer` is a PUT/GET statement's part: Snowflake's answer to such a statement carries no
//! rows (the driver writes its result table itself, from the transfers it made), so what is
//! recorded is what crossed the agent: the file command, the stage location and the files it
//! names, and each stage transfer request the agent saw for it (its method, host, path without
//! the presigned query, HTTP status and byte counts). The files' bytes are not a statement
//! result and are never recorded, nor are the answer's credentials or encryption material.
//!
//! Absent parts are left out. Rows are kept whole: JSON rows one by one, an Arrow stream or a
//! chunk as a unit, in the order they are seen, until the next one would pass the cap; from then
//! on nothing more is kept and `truncated` is set (chunks download concurrently, so a truncated
//! recording can hold a later chunk and miss an earlier one; `index` says which). `bytes_seen`
//! counts the result the agent saw (decoded where it decoded it, as transferred for a chunk it
//! did not keep), `bytes_kept` what the payload holds, both before encryption.
//!
//! No I/O here: bytes in, a [`Payload`] out.

use std::io::Read as _;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// The payload format version this build writes.
pub const PAYLOAD_VERSION: u32 = 1;

/// How the rows of a result came: the `format` column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// JSON rowsets (and JSON chunks).
    #[default]
    Json,
    /// Arrow IPC streams in `rowsetBase64` (and Arrow chunks).
    Arrow,
}

impl Format {
    /// The name in the `format` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Arrow => "arrow",
        }
    }
}

/// The error envelope of a failed statement, as the workload received it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    /// Snowflake's error code (`code`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// `data.sqlState`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql_state: Option<String>,
    /// `message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One downloaded result chunk's rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChunkPart {
    /// The chunk's position in the response's `chunks` list.
    pub index: usize,
    /// Its rows, for a JSON chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<Value>>,
    /// Its Arrow IPC stream, base64, for an Arrow chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrow: Option<String>,
}

/// A PUT/GET statement's file command and the stage transfers the agent saw for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferPart {
    /// `data.command`: `UPLOAD` (PUT) or `DOWNLOAD` (GET).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// `data.stageInfo.location`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// `data.src_locations`: the files the statement names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// The transfer requests, in the order they ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<TransferFile>,
    /// Transfer requests past [`MAX_TRANSFER_FILES`], counted but not listed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unlisted: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// At most this many transfer requests are listed in one recording.
pub const MAX_TRANSFER_FILES: usize = 10_000;

/// One stage transfer request of a PUT/GET statement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferFile {
    /// The HTTP method (`PUT`, `GET`, `HEAD`, ...).
    pub method: String,
    /// The storage host.
    pub host: String,
    /// The path, without the query (a presigned URL's signature is never kept).
    pub path: String,
    /// The storage's HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Bytes of request body sent.
    pub bytes_sent: u64,
    /// Bytes of response body received.
    pub bytes_received: u64,
}

/// A recorded result: the plaintext of one row's `payload`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// [`PAYLOAD_VERSION`].
    pub version: u32,
    /// JSON or Arrow rows.
    pub format: Format,
    /// `data.rowtype`: the columns' names and Snowflake types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rowtype: Option<Value>,
    /// The response's own JSON rows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rowset: Vec<Value>,
    /// The response's `rowsetBase64` (an Arrow IPC stream), as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrow: Option<String>,
    /// Downloaded chunks, by index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkPart>,
    /// The error envelope of a failed statement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorEnvelope>,
    /// A PUT/GET statement's file command and transfers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferPart>,
    /// Whether a cap stopped the recording before the end of the result.
    #[serde(default)]
    pub truncated: bool,
}

/// Why a payload could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The plaintext is not a payload document.
    #[error("not a recorded result: {0}")]
    Json(#[from] serde_json::Error),
    /// The payload is of a later format than this build reads.
    #[error("recorded result format {0} is newer than this tool's {PAYLOAD_VERSION}")]
    Version(u32),
}

impl Payload {
    /// The payload as its JSON document.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a payload document.
    pub fn from_bytes(bytes: &[u8]) -> Result<Payload, PayloadError> {
        let p: Payload = serde_json::from_slice(bytes)?;
        if p.version > PAYLOAD_VERSION {
            return Err(PayloadError::Version(p.version));
        }
        Ok(p)
    }

    /// The Arrow IPC streams of the payload, decoded from base64, in order (inline, then chunks).
    pub fn arrow_streams(&self) -> Vec<Vec<u8>> {
        let b64 = base64::engine::general_purpose::STANDARD;
        self.arrow
            .iter()
            .chain(self.chunks.iter().filter_map(|c| c.arrow.as_ref()))
            .filter_map(|s| b64.decode(s).ok())
            .filter(|b| !b.is_empty())
            .collect()
    }

    /// The JSON rows of the payload in order: the response's, then each chunk's.
    pub fn json_rows(&self) -> impl Iterator<Item = &Value> {
        self.rowset
            .iter()
            .chain(self.chunks.iter().filter_map(|c| c.rows.as_ref()).flatten())
    }
}

/// How a statement's recording ended: the audit's `recording` column, one of its vocabulary.
pub use crate::audit::RecordingStatus as Status;

/// A statement's result being captured, within the bytes its caps leave it.
#[derive(Debug)]
pub struct Capture {
    limit: u64,
    kept: u64,
    seen: u64,
    reserved: u64,
    payload: Payload,
}

/// A finished capture: what the row and the audit row say.
#[derive(Debug, Clone, PartialEq)]
pub struct Captured {
    /// `full` or `truncated`.
    pub status: Status,
    /// Plaintext bytes of result kept.
    pub bytes_kept: u64,
    /// Bytes of result the agent saw.
    pub bytes_seen: u64,
    /// The payload.
    pub payload: Payload,
}

impl Capture {
    /// A capture that keeps at most `limit` bytes of result.
    pub fn new(limit: u64) -> Capture {
        Capture {
            limit,
            kept: 0,
            seen: 0,
            reserved: 0,
            payload: Payload {
                version: PAYLOAD_VERSION,
                ..Payload::default()
            },
        }
    }

    /// Bytes still free under the cap (reservations for chunk downloads deducted).
    pub fn remaining(&self) -> u64 {
        if self.payload.truncated {
            return 0;
        }
        self.limit.saturating_sub(self.kept + self.reserved)
    }

    /// Bytes kept so far.
    pub fn kept(&self) -> u64 {
        self.kept
    }

    fn take(&mut self, n: u64) -> bool {
        self.seen += n;
        if !self.payload.truncated && self.kept + self.reserved + n <= self.limit {
            self.kept += n;
            true
        } else {
            self.payload.truncated = true;
            false
        }
    }

    /// Counts bytes the workload received that are not kept (a part past the cap).
    pub fn passed(&mut self, n: u64) {
        self.seen += n;
        self.payload.truncated = true;
    }

    /// Sets aside `n` bytes for a chunk download being buffered; `false` (and nothing set aside)
    /// when they are not free.
    pub fn reserve(&mut self, n: u64) -> bool {
        if n <= self.remaining() {
            self.reserved += n;
            true
        } else {
            false
        }
    }

    /// Gives back a reservation (its chunk is kept with [`chunk`](Self::chunk) or dropped).
    pub fn release(&mut self, n: u64) {
        self.reserved = self.reserved.saturating_sub(n);
    }

    /// Captures a statement response (its decoded body, as the workload received it): the row
    /// type, the rows, and for a failed statement the error envelope.
    pub fn response(&mut self, body: &[u8]) {
        #[derive(Deserialize)]
        struct Resp<'a> {
            #[serde(default)]
            success: Option<bool>,
            #[serde(default)]
            code: Option<String>,
            #[serde(default)]
            message: Option<String>,
            #[serde(default, borrow)]
            data: Option<Data<'a>>,
        }
        #[derive(Deserialize)]
        struct Data<'a> {
            #[serde(default, borrow)]
            rowtype: Option<&'a RawValue>,
            #[serde(default, borrow)]
            rowset: Option<Vec<&'a RawValue>>,
            #[serde(default, rename = "rowsetBase64")]
            rowset_base64: Option<String>,
            #[serde(default, rename = "queryResultFormat")]
            format: Option<String>,
            #[serde(default, rename = "sqlState")]
            sql_state: Option<String>,
        }
        let Ok(r) = serde_json::from_slice::<Resp>(body) else {
            // Not a JSON document: counted, not kept.
            self.passed(body.len() as u64);
            return;
        };
        let data = r.data;
        if r.success == Some(false) {
            let e = ErrorEnvelope {
                code: r.code,
                sql_state: data.as_ref().and_then(|d| d.sql_state.clone()),
                message: r.message,
            };
            self.error(e);
            return;
        }
        let Some(d) = data else { return };
        if d.format
            .as_deref()
            .is_some_and(|f| f.eq_ignore_ascii_case("arrow"))
        {
            self.payload.format = Format::Arrow;
        }
        if let Some(rt) = d.rowtype
            && self.take(rt.get().len() as u64)
            && let Ok(v) = serde_json::from_str(rt.get())
        {
            self.payload.rowtype = Some(v);
        }
        for row in d.rowset.unwrap_or_default() {
            if self.take(row.get().len() as u64 + 1)
                && let Ok(v) = serde_json::from_str(row.get())
            {
                self.payload.rowset.push(v);
            }
        }
        if let Some(b64) = d.rowset_base64.filter(|s| !s.is_empty()) {
            let n = base64_decoded_len(&b64);
            if self.take(n) {
                self.payload.arrow = Some(b64);
            }
        }
    }

    /// Captures the error of a statement whose failure the workload learnt from a status
    /// request (an asynchronous statement's monitoring answer), not from a statement response.
    pub fn error(&mut self, e: ErrorEnvelope) {
        if self.take(error_len(&e)) {
            self.payload.error = Some(e);
        }
    }

    /// Captures a PUT/GET statement's file command and the transfers seen for it (counted as
    /// its JSON form).
    pub fn transfer(&mut self, t: TransferPart) {
        let n = serde_json::to_vec(&t).map_or(0, |v| v.len() as u64);
        if self.take(n) {
            self.payload.transfer = Some(t);
        }
    }

    /// Captures downloaded chunk `index` (its bytes as transferred, `gzip` when the download was
    /// gzip-encoded), decoding no more than the cap leaves.
    pub fn chunk(&mut self, index: usize, raw: &[u8], gzip: bool) {
        let body = if gzip {
            let limit = self.remaining();
            let mut out = Vec::new();
            let mut d = flate2::read::GzDecoder::new(raw).take(limit.saturating_add(1));
            if d.read_to_end(&mut out).is_err() || out.len() as u64 > limit {
                self.passed(raw.len() as u64);
                return;
            }
            out
        } else {
            raw.to_vec()
        };
        if self.payload.format == Format::Arrow || body.starts_with(&[0xff, 0xff, 0xff, 0xff]) {
            if self.take(body.len() as u64) {
                self.payload.chunks.push(ChunkPart {
                    index,
                    rows: None,
                    arrow: Some(base64::engine::general_purpose::STANDARD.encode(&body)),
                });
            }
        } else {
            // A JSON chunk is rows joined by commas, without the outer brackets.
            let mut text = Vec::with_capacity(body.len() + 2);
            text.push(b'[');
            text.extend_from_slice(&body);
            text.push(b']');
            let Ok(rows) = serde_json::from_slice::<Vec<&RawValue>>(&text) else {
                self.passed(body.len() as u64);
                return;
            };
            let mut kept = Vec::new();
            for row in rows {
                if self.take(row.get().len() as u64 + 1)
                    && let Ok(v) = serde_json::from_str(row.get())
                {
                    kept.push(v);
                }
            }
            if !kept.is_empty() {
                self.payload.chunks.push(ChunkPart {
                    index,
                    rows: Some(kept),
                    arrow: None,
                });
            }
        }
    }

    /// Ends the capture.
    pub fn finish(mut self) -> Captured {
        self.payload.chunks.sort_by_key(|c| c.index);
        Captured {
            status: if self.payload.truncated {
                Status::Truncated
            } else {
                Status::Full
            },
            bytes_kept: self.kept,
            bytes_seen: self.seen,
            payload: self.payload,
        }
    }
}

/// The bytes an error envelope counts for against the cap.
fn error_len(e: &ErrorEnvelope) -> u64 {
    [&e.code, &e.sql_state, &e.message]
        .iter()
        .map(|s| s.as_ref().map_or(0, |s| s.len() as u64))
        .sum()
}

fn base64_decoded_len(s: &str) -> u64 {
    let pad = s.bytes().rev().take_while(|&b| b == b'=').count();
    ((s.len() / 4) * 3).saturating_sub(pad) as u64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    const JSON_RESULT: &str = r#"{"success":true,"code":null,"message":null,"data":{
        "queryId":"q1","queryResultFormat":"json",
        "rowtype":[{"name":"ID","type":"fixed"},{"name":"NAME","type":"text"}],
        "rowset":[["1","Ada"],["2","Grace"],["3","Alan"]]}}"#;

    #[test]
    fn json_result_round_trips() {
        let mut c = Capture::new(1 << 20);
        c.response(JSON_RESULT.as_bytes());
        let done = c.finish();
        assert_eq!(done.status, Status::Full);
        assert_eq!(done.bytes_kept, done.bytes_seen);
        let p = Payload::from_bytes(&done.payload.to_bytes()).unwrap();
        assert_eq!(p, done.payload);
        assert_eq!(p.format, Format::Json);
        assert_eq!(p.rowtype.unwrap()[1]["name"], "NAME");
        let rows: Vec<_> = done.payload.json_rows().cloned().collect();
        assert_eq!(
            rows,
            vec![
                json!(["1", "Ada"]),
                json!(["2", "Grace"]),
                json!(["3", "Alan"])
            ]
        );
    }

    #[test]
    fn a_cap_keeps_whole_rows_and_flags_the_rest() {
        let mut full = Capture::new(1 << 20);
        full.response(JSON_RESULT.as_bytes());
        let full = full.finish();
        // Room for the row type and one row only.
        let rowtype_len = serde_json::to_string(full.payload.rowtype.as_ref().unwrap())
            .unwrap()
            .len() as u64;
        let mut c = Capture::new(rowtype_len + 15);
        c.response(JSON_RESULT.as_bytes());
        let t = c.finish();
        assert_eq!(t.status, Status::Truncated);
        assert!(t.payload.truncated);
        assert_eq!(t.payload.rowset, vec![json!(["1", "Ada"])]);
        assert!(t.bytes_kept < t.bytes_seen);
        assert_eq!(t.bytes_seen, full.bytes_seen);
        // Once truncated, a later part that would fit is not kept either.
        let mut c = Capture::new(rowtype_len + 15);
        c.response(JSON_RESULT.as_bytes());
        c.chunk(0, b"[\"9\",\"x\"]", false);
        let t = c.finish();
        assert!(t.payload.chunks.is_empty());
        assert_eq!(t.bytes_seen, full.bytes_seen + 10);
    }

    #[test]
    fn chunks_gzip_and_reservations() {
        let mut c = Capture::new(1 << 20);
        c.response(JSON_RESULT.as_bytes());
        let gz = {
            use std::io::Write as _;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(br#"["5","E"],["6","F"]"#).unwrap();
            e.finish().unwrap()
        };
        assert!(c.reserve(100));
        c.chunk(1, &gz, true);
        c.release(100);
        c.chunk(0, br#"["4","D"]"#, false);
        let done = c.finish();
        assert_eq!(done.status, Status::Full);
        let ids: Vec<_> = done.payload.json_rows().map(|r| r[0].clone()).collect();
        assert_eq!(ids, vec!["1", "2", "3", "4", "5", "6"]);
        // A reservation counts against the cap until it is released.
        let mut c = Capture::new(50);
        assert!(c.reserve(40));
        assert!(!c.reserve(20));
        assert_eq!(c.remaining(), 10);
    }

    #[test]
    fn a_file_command_and_a_status_error_are_recorded_within_the_cap() {
        let part = TransferPart {
            command: Some("UPLOAD".into()),
            location: Some("DB1.SCHEMA1.STG1/".into()),
            sources: vec!["data1.csv".into()],
            files: vec![TransferFile {
                method: "PUT".into(),
                host: "stage.example".into(),
                path: "/fs_bucket/DB1/SCHEMA1/STG1/data1.csv.gz".into(),
                status: Some(200),
                bytes_sent: 42,
                bytes_received: 0,
            }],
            unlisted: 0,
        };
        let mut c = Capture::new(1 << 20);
        c.transfer(part.clone());
        let done = c.finish();
        assert_eq!(done.status, Status::Full);
        let p = Payload::from_bytes(&done.payload.to_bytes()).unwrap();
        assert_eq!(p.transfer.as_ref(), Some(&part));
        assert_eq!(
            done.bytes_kept,
            serde_json::to_vec(&part).unwrap().len() as u64
        );
        // Too big for the cap: counted, not kept.
        let mut c = Capture::new(10);
        c.transfer(part);
        let t = c.finish();
        assert_eq!(t.status, Status::Truncated);
        assert!(t.payload.transfer.is_none() && t.bytes_kept == 0 && t.bytes_seen > 10);

        let mut c = Capture::new(1 << 20);
        c.error(ErrorEnvelope {
            code: Some("000604".into()),
            sql_state: Some("57014".into()),
            message: Some("SQL execution canceled".into()),
        });
        let e = c.finish();
        assert_eq!(e.payload.error.unwrap().code.as_deref(), Some("000604"));
        assert_eq!(e.bytes_kept, 6 + 5 + 22);
    }

    #[test]
    fn errors_and_arrow() {
        let mut c = Capture::new(1 << 20);
        c.response(br#"{"success":false,"code":"002003","message":"Object 'NOPE' does not exist","data":{"sqlState":"02000","queryId":"q"}}"#);
        let done = c.finish();
        let e = done.payload.error.unwrap();
        assert_eq!(e.code.as_deref(), Some("002003"));
        assert_eq!(e.sql_state.as_deref(), Some("02000"));
        assert!(e.message.unwrap().contains("NOPE"));

        let b64 = base64::engine::general_purpose::STANDARD.encode([0xffu8; 10]);
        let body = format!(
            r#"{{"success":true,"data":{{"queryResultFormat":"arrow","rowtype":[],"rowsetBase64":"{b64}"}}}}"#
        );
        let mut c = Capture::new(1 << 20);
        c.response(body.as_bytes());
        let done = c.finish();
        assert_eq!(done.payload.format, Format::Arrow);
        assert_eq!(done.payload.arrow_streams(), vec![vec![0xffu8; 10]]);
        assert_eq!(done.bytes_kept, 2 + 10);
        assert!(
            Payload::from_bytes(br#"{"version":99,"format":"json","truncated":false}"#).is_err()
        );
    }
}
