//! Parquet files of the audit table: partition layout, names and writer settings; a finished file
//! goes through [`publish`](super::publish), the atomic publish the recordings table shares.
//!
//! Layout: `<audit_dir>/date=YYYY-MM-DD/hour=HH/<host>-<first event time>-<first seq>.parquet`,
//! partitioned by `event_time` in UTC. While a file is written it is named `.<name>.tmp`; readers
//! (DuckDB, Spark, pyarrow) skip names starting with `.`, so nobody ever sees a half-written file.
//! Each file's key-value metadata holds the schema version, the host, the id of the journal its rows
//! came from and the journal sequence numbers it holds ([`META_JOURNAL_SEQS`]): that is what lets
//! recovery tell which journaled events are already in a published file.
//!
//! This module does not decide when a file closes (the writer does) nor read files for people
//! (`readback` does).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::{KeyValue, ParquetMetaData};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::types::ColumnPath;
use uuid::Uuid;

use super::event::Event;
use super::journal::SeqRanges;
pub(crate) use super::publish::ensure_dir;
use super::publish::{self, PublishError, Staged};
pub use super::publish::{ClosedFile, PublishHook};
use super::schema::{
    COLUMNS, EventBatchBuilder, META_SCHEMA_VERSION, SCHEMA_VERSION, SchemaError, schema,
};

/// Key-value metadata key: the id of the journal the file's rows came from.
pub const META_JOURNAL_ID: &str = "snowtrail.journal_id";
/// Key-value metadata key: the journal sequence numbers the file holds, as ranges (`1-5,9-12`).
pub const META_JOURNAL_SEQS: &str = "snowtrail.journal_seqs";
/// Key-value metadata key: the host that wrote the file.
pub const META_HOST: &str = "snowtrail.host";
/// Microseconds in an hour.
const HOUR_US: i64 = 3_600_000_000;
/// Rows buffered in Arrow builders before they are handed to the Parquet encoder.
const BUFFER_ROWS: usize = 4096;

/// Why a Parquet file could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The Parquet library failed.
    #[error("parquet {path}: {source}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: ParquetError,
    },
    /// Events could not be turned into a batch.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The finished file could not be made durable and visible.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| FileError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn pq_err<'a>(path: &'a Path) -> impl FnOnce(ParquetError) -> FileError + 'a {
    move |source| FileError::Parquet {
        path: path.to_owned(),
        source,
    }
}

/// The UTC hour an instant falls in, as hours since the epoch; the partition key.
pub fn hour_of(t: SystemTime) -> i64 {
    let us = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    };
    us.div_euclid(HOUR_US)
}

/// The first instant after hour `hour`.
pub fn hour_end(hour: i64) -> SystemTime {
    super::schema::from_micros((hour + 1).saturating_mul(HOUR_US))
}

/// The partition directory of hour `hour`, relative to the audit directory.
pub fn partition_rel(hour: i64) -> PathBuf {
    let t = DateTime::<Utc>::from_timestamp(hour.saturating_mul(3600), 0).unwrap_or_default();
    PathBuf::from(t.format("date=%Y-%m-%d").to_string()).join(t.format("hour=%H").to_string())
}

/// Keeps a host name usable in file names: letters, digits, `.`, `_` and `-`, never leading `.`/`_`.
pub fn sanitize_host(host: &str) -> String {
    let s: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_start_matches(['.', '_']).to_owned();
    if s.is_empty() { "host".to_owned() } else { s }
}

/// Whether a directory entry is a file readers skip (a temporary or hidden file).
pub fn is_hidden(name: &str) -> bool {
    name.starts_with('.') || name.starts_with('_')
}

/// The Parquet writer settings of the audit table: zstd, dictionaries for low-cardinality columns,
/// page statistics, row groups of `row_group_rows`.
pub fn writer_properties(row_group_rows: usize, host: &str, journal_id: Uuid) -> WriterProperties {
    let level = ZstdLevel::try_new(3).unwrap_or_default();
    let kv = vec![
        KeyValue::new(META_SCHEMA_VERSION.to_owned(), SCHEMA_VERSION.to_string()),
        KeyValue::new(META_HOST.to_owned(), host.to_owned()),
        KeyValue::new(META_JOURNAL_ID.to_owned(), journal_id.to_string()),
    ];
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_dictionary_enabled(true)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .set_key_value_metadata(Some(kv));
    for c in COLUMNS.iter().filter(|c| !c.dictionary) {
        b = b.set_column_dictionary_enabled(ColumnPath::from(c.name), false);
    }
    b.build()
}

/// What a writer needs to know to create files.
#[derive(Clone)]
pub struct FileSettings {
    /// The audit directory (partitions below it).
    pub audit_dir: PathBuf,
    /// The host name as used in file names.
    pub host: String,
    /// The journal the rows come from.
    pub journal_id: Uuid,
    /// Rows per row group.
    pub row_group_rows: usize,
    /// Told about every file before it is published, if set.
    pub on_publish: Option<PublishHook>,
}

impl std::fmt::Debug for FileSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSettings")
            .field("audit_dir", &self.audit_dir)
            .field("host", &self.host)
            .field("journal_id", &self.journal_id)
            .field("row_group_rows", &self.row_group_rows)
            .field("on_publish", &self.on_publish.is_some())
            .finish()
    }
}

/// A Parquet file being written under its temporary name.
pub struct OpenFile {
    /// The hour partition.
    pub hour: i64,
    /// When the writer opened it (writer clock).
    pub opened_at: SystemTime,
    /// Whether it was opened for an hour whose file had already closed.
    pub late: bool,
    dir: PathBuf,
    name: String,
    tmp: PathBuf,
    sync_handle: File,
    writer: ArrowWriter<File>,
    builder: EventBatchBuilder,
    seqs: SeqRanges,
    rows: u64,
    times: Option<(SystemTime, SystemTime)>,
    on_publish: Option<PublishHook>,
}

/// A file that is now visible under its final name.
#[derive(Debug, Clone)]
pub struct Published {
    /// The final path.
    pub path: PathBuf,
    /// The journal sequence numbers it holds.
    pub seqs: SeqRanges,
    /// Rows written.
    pub rows: u64,
}

/// A file that could not be published; its temporary file is gone and its events are still in the
/// journal.
#[derive(Debug)]
pub struct Abandoned {
    /// The hour partition.
    pub hour: i64,
    /// The journal sequence numbers it held.
    pub seqs: SeqRanges,
    /// Why.
    pub error: FileError,
}

impl OpenFile {
    /// Creates the temporary file for hour `hour`, named after its first event.
    pub fn create(
        settings: &FileSettings,
        hour: i64,
        first: &Event,
        first_seq: u64,
        opened_at: SystemTime,
        late: bool,
    ) -> Result<Self, FileError> {
        let dir = ensure_dir(&settings.audit_dir, &partition_rel(hour))?;
        let t = DateTime::<Utc>::from(first.event_time);
        let name = format!(
            "{}-{}-{first_seq}.parquet",
            settings.host,
            t.format("%Y%m%dT%H%M%S%.6fZ")
        );
        let tmp = dir.join(format!(".{name}.tmp"));
        let file = File::create(&tmp).map_err(io_err("create", &tmp))?;
        let sync_handle = file.try_clone().map_err(io_err("open", &tmp))?;
        let props = writer_properties(settings.row_group_rows, &settings.host, settings.journal_id);
        let writer = ArrowWriter::try_new(file, schema(), Some(props)).map_err(pq_err(&tmp))?;
        Ok(OpenFile {
            hour,
            opened_at,
            late,
            dir,
            name,
            tmp,
            sync_handle,
            writer,
            builder: EventBatchBuilder::new(BUFFER_ROWS),
            seqs: SeqRanges::default(),
            rows: 0,
            times: None,
            on_publish: settings.on_publish.clone(),
        })
    }

    /// The path the file will have once published (it is written under a hidden temporary name).
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// Adds an event (journal sequence number `seq`) as a row.
    pub fn append(&mut self, seq: u64, event: &Event) -> Result<(), FileError> {
        self.builder.append(event);
        self.seqs.insert(seq);
        self.rows += 1;
        let t = event.event_time;
        self.times = Some(match self.times {
            Some((a, b)) => (a.min(t), b.max(t)),
            None => (t, t),
        });
        if self.builder.len() >= BUFFER_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    /// Records that the file also stands for journal record `seq`: an intent that the last row
    /// appended completes (so recovery knows the intent is published with it).
    pub fn cover(&mut self, seq: u64) {
        self.seqs.insert(seq);
    }

    /// Hands buffered rows to the Parquet encoder.
    pub fn flush(&mut self) -> Result<(), FileError> {
        if self.builder.is_empty() {
            return Ok(());
        }
        let batch = self.builder.finish()?;
        self.writer.write(&batch).map_err(pq_err(&self.tmp))
    }

    /// Approximate size of the finished file so far.
    pub fn size(&self) -> u64 {
        (self.writer.bytes_written() + self.writer.in_progress_size()) as u64
    }

    /// Rows so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Finishes the file, makes it durable and renames it into place (never over an existing file).
    pub fn publish(mut self) -> Result<Published, Abandoned> {
        match self.try_publish() {
            Ok(path) => Ok(Published {
                path,
                seqs: self.seqs,
                rows: self.rows,
            }),
            Err(error) => {
                let _ = fs::remove_file(&self.tmp);
                Err(Abandoned {
                    hour: self.hour,
                    seqs: self.seqs,
                    error,
                })
            }
        }
    }

    /// Gives up on the file: removes the temporary file and returns what it held.
    pub fn abandon(self, error: FileError) -> Abandoned {
        let hour = self.hour;
        Abandoned {
            hour,
            seqs: self.discard(),
            error,
        }
    }

    /// Removes the temporary file and returns the sequence numbers it held.
    pub fn discard(self) -> SeqRanges {
        let _ = fs::remove_file(&self.tmp);
        self.seqs
    }

    fn try_publish(&mut self) -> Result<PathBuf, FileError> {
        self.flush()?;
        self.writer.append_key_value_metadata(KeyValue::new(
            META_JOURNAL_SEQS.to_owned(),
            self.seqs.to_string(),
        ));
        self.writer.finish().map_err(pq_err(&self.tmp))?;
        let tmp_name = self
            .tmp
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let staged = Staged {
            dir: &self.dir,
            file: &self.sync_handle,
            tmp_name,
            name: &self.name,
            rows: self.rows,
            times: self.times.unwrap_or((self.opened_at, self.opened_at)),
        };
        Ok(publish::publish(&staged, self.on_publish.as_ref())?)
    }
}

/// Reads a Parquet file's footer (schema, row groups, key-value metadata) without its data.
pub fn read_footer(path: &Path) -> Result<ParquetMetaData, FileError> {
    let f = File::open(path).map_err(io_err("open", path))?;
    let r = SerializedFileReader::new(f).map_err(pq_err(path))?;
    Ok(r.metadata().clone())
}

/// A key of a file's key-value metadata.
pub fn footer_value<'a>(meta: &'a ParquetMetaData, key: &str) -> Option<&'a str> {
    meta.file_metadata()
        .key_value_metadata()?
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_deref())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::EventKind;
    use std::time::Duration;

    #[test]
    fn hours_and_partitions() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000); // 2023-11-14T22:13:20Z
        let h = hour_of(t);
        assert_eq!(partition_rel(h), PathBuf::from("date=2023-11-14/hour=22"));
        assert_eq!(hour_of(hour_end(h) - Duration::from_micros(1)), h);
        assert_eq!(hour_of(hour_end(h)), h + 1);
        assert_eq!(sanitize_host("._a b/c"), "a-b-c");
        assert!(is_hidden(".x.parquet.tmp") && is_hidden("_SUCCESS") && !is_hidden("h-1.parquet"));
    }

    #[test]
    fn publish_is_atomic_and_records_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let settings = FileSettings {
            audit_dir: dir.path().to_owned(),
            host: "h".into(),
            journal_id: Uuid::now_v7(),
            row_group_rows: 10,
            on_publish: None,
        };
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let e = Event::new(EventKind::Query, t, "h");
        let mut f = OpenFile::create(&settings, hour_of(t), &e, 5, t, false).unwrap();
        for s in 5..30 {
            f.append(s, &e).unwrap();
        }
        let part = dir.path().join("date=2023-11-14/hour=22");
        let names: Vec<_> = fs::read_dir(&part)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
        assert!(
            names[0]
                .to_str()
                .unwrap()
                .starts_with(".h-20231114T221320.000000Z-5")
        );
        let p = f.publish().unwrap();
        assert_eq!(p.rows, 25);
        let meta = read_footer(&p.path).unwrap();
        assert_eq!(footer_value(&meta, META_JOURNAL_SEQS), Some("5-29"));
        assert_eq!(
            footer_value(&meta, META_SCHEMA_VERSION),
            Some(SCHEMA_VERSION.to_string().as_str())
        );
        assert_eq!(meta.num_row_groups(), 3);
        let names: Vec<_> = fs::read_dir(&part)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
        // Same name again: never overwritten.
        let mut g = OpenFile::create(&settings, hour_of(t), &e, 5, t, false).unwrap();
        g.append(5, &e).unwrap();
        let q = g.publish().unwrap();
        assert_ne!(q.path, p.path);
    }
}
