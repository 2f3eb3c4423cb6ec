//! The recordings writer: each recorded result is encrypted by the task that submits it (an age
//! X25519 encryption per row is the costliest step, so it runs on every core rather than on one
//! thread); one thread appends the rows to a spool file, makes them durable, acknowledges them,
//! and turns each spool into a Parquet file of the recordings table.
//!
//! Files, under `<recording_dir>/date=YYYY-MM-DD/hour=HH/` (partitioned by the statement's
//! `event_time`, as the audit):
//! - `.<name>.spool`: the rows of a file being filled, each a frame `len u32 | crc32 u32 |
//!   meta_len u32 | meta (JSON) | payload (age ciphertext)` (the frame of [`crate::audit::frame`],
//!   without a head), appended and fdatasync'd (one
//!   fdatasync for every row waiting, as the audit's group commit) before the row is acknowledged;
//! - `.<name>.parquet.tmp`: the Parquet file being built from a closed spool;
//! - `<name>.parquet`: the published file (the audit's atomic publish, [`crate::audit::publish`]:
//!   fsync, digest-log record, rename without replacing, directory fsync), then the spool is
//!   removed.
//!
//! A spool closes at the hour boundary, after `audit.max_file_age_s` when set, at
//! [`MAX_SPOOL_BYTES`], and at shutdown. At start, every spool left behind is published (or, when
//! its `<name>.parquet` exists already, the crash came after the rename: the spool is removed), so
//! an acknowledged row ends up in exactly one published file. A torn last frame (a crash while
//! appending) was never acknowledged and is dropped. Leftover `.tmp` files are removed.
//!
//! The proxy submits a statement's audit completion only once its row is acknowledged, with
//! `recording = "failed"` when the row could not be made durable; a crash before the
//! acknowledgement leaves the statement's intent row (`outcome_unknown`). So the audit's
//! `recording` column never claims a recording that is not, or will not be after recovery, in
//! the table.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::keys::{self, KeyError};
use super::payload::Captured;
use super::table::{META_TABLE_VERSION, Row, TABLE_VERSION, schema, to_batch};
use crate::audit::Clock;
use crate::audit::files::{META_HOST, hour_end, hour_of, is_hidden, partition_rel};
use crate::audit::frame::{Framing, Next};
use crate::audit::publish::{self, PublishHook, Staged, ensure_dir, sync_dir};
use crate::audit::schema::from_micros;

/// A spool closes into a Parquet file once it holds this many bytes.
pub const MAX_SPOOL_BYTES: u64 = 512 * 1024 * 1024;
/// Rows waiting for the writer at most; past it a recording fails rather than wait.
pub const CHANNEL_ROWS: usize = 4096;
/// Rows handed to the Parquet encoder at once when a spool is turned into a file.
const BATCH_ROWS: usize = 64;
/// Largest frame read back (a payload is capped far below).
const MAX_FRAME: u32 = 1 << 30;
/// A spooled row's frame: the shared layout without a head; the body starts with the metadata's
/// length (u32 LE), so it is at least 4 bytes.
const SPOOL: Framing = Framing {
    head_len: 0,
    min_len: 4,
    max_len: MAX_FRAME,
};
/// How often a spool that could not be published is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// Why a recording could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordingError {
    /// The writer has stopped.
    #[error("the recordings writer has stopped")]
    Closed,
    /// More rows wait than the writer takes ([`CHANNEL_ROWS`]).
    #[error("the recordings writer is busy")]
    Busy,
    /// Encrypting the payload failed.
    #[error("recording not encrypted: {0}")]
    Encrypt(String),
    /// The spool could not be written or synced.
    #[error("recording spool write failed: {0}")]
    Io(String),
    /// The encrypted row is larger than a spool frame may be.
    #[error("recording of {0} bytes is too large for the spool")]
    TooLarge(usize),
}

/// What a start-up recovery or a writer did with files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterReport {
    /// Parquet files published.
    pub files_published: u64,
    /// Rows in them.
    pub rows_published: u64,
    /// Spools removed because their file was already published.
    pub spools_already_published: u64,
}

/// What the writer needs; built by the daemon from the configuration.
pub struct WriterOptions {
    /// `recording_dir`.
    pub dir: PathBuf,
    /// This host (as in file names).
    pub host: String,
    /// Where payloads are encrypted to.
    pub recipient: age::x25519::Recipient,
    /// `audit.max_file_age_s`, when set.
    pub max_file_age: Option<Duration>,
    /// Told about every file before it is renamed into place (the digest log).
    pub on_publish: Option<PublishHook>,
    /// Decides when files close.
    pub clock: Arc<dyn Clock>,
}

/// One statement's recorded result, for the writer.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The statement's audit event id.
    pub event_id: String,
    /// Snowflake's query id.
    pub query_id: Option<String>,
    /// The agent's session id.
    pub session_id: Option<String>,
    /// The statement's `event_time`.
    pub event_time: SystemTime,
    /// What was captured.
    pub captured: Captured,
}

/// Where a row's acknowledgement goes.
type Ack = oneshot::Sender<Result<(), RecordingError>>;

/// A row ready for the spool: its encoded frame and its statement's time (which names the hour).
struct Framed {
    event_time: SystemTime,
    frame: Vec<u8>,
}

/// The rows of one batch that go to one hour's spool, written with one call.
struct HourBatch {
    /// The first row's time, which names a spool the batch has to create.
    first: SystemTime,
    frames: Vec<u8>,
    acks: Vec<Ack>,
}

enum Msg {
    Row(Framed, Ack),
    Shutdown(mpsc::Sender<WriterReport>),
}

/// The clonable handle the proxy submits recordings through.
#[derive(Clone)]
pub struct RecordingWriter {
    tx: mpsc::SyncSender<Msg>,
    healthy: Arc<AtomicBool>,
    rows: Arc<AtomicU64>,
    sealer: Arc<Sealer>,
}

/// What a submitting task needs to turn a submission into a spool frame.
struct Sealer {
    recipient: age::x25519::Recipient,
    recipient_text: String,
    host: String,
}

impl Sealer {
    /// Encrypts the payload and encodes the row's frame.
    fn seal(&self, s: Submission) -> Result<Framed, RecordingError> {
        let plaintext = s.captured.payload.to_bytes();
        let ct = keys::encrypt(&self.recipient, &plaintext)
            .map_err(|e: KeyError| RecordingError::Encrypt(e.to_string()))?;
        let meta = Meta {
            event_id: s.event_id,
            query_id: s.query_id,
            session_id: s.session_id,
            event_time_us: micros(s.event_time),
            host: self.host.clone(),
            format: s.captured.payload.format.as_str().to_owned(),
            bytes_kept: s.captured.bytes_kept,
            bytes_seen: s.captured.bytes_seen,
            truncated: s.captured.payload.truncated,
            recipient: self.recipient_text.clone(),
        };
        Ok(Framed {
            event_time: s.event_time,
            frame: frame(&meta, &ct)?,
        })
    }
}

/// Owns the writer's thread.
pub struct RecordingTask {
    tx: mpsc::SyncSender<Msg>,
    thread: Option<JoinHandle<()>>,
    recovery: WriterReport,
}

impl RecordingWriter {
    /// Publishes what a previous run left behind, then starts the writer's thread.
    pub fn start(opts: WriterOptions) -> Result<(RecordingWriter, RecordingTask), io::Error> {
        fs::create_dir_all(&opts.dir)?;
        let host = crate::audit::files::sanitize_host(&opts.host);
        let ctx = Ctx {
            dir: opts.dir,
            host,
            on_publish: opts.on_publish,
        };
        let recovery = recover(&ctx)?;
        if recovery != WriterReport::default() {
            tracing::info!(?recovery, "recordings recovered");
        }
        let (tx, rx) = mpsc::sync_channel(CHANNEL_ROWS);
        let healthy = Arc::new(AtomicBool::new(true));
        let rows = Arc::new(AtomicU64::new(0));
        let sealer = Arc::new(Sealer {
            recipient_text: opts.recipient.to_string(),
            recipient: opts.recipient,
            host: ctx.host.clone(),
        });
        let state = State {
            ctx,
            max_age: opts.max_file_age,
            clock: opts.clock,
            open: BTreeMap::new(),
            failed: Vec::new(),
            next_retry: Instant::now(),
            healthy: healthy.clone(),
            rows: rows.clone(),
            report: WriterReport::default(),
        };
        let thread = std::thread::Builder::new()
            .name("recordings".into())
            .spawn(move || state.run(&rx))?;
        Ok((
            RecordingWriter {
                tx: tx.clone(),
                healthy,
                rows,
                sealer,
            },
            RecordingTask {
                tx,
                thread: Some(thread),
                recovery,
            },
        ))
    }

    /// Hands a recorded result to the writer; resolves once it is durable in the spool. The
    /// payload is encrypted when the future is first polled, by the task polling it, so a caller
    /// that spawns it keeps the encryption off its own path.
    pub fn submit(
        &self,
        s: Submission,
    ) -> impl std::future::Future<Output = Result<(), RecordingError>> + Send + 'static {
        let tx = self.tx.clone();
        let sealer = self.sealer.clone();
        async move {
            let framed = sealer.seal(s)?;
            let (ack, rx) = oneshot::channel();
            match tx.try_send(Msg::Row(framed, ack)) {
                Ok(()) => {}
                Err(mpsc::TrySendError::Full(_)) => return Err(RecordingError::Busy),
                Err(mpsc::TrySendError::Disconnected(_)) => return Err(RecordingError::Closed),
            }
            rx.await.unwrap_or(Err(RecordingError::Closed))
        }
    }

    /// Whether the last spool write succeeded.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Rows made durable since start.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }
}

impl RecordingTask {
    /// What start-up recovery published.
    pub fn recovery(&self) -> &WriterReport {
        &self.recovery
    }

    /// Stops taking rows, publishes every open spool and stops the thread.
    pub async fn shutdown(mut self) -> WriterReport {
        let (rtx, rrx) = mpsc::channel();
        let tx = self.tx.clone();
        let thread = self.thread.take();
        tokio::task::spawn_blocking(move || {
            if tx.send(Msg::Shutdown(rtx)).is_err() {
                return WriterReport::default();
            }
            let report = rrx.recv().unwrap_or_default();
            if let Some(t) = thread {
                let _ = t.join();
            }
            report
        })
        .await
        .unwrap_or_default()
    }
}

struct Ctx {
    dir: PathBuf,
    host: String,
    on_publish: Option<PublishHook>,
}

struct Spool {
    hour: i64,
    dir: PathBuf,
    name: String,
    file: File,
    bytes: u64,
    opened_at: SystemTime,
}

impl Spool {
    fn spool_path(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!(".{name}.spool"))
    }
}

struct State {
    ctx: Ctx,
    max_age: Option<Duration>,
    clock: Arc<dyn Clock>,
    open: BTreeMap<i64, Spool>,
    failed: Vec<(PathBuf, String)>,
    next_retry: Instant,
    healthy: Arc<AtomicBool>,
    rows: Arc<AtomicU64>,
    report: WriterReport,
}

/// The cleartext part of a spooled row.
#[derive(Serialize, Deserialize)]
struct Meta {
    event_id: String,
    query_id: Option<String>,
    session_id: Option<String>,
    event_time_us: i64,
    host: String,
    format: String,
    bytes_kept: u64,
    bytes_seen: u64,
    truncated: bool,
    recipient: String,
}

fn micros(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

fn frame(meta: &Meta, payload: &[u8]) -> Result<Vec<u8>, RecordingError> {
    let m = serde_json::to_vec(meta).unwrap_or_default();
    let mut out = Vec::with_capacity(SPOOL.header_len() + 4 + m.len() + payload.len());
    let start = SPOOL.begin(&mut out, &[]);
    out.extend_from_slice(&u32::try_from(m.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&m);
    out.extend_from_slice(payload);
    SPOOL
        .finish(&mut out, start)
        .map_err(|e| RecordingError::TooLarge(e.0))?;
    Ok(out)
}

/// Reads the next whole frame; `None` at the end or at a torn or damaged frame.
fn read_frame(r: &mut impl io::Read, buf: &mut Vec<u8>) -> io::Result<Option<Row>> {
    if SPOOL.read(r, buf)? != Next::Frame {
        return Ok(None);
    }
    Ok(row(SPOOL.body(buf)))
}

/// The row a spooled frame's body holds; `None` if it does not hold one.
fn row(body: &[u8]) -> Option<Row> {
    let mlen = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
    let meta: Meta = serde_json::from_slice(body.get(4..4 + mlen)?).ok()?;
    Some(Row {
        event_id: meta.event_id,
        query_id: meta.query_id,
        session_id: meta.session_id,
        event_time: from_micros(meta.event_time_us),
        host: meta.host,
        format: meta.format,
        bytes_kept: meta.bytes_kept,
        bytes_seen: meta.bytes_seen,
        truncated: meta.truncated,
        recipient: meta.recipient,
        payload: body.get(4 + mlen..)?.to_vec(),
    })
}

fn props(host: &str) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        // Ciphertext does not compress.
        .set_column_compression(ColumnPath::from("payload"), Compression::UNCOMPRESSED)
        .set_column_dictionary_enabled(ColumnPath::from("payload"), false)
        .set_max_row_group_row_count(Some(BATCH_ROWS))
        .set_key_value_metadata(Some(vec![
            KeyValue::new(META_TABLE_VERSION.to_owned(), TABLE_VERSION.to_string()),
            KeyValue::new(META_HOST.to_owned(), host.to_owned()),
        ]))
        .build()
}

fn io_other(what: &str, path: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what} {}: {e}", path.display()))
}

/// Turns the spool `dir/.<name>.spool` into `dir/<name>.parquet` (see the module docs).
fn publish(ctx: &Ctx, dir: &Path, name: &str) -> io::Result<(u64, bool)> {
    let spool = Spool::spool_path(dir, name);
    let final_name = format!("{name}.parquet");
    let tmp_name = format!(".{name}.parquet.tmp");
    let tmp = dir.join(&tmp_name);
    if dir.join(&final_name).exists() {
        // Published before a crash that came before the spool's removal.
        let _ = fs::remove_file(&tmp);
        fs::remove_file(&spool)?;
        return Ok((0, true));
    }
    let mut reader = BufReader::new(File::open(&spool)?);
    let file = File::create(&tmp)?;
    let sync = file.try_clone()?;
    let mut w = ArrowWriter::try_new(file, schema(), Some(props(&ctx.host)))
        .map_err(|e| io_other("parquet", &tmp, e))?;
    let mut rows = 0u64;
    let mut times: Option<(SystemTime, SystemTime)> = None;
    let mut batch = Vec::with_capacity(BATCH_ROWS);
    let mut buf = Vec::new();
    loop {
        let next = read_frame(&mut reader, &mut buf)?;
        if let Some(r) = &next {
            let t = r.event_time;
            times = Some(times.map_or((t, t), |(a, b)| (a.min(t), b.max(t))));
        }
        let end = next.is_none();
        batch.extend(next);
        if batch.len() >= BATCH_ROWS || (end && !batch.is_empty()) {
            rows += batch.len() as u64;
            let b = to_batch(&batch).map_err(|e| io_other("batch", &tmp, e))?;
            w.write(&b).map_err(|e| io_other("parquet", &tmp, e))?;
            batch.clear();
        }
        if end {
            break;
        }
    }
    if rows == 0 {
        drop(w);
        let _ = fs::remove_file(&tmp);
        fs::remove_file(&spool)?;
        sync_dir(dir)?;
        return Ok((0, false));
    }
    w.close().map_err(|e| io_other("parquet", &tmp, e))?;
    let staged = Staged {
        dir,
        file: &sync,
        tmp_name: &tmp_name,
        name: &final_name,
        rows,
        times: times.unwrap_or((SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH)),
    };
    publish::publish(&staged, ctx.on_publish.as_ref()).map_err(io::Error::other)?;
    fs::remove_file(&spool)?;
    sync_dir(dir)?;
    Ok((rows, false))
}

/// Publishes the spools a previous run left, and removes leftover temporary files.
fn recover(ctx: &Ctx) -> io::Result<WriterReport> {
    let mut report = WriterReport::default();
    for date in sorted_dirs(&ctx.dir, "date=")? {
        for hour in sorted_dirs(&date, "hour=")? {
            let mut spools = Vec::new();
            for e in fs::read_dir(&hour)?.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if let Some(name) = n.strip_prefix('.').and_then(|s| s.strip_suffix(".spool")) {
                    spools.push(name.to_owned());
                } else if n.starts_with('.') && n.ends_with(".parquet.tmp") {
                    let _ = fs::remove_file(e.path());
                }
            }
            spools.sort();
            for name in spools {
                let (rows, already) = publish(ctx, &hour, &name)?;
                if already {
                    report.spools_already_published += 1;
                } else if rows > 0 {
                    report.files_published += 1;
                    report.rows_published += rows;
                }
            }
        }
    }
    Ok(report)
}

fn sorted_dirs(dir: &Path, prefix: &str) -> io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    out.sort();
    Ok(out)
}

impl State {
    fn run(mut self, rx: &mpsc::Receiver<Msg>) {
        loop {
            let mut batch = Vec::new();
            let mut shutdown = None;
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(m) => batch.push(m),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.close_all();
                    return;
                }
            }
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let mut by_hour: BTreeMap<i64, HourBatch> = BTreeMap::new();
            for m in batch {
                match m {
                    Msg::Row(f, ack) => {
                        let b = by_hour
                            .entry(hour_of(f.event_time))
                            .or_insert_with(|| HourBatch {
                                first: f.event_time,
                                frames: Vec::new(),
                                acks: Vec::new(),
                            });
                        b.frames.extend_from_slice(&f.frame);
                        b.acks.push(ack);
                    }
                    Msg::Shutdown(reply) => shutdown = Some(reply),
                }
            }
            let mut acks = Vec::new();
            for (hour, b) in by_hour {
                let r = self.append(hour, b.first, &b.frames);
                acks.extend(b.acks.into_iter().map(|a| (r.clone(), a)));
            }
            // One fdatasync per spool written to, then the acknowledgements.
            let mut sync_failed = None;
            for s in self.open.values() {
                if let Err(e) = s.file.sync_data() {
                    sync_failed = Some(e.to_string());
                }
            }
            if let Some(e) = &sync_failed {
                tracing::error!(error = %e, "recordings spool sync failed");
                // What the spools hold may be lost: close them so new rows start clean files.
                let hours: Vec<i64> = self.open.keys().copied().collect();
                for h in hours {
                    self.close(h);
                }
            }
            self.healthy.store(sync_failed.is_none(), Ordering::Relaxed);
            for (r, ack) in acks {
                let r = match (r, &sync_failed) {
                    (Ok(()), Some(e)) => Err(RecordingError::Io(e.clone())),
                    (r, _) => r,
                };
                if r.is_ok() {
                    self.rows.fetch_add(1, Ordering::Relaxed);
                }
                let _ = ack.send(r);
            }
            if let Some(reply) = shutdown {
                self.close_all();
                let _ = reply.send(self.report.clone());
                return;
            }
            self.close_due();
        }
    }

    /// Appends `frames` (whole frames, the rows of one hour) to that hour's spool. A failed write
    /// is cut back to where the spool ended before it, so no row of a failed batch is published.
    fn append(
        &mut self,
        hour: i64,
        first: SystemTime,
        frames: &[u8],
    ) -> Result<(), RecordingError> {
        if !self.open.contains_key(&hour) {
            let spool = self
                .create(hour, first)
                .map_err(|e| RecordingError::Io(e.to_string()))?;
            self.open.insert(hour, spool);
        }
        let Some(spool) = self.open.get_mut(&hour) else {
            return Err(RecordingError::Io("no spool".into()));
        };
        match spool.file.write_all(frames) {
            Ok(()) => {
                spool.bytes += frames.len() as u64;
                Ok(())
            }
            Err(e) => {
                // What came before this batch is whole: publish that.
                tracing::error!(error = %e, "recordings spool write failed");
                let _ = spool.file.set_len(spool.bytes);
                self.close(hour);
                Err(RecordingError::Io(e.to_string()))
            }
        }
    }

    fn create(&self, hour: i64, first: SystemTime) -> io::Result<Spool> {
        let dir = ensure_dir(&self.ctx.dir, &partition_rel(hour)).map_err(io::Error::other)?;
        let t = DateTime::<Utc>::from(first);
        let id = uuid::Uuid::now_v7().simple().to_string();
        let name = format!(
            "{}-{}-{}",
            self.ctx.host,
            t.format("%Y%m%dT%H%M%S%.6fZ"),
            &id[id.len() - 8..]
        );
        let path = Spool::spool_path(&dir, &name);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        sync_dir(&dir)?;
        Ok(Spool {
            hour,
            dir,
            name,
            file,
            bytes: 0,
            opened_at: self.clock.now(),
        })
    }

    fn close(&mut self, hour: i64) {
        let Some(s) = self.open.remove(&hour) else {
            return;
        };
        let _ = s.file.sync_data();
        self.publish_or_keep(s.dir, s.name);
    }

    fn publish_or_keep(&mut self, dir: PathBuf, name: String) {
        match publish(&self.ctx, &dir, &name) {
            Ok((rows, _)) => {
                if rows > 0 {
                    self.report.files_published += 1;
                    self.report.rows_published += rows;
                    tracing::debug!(file = %dir.join(format!("{name}.parquet")).display(), rows, "recordings file published");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, spool = %name, "recordings file not published; retrying");
                let _ = fs::remove_file(dir.join(format!(".{name}.parquet.tmp")));
                self.failed.push((dir, name));
            }
        }
    }

    fn close_due(&mut self) {
        let now = self.clock.now();
        let due: Vec<i64> = self
            .open
            .values()
            .filter(|s| {
                now >= hour_end(s.hour)
                    || s.bytes >= MAX_SPOOL_BYTES
                    || self
                        .max_age
                        .is_some_and(|a| now.duration_since(s.opened_at).is_ok_and(|d| d >= a))
            })
            .map(|s| s.hour)
            .collect();
        for h in due {
            self.close(h);
        }
        if !self.failed.is_empty() && Instant::now() >= self.next_retry {
            self.next_retry = Instant::now() + RETRY;
            for (dir, name) in std::mem::take(&mut self.failed) {
                self.publish_or_keep(dir, name);
            }
        }
    }

    fn close_all(&mut self) {
        let hours: Vec<i64> = self.open.keys().copied().collect();
        for h in hours {
            self.close(h);
        }
        for (dir, name) in std::mem::take(&mut self.failed) {
            if let Err(e) = publish(&self.ctx, &dir, &name) {
                tracing::error!(error = %e, spool = %name, "recordings spool left for the next start");
            }
        }
    }
}

/// Whether a directory entry of the recordings directory is one readers skip.
pub fn hidden(name: &str) -> bool {
    is_hidden(name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::ManualClock;
    use crate::audit::publish::ClosedFile;
    use crate::recording::payload::{Capture, Status};
    use std::sync::Mutex;
    use std::time::UNIX_EPOCH;

    fn submission(t: SystemTime, id: &str) -> Submission {
        let mut c = Capture::new(1 << 20);
        c.response(
            br#"{"success":true,"data":{"rowtype":[{"name":"A"}],"rowset":[["secret-cell"]]}}"#,
        );
        Submission {
            event_id: id.into(),
            query_id: Some(format!("q-{id}")),
            session_id: Some("s".into()),
            event_time: t,
            captured: c.finish(),
        }
    }

    fn parquet_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for d in sorted_dirs(dir, "date=").unwrap() {
            for h in sorted_dirs(&d, "hour=").unwrap() {
                for e in fs::read_dir(&h).unwrap().flatten() {
                    out.push(e.path());
                }
            }
        }
        out.sort();
        out
    }

    fn read_rows(path: &Path) -> Vec<Row> {
        let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            File::open(path).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        r.flat_map(|b| super::super::table::from_batch(&b.unwrap()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn rows_are_published_once_and_spools_survive_a_crash() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("rec");
        let key = tmp.path().join("k");
        let public = keys::keygen(&key, "t").unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let clock = Arc::new(ManualClock::new(t));
        let published = Arc::new(Mutex::new(Vec::new()));
        let seen = published.clone();
        let opts = |clock: Arc<ManualClock>| WriterOptions {
            dir: dir.clone(),
            host: "h".into(),
            recipient: keys::parse_recipient(&public).unwrap(),
            max_file_age: None,
            on_publish: Some(Arc::new({
                let seen = seen.clone();
                move |f: &ClosedFile| {
                    seen.lock().unwrap().push(f.clone());
                    Ok(())
                }
            })),
            clock,
        };
        let (w, task) = RecordingWriter::start(opts(clock.clone())).unwrap();
        w.submit(submission(t, "e1")).await.unwrap();
        w.submit(submission(t + Duration::from_secs(1), "e2"))
            .await
            .unwrap();
        // A crash: the thread is gone without closing the spool.
        drop(w);
        std::mem::forget(task);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            parquet_files(&dir)
                .iter()
                .all(|p| is_hidden(&p.file_name().unwrap().to_string_lossy()))
        );
        // A torn frame after the acknowledged rows.
        let spool = parquet_files(&dir).into_iter().next().unwrap();
        let mut f = OpenOptions::new().append(true).open(&spool).unwrap();
        f.write_all(&[9, 9, 9]).unwrap();

        let (w, task) = RecordingWriter::start(opts(clock.clone())).unwrap();
        assert_eq!(task.recovery().files_published, 1);
        assert_eq!(task.recovery().rows_published, 2);
        let files = parquet_files(&dir);
        assert_eq!(files.len(), 1, "{files:?}");
        let rows = read_rows(&files[0]);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].event_id, "e1");
        assert_eq!(rows[0].format, "json");
        assert!(
            !fs::read(&files[0])
                .unwrap()
                .windows(11)
                .any(|w| w == b"secret-cell")
        );
        let ids = keys::read_identities(&key).unwrap();
        let plain = keys::decrypt(&ids, &rows[1].payload).unwrap();
        let p = crate::recording::payload::Payload::from_bytes(&plain).unwrap();
        assert_eq!(p.rowset[0][0], "secret-cell");
        assert_eq!(published.lock().unwrap().len(), 1);
        assert_eq!(published.lock().unwrap()[0].rows, 2);

        // The hour boundary closes a file; shutdown closes the rest.
        w.submit(submission(t + Duration::from_secs(2), "e3"))
            .await
            .unwrap();
        clock.set(hour_end(hour_of(t)));
        w.submit(submission(hour_end(hour_of(t)), "e4"))
            .await
            .unwrap();
        // The writer closes due spools after acknowledging a batch: once the next row of the new
        // hour is acknowledged, the closing that followed e4 has happened.
        w.submit(submission(hour_end(hour_of(t)), "e5"))
            .await
            .unwrap();
        assert_eq!(
            parquet_files(&dir)
                .iter()
                .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
                .count(),
            2
        );
        let r = task.shutdown().await;
        assert_eq!(r.files_published, 2);
        let files: Vec<_> = parquet_files(&dir);
        assert_eq!(files.len(), 3, "{files:?}");
        assert!(
            files
                .iter()
                .all(|p| !is_hidden(&p.file_name().unwrap().to_string_lossy()))
        );
        assert_eq!(published.lock().unwrap().len(), 3);
        let _ = Status::Full;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_rows_of_two_hours_each_land_once_in_their_hours_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("rec");
        let key = tmp.path().join("k");
        let public = keys::keygen(&key, "t").unwrap();
        // 10 s before an hour boundary: the rows fall on both sides of it.
        let t = UNIX_EPOCH + Duration::from_secs(1_700_002_790);
        let (w, task) = RecordingWriter::start(WriterOptions {
            dir: dir.clone(),
            host: "h".into(),
            recipient: keys::parse_recipient(&public).unwrap(),
            max_file_age: None,
            on_publish: None,
            clock: Arc::new(ManualClock::new(t)),
        })
        .unwrap();
        // Submitted all at once, so that rows of both hours share the writer's batches.
        let pending: Vec<_> = (0..64u64)
            .map(|i| {
                let at = t + Duration::from_secs(if i % 2 == 0 { 1 } else { 20 });
                tokio::spawn(w.submit(submission(at, &format!("e{i}"))))
            })
            .collect();
        for p in pending {
            p.await.unwrap().unwrap();
        }
        assert_eq!(w.rows(), 64);
        let r = task.shutdown().await;
        assert_eq!((r.files_published, r.rows_published), (2, 64));
        let ids = keys::read_identities(&key).unwrap();
        let mut seen = Vec::new();
        for f in parquet_files(&dir) {
            let rows = read_rows(&f);
            let hours: std::collections::BTreeSet<i64> =
                rows.iter().map(|r| hour_of(r.event_time)).collect();
            assert_eq!(hours.len(), 1, "{f:?} holds rows of {hours:?}");
            for row in rows {
                let plain = keys::decrypt(&ids, &row.payload).unwrap();
                assert!(plain.windows(11).any(|w| w == b"secret-cell"));
                seen.push(row.event_id);
            }
        }
        seen.sort();
        let mut want: Vec<String> = (0..64).map(|i| format!("e{i}")).collect();
        want.sort();
        assert_eq!(seen, want);
    }

    /// A crash after the digest log heard of a file but before its rename leaves the spool and a
    /// temporary file; the next start removes the temporary file and publishes the spool.
    #[test]
    fn a_crash_before_the_rename_leaves_a_spool_the_next_start_publishes() {
        let tmp = tempfile::tempdir().unwrap();
        let public = keys::keygen(&tmp.path().join("k"), "t").unwrap();
        let sealer = Sealer {
            recipient: keys::parse_recipient(&public).unwrap(),
            recipient_text: public.trim().to_owned(),
            host: "h".into(),
        };
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let dir = ensure_dir(tmp.path(), &partition_rel(hour_of(t))).unwrap();
        let mut spool = Vec::new();
        for id in ["e1", "e2"] {
            spool.extend(sealer.seal(submission(t, id)).unwrap().frame);
        }
        fs::write(Spool::spool_path(&dir, "n"), &spool).unwrap();
        let dying = Ctx {
            dir: tmp.path().to_owned(),
            host: "h".into(),
            on_publish: Some(Arc::new(|_: &ClosedFile| panic!("the process dies here"))),
        };
        let crashed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| publish(&dying, &dir, "n")));
        assert!(crashed.is_err());
        let names = |dir: &Path| {
            let mut v: Vec<String> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&dir), vec![".n.parquet.tmp", ".n.spool"]);

        let ctx = Ctx {
            on_publish: None,
            ..dying
        };
        let r = recover(&ctx).unwrap();
        assert_eq!((r.files_published, r.rows_published), (1, 2));
        assert_eq!(names(&dir), vec!["n.parquet"]);
        let ids: Vec<String> = read_rows(&dir.join("n.parquet"))
            .into_iter()
            .map(|r| r.event_id)
            .collect();
        assert_eq!(ids, vec!["e1", "e2"]);
    }

    #[test]
    fn a_spool_whose_file_was_published_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("date=2023-11-14/hour=22");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(".n.spool"), b"").unwrap();
        fs::write(dir.join("n.parquet"), b"x").unwrap();
        fs::write(dir.join(".m.parquet.tmp"), b"x").unwrap();
        let ctx = Ctx {
            dir: tmp.path().to_owned(),
            host: "h".into(),
            on_publish: None,
        };
        let r = recover(&ctx).unwrap();
        assert_eq!(r.spools_already_published, 1);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec!["n.parquet"]);
    }
}
