//! The audit trail read back for people: `audit ls`, `audit tail`, `audit verify` and `replay`, as
//! library functions that write to any `Write` and return a `Result`, so the CLI and the tests
//! share them. Tables show each outcome whole (decision, `ok` or `failed` and the error code), and
//! a login as its driver, authenticator, role and warehouse.
//!
//! They read the Parquet files under an audit directory (no daemon needed) and never change them.
//! Argument parsing and exit codes belong to the `cli` module.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use arrow::datatypes::SchemaRef;
use chrono::{DateTime, SecondsFormat, Utc};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::errors::ParquetError;

use super::digest_verify::{ChainOptions, ChainReport, check_chains};
use super::event::{Event, EventKind};
use super::files::{FileError, footer_value, hour_of, is_hidden, partition_rel, read_footer};
use super::schema::{META_SCHEMA_VERSION, SCHEMA_VERSION, SchemaError, events_from_batch, schema};
use super::vocabulary::LifecycleAction;

/// A temporary file younger than this is taken for one the agent is still writing.
const TEMP_IN_PROGRESS: Duration = Duration::from_secs(2 * 3600);

/// Why a read-back command failed (as opposed to finding problems, which `verify` reports).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadbackError {
    /// A directory could not be listed.
    #[error("{path}: {source}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A file's footer could not be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// A file's data could not be read.
    #[error("{path}: {source}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: ParquetError,
    },
    /// A file's rows are not audit events.
    #[error("{path}: {source}")]
    Schema {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: SchemaError,
    },
    /// Writing the output failed.
    #[error("output: {0}")]
    Output(#[from] io::Error),
}

/// One published Parquet file of the audit directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// The file's path.
    pub path: PathBuf,
    /// Its partition, `date=YYYY-MM-DD/hour=HH`.
    pub partition: String,
    /// Its size in bytes.
    pub bytes: u64,
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<fs::DirEntry>, ReadbackError> {
    let io_err = |source| ReadbackError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut entries = fs::read_dir(dir)
        .map_err(io_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err)?;
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

/// Walks `date=*/hour=*` under `dir`, calling `f(partition, entry)` for every file, hidden ones too.
fn walk(
    dir: &Path,
    mut f: impl FnMut(&str, &fs::DirEntry) -> Result<(), ReadbackError>,
) -> Result<(), ReadbackError> {
    for date in read_dir_sorted(dir)? {
        let dname = date.file_name().to_string_lossy().into_owned();
        if !dname.starts_with("date=") || !date.path().is_dir() {
            continue;
        }
        for hour in read_dir_sorted(&date.path())? {
            let hname = hour.file_name().to_string_lossy().into_owned();
            if !hname.starts_with("hour=") || !hour.path().is_dir() {
                continue;
            }
            let partition = format!("{dname}/{hname}");
            for file in read_dir_sorted(&hour.path())? {
                f(&partition, &file)?;
            }
        }
    }
    Ok(())
}

/// The published Parquet files under `dir`, in partition and name order (temporary files skipped).
pub fn list_files(dir: &Path) -> Result<Vec<FileEntry>, ReadbackError> {
    let mut out = Vec::new();
    walk(dir, |partition, e| {
        let name = e.file_name().to_string_lossy().into_owned();
        if is_hidden(&name) || !name.ends_with(".parquet") {
            return Ok(());
        }
        let bytes = e.metadata().map(|m| m.len()).unwrap_or(0);
        out.push(FileEntry {
            path: e.path(),
            partition: partition.to_owned(),
            bytes,
        });
        Ok(())
    })?;
    Ok(out)
}

fn open_reader(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>, ReadbackError> {
    let f = File::open(path).map_err(|source| ReadbackError::Io {
        path: path.to_owned(),
        source,
    })?;
    ParquetRecordBatchReaderBuilder::try_new(f).map_err(|source| ReadbackError::Parquet {
        path: path.to_owned(),
        source,
    })
}

/// Reads every event of one file.
pub fn read_file_events(path: &Path) -> Result<Vec<Event>, ReadbackError> {
    let reader = open_reader(path)?
        .build()
        .map_err(|source| ReadbackError::Parquet {
            path: path.to_owned(),
            source,
        })?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| ReadbackError::Parquet {
            path: path.to_owned(),
            source: e.into(),
        })?;
        out.extend(
            events_from_batch(&batch).map_err(|source| ReadbackError::Schema {
                path: path.to_owned(),
                source,
            })?,
        );
    }
    Ok(out)
}

/// Reads every event under `dir`, in event time order.
pub fn read_events(dir: &Path) -> Result<Vec<Event>, ReadbackError> {
    let mut out = Vec::new();
    for f in list_files(dir)? {
        out.extend(read_file_events(&f.path)?);
    }
    out.sort_by_key(|e| e.event_time);
    Ok(out)
}

fn fmt_time(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// What `audit ls` found, for callers that want numbers rather than text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LsSummary {
    /// Files.
    pub files: usize,
    /// Events (rows) in all files.
    pub events: u64,
    /// Bytes of all files.
    pub bytes: u64,
}

/// `snowtrail audit ls`: files per hour partition with their events and bytes.
pub fn ls(dir: &Path, out: &mut dyn Write) -> Result<LsSummary, ReadbackError> {
    let mut per_hour: BTreeMap<String, LsSummary> = BTreeMap::new();
    for f in list_files(dir)? {
        let rows = read_footer(&f.path)?.file_metadata().num_rows();
        let h = per_hour.entry(f.partition.clone()).or_default();
        h.files += 1;
        h.events += u64::try_from(rows).unwrap_or(0);
        h.bytes += f.bytes;
    }
    writeln!(
        out,
        "{:<28} {:>6} {:>10} {:>12}",
        "PARTITION", "FILES", "EVENTS", "BYTES"
    )?;
    let mut total = LsSummary::default();
    for (p, s) in &per_hour {
        writeln!(
            out,
            "{p:<28} {:>6} {:>10} {:>12}",
            s.files, s.events, s.bytes
        )?;
        total.files += s.files;
        total.events += s.events;
        total.bytes += s.bytes;
    }
    writeln!(
        out,
        "{:<28} {:>6} {:>10} {:>12}",
        "total", total.files, total.events, total.bytes
    )?;
    Ok(total)
}

/// What `audit tail` shows.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// Keep watching for new files (`-f`).
    pub follow: bool,
    /// Only events of this workload (or human) identity.
    pub identity: Option<String>,
    /// Only events of this kind.
    pub kind: Option<EventKind>,
    /// One JSON object per line instead of a table.
    pub json: bool,
    /// How many of the most recent events to show first (`-n`).
    pub n: usize,
    /// How often `-f` looks for new files.
    pub poll: Duration,
}

impl Default for TailOptions {
    fn default() -> Self {
        TailOptions {
            follow: false,
            identity: None,
            kind: None,
            json: false,
            n: 20,
            poll: Duration::from_secs(1),
        }
    }
}

impl TailOptions {
    fn matches(&self, e: &Event) -> bool {
        self.kind.is_none_or(|k| k == e.event_kind)
            && self.identity.as_deref().is_none_or(|id| {
                e.workload_identity.as_deref() == Some(id)
                    || e.human_identity.as_deref() == Some(id)
            })
    }
}

/// An event as a JSON object with readable times, for `--json` output.
pub fn event_json(e: &Event) -> serde_json::Value {
    let mut v = serde_json::to_value(e).unwrap_or(serde_json::Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("event_time".into(), fmt_time(e.event_time).into());
        obj.insert("decided_at".into(), e.decided_at.map(fmt_time).into());
        obj.retain(|_, v| !v.is_null());
    }
    v
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > max {
        let mut t: String = flat.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    } else {
        flat
    }
}

/// Width of the outcome column: a decision, `ok` or `failed` and the whole error code fit
/// (`deny failed 003001`); a longer outcome widens its line rather than losing characters.
const OUTCOME_WIDTH: usize = 20;

/// Longest outcome shown (a decision, `failed` and an error code are far shorter).
const OUTCOME_MAX: usize = 48;

fn outcome(e: &Event) -> String {
    let mut parts = Vec::new();
    if let Some(d) = e.decision {
        parts.push(d.as_str().to_owned());
    }
    match e.success {
        Some(true) => parts.push("ok".into()),
        Some(false) => parts.push(format!(
            "failed{}",
            e.error_code
                .as_ref()
                .map(|c| format!(" {c}"))
                .unwrap_or_default()
        )),
        None => {}
    }
    parts.join(" ")
}

/// A login as a reader wants it: driver and version, authenticator, role and warehouse, those
/// the event has; `None` when it has none of them.
fn login_summary(e: &Event) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(d) = &e.driver {
        parts.push(match &e.driver_version {
            Some(v) => format!("driver {d} {v}"),
            None => format!("driver {d}"),
        });
    }
    for (label, value) in [
        ("authenticator", &e.authenticator),
        ("role", &e.role),
        ("warehouse", &e.warehouse),
    ] {
        if let Some(v) = value {
            parts.push(format!("{label} {v}"));
        }
    }
    (!parts.is_empty()).then(|| parts.join("  "))
}

fn what(e: &Event) -> String {
    if e.event_kind == EventKind::Login
        && let Some(summary) = login_summary(e)
    {
        return summary;
    }
    e.sql_text
        .as_deref()
        .or(e.lifecycle_action.map(LifecycleAction::as_str))
        .or(e.detail.as_deref())
        .or(e.sni.as_deref())
        .or(e.error_message.as_deref())
        .unwrap_or("")
        .to_owned()
}

/// The header of `audit tail`'s table.
fn table_header() -> String {
    format!(
        "{:<24} {:<10} {:<20} {:<16} {:<OUTCOME_WIDTH$} WHAT",
        "TIME", "KIND", "IDENTITY", "USER", "OUTCOME"
    )
}

/// One event as a row of `audit tail`'s table.
fn table_line(e: &Event) -> String {
    format!(
        "{:<24} {:<10} {:<20} {:<16} {:<OUTCOME_WIDTH$} {}",
        fmt_time(e.event_time),
        e.event_kind.as_str(),
        one_line(e.workload_identity.as_deref().unwrap_or("-"), 20),
        one_line(e.login_user.as_deref().unwrap_or("-"), 16),
        one_line(&outcome(e), OUTCOME_MAX),
        one_line(&what(e), 100)
    )
}

fn print_events(events: &[Event], opts: &TailOptions, out: &mut dyn Write) -> io::Result<()> {
    for e in events {
        if opts.json {
            writeln!(out, "{}", event_json(e))?;
        } else {
            writeln!(out, "{}", table_line(e))?;
        }
    }
    out.flush()
}

/// `snowtrail audit tail`: the `n` most recent matching events; with `follow`, then the events of
/// every file published later, until `stop()` returns true.
pub fn tail(
    dir: &Path,
    opts: &TailOptions,
    out: &mut dyn Write,
    stop: &dyn Fn() -> bool,
) -> Result<(), ReadbackError> {
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut events = Vec::new();
    for f in list_files(dir)? {
        events.extend(
            read_file_events(&f.path)?
                .into_iter()
                .filter(|e| opts.matches(e)),
        );
        seen.insert(f.path);
    }
    events.sort_by_key(|e| e.event_time);
    let skip = events.len().saturating_sub(opts.n);
    if !opts.json {
        writeln!(out, "{}", table_header())?;
    }
    print_events(&events[skip..], opts, out)?;
    while opts.follow && !stop() {
        std::thread::sleep(opts.poll);
        let mut fresh = Vec::new();
        for f in list_files(dir)? {
            if seen.insert(f.path.clone()) {
                fresh.extend(
                    read_file_events(&f.path)?
                        .into_iter()
                        .filter(|e| opts.matches(e)),
                );
            }
        }
        fresh.sort_by_key(|e| e.event_time);
        print_events(&fresh, opts, out)?;
    }
    Ok(())
}

/// What `audit verify` checks besides the files themselves.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// How the signed digests are checked (key, state directory).
    pub chain: ChainOptions,
}

/// What `audit verify` found; [`ok`](VerifyReport::ok) decides the exit code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Parquet files checked.
    pub files: usize,
    /// Events read.
    pub events: u64,
    /// Event ids found in more than one row.
    pub duplicate_ids: u64,
    /// Temporary files young enough to belong to a running agent (not a problem).
    pub temp_in_progress: usize,
    /// Every problem, one line each (digest findings included).
    pub problems: Vec<String>,
    /// What walking the signed digest chains found.
    pub chain: ChainReport,
}

impl VerifyReport {
    /// Whether the directory is sound: every file readable with a known schema, no duplicates, no
    /// leftover temporary files.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn check_schema(file: &SchemaRef) -> Vec<String> {
    let ours = schema();
    let mut problems = Vec::new();
    for f in file.fields() {
        match ours.field_with_name(f.name()) {
            Ok(o) if o.data_type() == f.data_type() => {}
            Ok(o) => problems.push(format!(
                "column {} is {}, expected {}",
                f.name(),
                f.data_type(),
                o.data_type()
            )),
            Err(_) => problems.push(format!("unknown column {}", f.name())),
        }
    }
    for required in ["event_time", "event_id", "event_kind"] {
        if file.field_with_name(required).is_err() {
            problems.push(format!("column {required} is missing"));
        }
    }
    problems
}

fn verify_file(
    path: &Path,
    partition: &str,
    ids: &mut HashSet<u128>,
    report: &mut VerifyReport,
) -> Vec<String> {
    let meta = match read_footer(path) {
        Ok(m) => m,
        Err(e) => return vec![format!("unreadable footer: {e}")],
    };
    let mut problems = Vec::new();
    match footer_value(&meta, META_SCHEMA_VERSION).map(str::parse::<u32>) {
        Some(Ok(v)) if v <= SCHEMA_VERSION => {}
        Some(Ok(v)) => problems.push(format!(
            "schema version {v} is newer than this tool's {SCHEMA_VERSION}"
        )),
        _ => problems.push("no schema version in the key-value metadata".to_owned()),
    }
    let builder = match open_reader(path) {
        Ok(b) => b,
        Err(e) => {
            problems.push(format!("unreadable: {e}"));
            return problems;
        }
    };
    problems.extend(check_schema(builder.schema()));
    if !problems.is_empty() {
        return problems;
    }
    let events = match read_file_events(path) {
        Ok(ev) => ev,
        Err(e) => {
            problems.push(format!("unreadable rows: {e}"));
            return problems;
        }
    };
    if i64::try_from(events.len()).ok() != Some(meta.file_metadata().num_rows()) {
        problems.push(format!(
            "{} rows read, footer says {}",
            events.len(),
            meta.file_metadata().num_rows()
        ));
    }
    let mut misplaced = 0;
    for e in &events {
        if !ids.insert(e.event_id.as_u128()) {
            report.duplicate_ids += 1;
            problems.push(format!("duplicate event id {}", e.event_id));
        }
        if partition_rel(hour_of(e.event_time)).to_string_lossy() != partition {
            misplaced += 1;
        }
    }
    if misplaced > 0 {
        problems.push(format!(
            "{misplaced} events outside the file's hour partition"
        ));
    }
    report.events += events.len() as u64;
    problems
}

/// `snowtrail audit verify` with default options: see [`verify_with`].
pub fn verify(dir: &Path, out: &mut dyn Write) -> Result<VerifyReport, ReadbackError> {
    verify_with(dir, &VerifyOptions::default(), out)
}

/// `snowtrail audit verify`: checks that every file is readable with a known schema, counts events,
/// and looks for duplicate event ids and leftover temporary files; prints one line per file. Then
/// walks the signed digest chains (`digest_verify`): removed, changed or added files, removed,
/// reordered or foreign-signed digests are problems; files closed after the newest digest are
/// reported as not yet covered.
pub fn verify_with(
    dir: &Path,
    opts: &VerifyOptions,
    out: &mut dyn Write,
) -> Result<VerifyReport, ReadbackError> {
    let mut report = VerifyReport::default();
    let mut ids = HashSet::new();
    let mut lines = Vec::new();
    walk(dir, |partition, e| {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.ends_with(".tmp") {
            let age = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| m.elapsed().ok());
            if age.is_some_and(|a| a < TEMP_IN_PROGRESS) {
                report.temp_in_progress += 1;
                lines.push(format!("writing  {}", path.display()));
            } else {
                let p = format!("{}: leftover temporary file", path.display());
                lines.push(format!("PROBLEM  {p}"));
                report.problems.push(p);
            }
            return Ok(());
        }
        if is_hidden(&name) || !name.ends_with(".parquet") {
            return Ok(());
        }
        report.files += 1;
        let before = report.events;
        let problems = verify_file(&path, partition, &mut ids, &mut report);
        if problems.is_empty() {
            lines.push(format!(
                "ok       {} ({} events)",
                path.display(),
                report.events - before
            ));
        }
        for p in problems {
            let p = format!("{}: {p}", path.display());
            lines.push(format!("PROBLEM  {p}"));
            report.problems.push(p);
        }
        Ok(())
    })?;
    for l in &lines {
        writeln!(out, "{l}")?;
    }
    let relative = |root: &Path, files: Vec<FileEntry>| -> Vec<String> {
        files
            .into_iter()
            .filter_map(|f| {
                f.path
                    .strip_prefix(root)
                    .ok()
                    .map(|p| p.to_string_lossy().into_owned())
            })
            .collect()
    };
    let parquet = relative(dir, list_files(dir)?);
    let recordings = match opts.chain.recordings_dir.as_deref() {
        Some(r) if r.is_dir() => relative(r, list_files(r)?),
        _ => Vec::new(),
    };
    let chain = check_chains(dir, &parquet, &recordings, &opts.chain);
    for p in &chain.not_yet_covered {
        writeln!(
            out,
            "pending  {} (closed after the newest digest; not yet covered)",
            p.display()
        )?;
    }
    for n in &chain.notes {
        writeln!(out, "note     {n}")?;
    }
    for f in &chain.findings {
        writeln!(out, "PROBLEM  {f}")?;
        report.problems.push(f.clone());
    }
    let span = chain.span.map_or(String::new(), |(a, b)| {
        format!(", events from {} to {}", fmt_time(a), fmt_time(b))
    });
    writeln!(
        out,
        "digests: {} ({} host{}) cover {} files, {} rows{span}; {} files not yet covered",
        chain.digests,
        chain.hosts.len(),
        if chain.hosts.len() == 1 { "" } else { "s" },
        chain.covered_files,
        chain.covered_rows,
        chain.not_yet_covered.len()
    )?;
    report.chain = chain;
    writeln!(
        out,
        "{} files, {} events, {} problems{}",
        report.files,
        report.events,
        report.problems.len(),
        if report.temp_in_progress > 0 {
            format!(", {} files being written", report.temp_in_progress)
        } else {
            String::new()
        }
    )?;
    Ok(report)
}

/// `snowtrail replay --session ID`: the session's events (by `session_id`, or `connection_id` for
/// now) in time order, as a timeline of statements, timings and outcomes; returns how many.
pub fn replay(dir: &Path, session: &str, out: &mut dyn Write) -> Result<usize, ReadbackError> {
    let events: Vec<Event> = read_events(dir)?
        .into_iter()
        .filter(|e| {
            e.session_id.as_deref() == Some(session)
                || e.connection_id.is_some_and(|c| c.to_string() == session)
        })
        .collect();
    let Some(first) = events.first() else {
        writeln!(out, "no events for session {session}")?;
        return Ok(0);
    };
    let t0 = first.event_time;
    let last = events.last().map_or(t0, |e| e.event_time);
    writeln!(
        out,
        "session {session}: {} events, {} .. {}",
        events.len(),
        fmt_time(t0),
        fmt_time(last)
    )?;
    let ctx = events
        .iter()
        .find(|e| e.login_user.is_some() || e.workload_identity.is_some());
    if let Some(c) = ctx {
        writeln!(
            out,
            "identity {}  user {}  account {}  process {} (pid {})",
            c.workload_identity.as_deref().unwrap_or("-"),
            c.login_user.as_deref().unwrap_or("-"),
            c.account.as_deref().unwrap_or("-"),
            c.comm.as_deref().unwrap_or("-"),
            c.tgid.map_or("-".to_owned(), |p| p.to_string())
        )?;
    }
    for e in &events {
        writeln!(out, "{}", timeline_line(e, t0))?;
        if let Some(m) = &e.error_message {
            writeln!(out, "{:>13}error: {}", "", one_line(m, 160))?;
        }
    }
    Ok(events.len())
}

/// One event of `replay`'s timeline: its offset from the session's first event, kind, outcome,
/// what it was and its timings.
fn timeline_line(e: &Event, t0: SystemTime) -> String {
    let offset = e.event_time.duration_since(t0).unwrap_or_default();
    let mut timing = Vec::new();
    if let Some(d) = e.duration_ms {
        timing.push(format!("{d} ms"));
    }
    if let Some(r) = e.rows_produced {
        timing.push(format!("{r} rows"));
    }
    if let Some(q) = &e.query_id {
        timing.push(format!("query {q}"));
    }
    format!(
        "+{:>9.3}s  {:<10} {:<OUTCOME_WIDTH$} {}{}",
        offset.as_secs_f64(),
        e.event_kind.as_str(),
        one_line(&outcome(e), OUTCOME_MAX),
        one_line(&what(e), 120),
        if timing.is_empty() {
            String::new()
        } else {
            format!("  ({})", timing.join(", "))
        }
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::Decision;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_714_564_800_000 + ms)
    }

    fn login() -> Event {
        let mut e = Event::new(EventKind::Login, at(250), "h");
        e.success = Some(true);
        e.driver = Some("PythonConnector".into());
        e.driver_version = Some("5.2.0".into());
        e.authenticator = Some("SNOWFLAKE_JWT".into());
        e.role = Some("ANALYST".into());
        e.warehouse = Some("COMPUTE_WH".into());
        e.detail = Some(r#"{"CLIENT_APPLICATION_PATH":"/srv/etl.py","QUERY_TAG":"etl"}"#.into());
        e
    }

    #[test]
    fn a_login_reads_as_driver_authenticator_role_and_warehouse() {
        let line = timeline_line(&login(), at(0));
        assert!(line.starts_with("+    0.250s  login      ok "), "{line}");
        assert!(
            line.ends_with(
                "driver PythonConnector 5.2.0  authenticator SNOWFLAKE_JWT  role ANALYST  \
                 warehouse COMPUTE_WH"
            ),
            "{line}"
        );
        assert!(!line.contains("CLIENT_APPLICATION_PATH"), "{line}");
        assert!(table_line(&login()).ends_with("warehouse COMPUTE_WH"));

        // Only what the event has; none of it: the detail, as before.
        let mut partial = login();
        partial.driver_version = None;
        partial.role = None;
        partial.warehouse = None;
        assert!(
            timeline_line(&partial, at(0))
                .ends_with("driver PythonConnector  authenticator SNOWFLAKE_JWT")
        );
        let mut bare = Event::new(EventKind::Login, at(0), "h");
        bare.detail = Some(r#"{"QUERY_TAG":"etl"}"#.into());
        assert!(timeline_line(&bare, at(0)).ends_with(r#"{"QUERY_TAG":"etl"}"#));
        // Other kinds keep their own text.
        let mut q = Event::new(EventKind::Query, at(0), "h");
        q.sql_text = Some("select 1".into());
        q.driver = Some("PythonConnector".into());
        assert!(timeline_line(&q, at(0)).ends_with(" select 1"));
    }

    #[test]
    fn the_outcome_column_shows_the_whole_error_code() {
        let mut failed = Event::new(EventKind::Query, at(1_500), "h");
        failed.success = Some(false);
        failed.error_code = Some("002003".into());
        failed.sql_text = Some("select * from missing".into());
        failed.query_id = Some("01b2-q".into());
        let line = timeline_line(&failed, at(0));
        assert_eq!(
            line,
            "+    1.500s  query      failed 002003        select * from missing  (query 01b2-q)"
        );
        failed.decision = Some(Decision::Deny);
        failed.error_code = Some("003001".into());
        let row = table_line(&failed);
        assert!(
            row.contains(" deny failed 003001   select * from missing"),
            "{row}"
        );
        // Longer than the column: shown whole, the text after it moves right.
        failed.decision = Some(Decision::RequireApproval);
        let row = table_line(&failed);
        assert!(
            row.contains(" require_approval failed 003001 select"),
            "{row}"
        );
        // The text starts under the header's WHAT.
        failed.decision = None;
        let row = table_line(&failed);
        assert_eq!(row.find("select"), table_header().find("WHAT"), "{row}");
    }
}
