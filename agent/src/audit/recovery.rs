//! Start-up recovery: turns every journal segment left behind into Parquet, exactly once, before the
//! writer serves traffic.
//!
//! The argument, step by step:
//! 1. An event is acknowledged only after the fdatasync that covers its whole journal record, so
//!    every acknowledged event is an intact record of some segment (a torn tail holds only
//!    unacknowledged ones, and reading stops there).
//! 2. A segment is deleted only once every event in it is in a published file (renamed into place,
//!    directory synced), so a journaled event is always either in a segment or in a file.
//! 3. A published file names, in its footer, the journal (`snowtrail.journal_id`) and the sequence
//!    numbers (`snowtrail.journal_seqs`) it holds. The rename is the commit point: a file is either
//!    absent or complete. A file holds events of one hour, so the files that can hold a journaled
//!    event are in the partition of that event's hour.
//! 4. Recovery reads the segments, lists the partitions of the hours they touch, reads the footers of
//!    this journal's files there, and writes exactly the events no file holds, through the same
//!    publish protocol; then it deletes the segments. A crash anywhere in recovery leaves either the
//!    segments (and recovery runs again, skipping what it published) or nothing left to do.
//!
//! So a crash between a Parquet rename and the journal's truncation costs nothing: the footer says the
//! events are already out. Left-over temporary files (`.*.tmp`) of this host are removed.
//!
//! Recovery does not repair Parquet files, and it reads the journal twice (event times first, then
//! the events that are missing) so that its memory stays bounded by the open files' row buffers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::Path;
use std::time::SystemTime;

use serde::Deserialize;

use super::files::{
    FileError, FileSettings, META_JOURNAL_ID, META_JOURNAL_SEQS, OpenFile, footer_value, hour_of,
    read_footer,
};
use super::journal::{JournalDir, JournalError, SeqRanges, decode_event, read_segment, sync_dir};

/// Why recovery could not finish; the agent must not serve traffic then.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// The journal could not be read or cleaned up.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A Parquet file could not be written, or an existing one's footer read.
    #[error(transparent)]
    File(#[from] FileError),
}

/// What recovery did; logged at start and returned to the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments found.
    pub segments: usize,
    /// Segments that ended in a torn or corrupt record.
    pub torn_segments: usize,
    /// Intact records found.
    pub records: u64,
    /// Records already in a published file.
    pub already_published: u64,
    /// Records written to new files.
    pub recovered: u64,
    /// Records whose payload could not be decoded (logged; none are expected).
    pub undecodable: u64,
    /// Files published by recovery.
    pub files: usize,
    /// Temporary files removed.
    pub temp_files_removed: usize,
    /// The sequence number the writer continues with.
    pub next_seq: u64,
}

#[derive(Deserialize)]
struct TimeOnly {
    event_time: SystemTime,
}

/// Runs recovery; on success the journal directory holds no segment and every journaled event is in
/// exactly one file.
pub fn recover(
    journal: &JournalDir,
    settings: &FileSettings,
    max_file_bytes: u64,
    now: SystemTime,
) -> Result<RecoveryReport, RecoveryError> {
    let segments = journal.segments()?;
    let mut report = RecoveryReport {
        segments: segments.len(),
        ..RecoveryReport::default()
    };
    // Pass 1: which hours hold journaled events, and where the sequence continues.
    let mut hours = BTreeSet::new();
    for (first, path) in &segments {
        report.next_seq = report.next_seq.max(*first);
        let end = read_segment(path, |_, payload| {
            if let Ok(t) = serde_json::from_slice::<TimeOnly>(payload) {
                hours.insert(hour_of(t.event_time));
            }
            Ok(())
        })?;
        report.records += end.records;
        report.torn_segments += usize::from(end.torn);
        report.next_seq = report.next_seq.max(end.next_seq);
    }

    // What this journal's published files already hold, and left-over temporary files.
    let mut published = SeqRanges::default();
    let tmp_prefix = format!(".{}-", settings.host);
    let journal_id = journal.id.to_string();
    for hour in &hours {
        let dir = settings.audit_dir.join(super::files::partition_rel(*hour));
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(&tmp_prefix) && name.ends_with(".tmp") {
                if fs::remove_file(entry.path()).is_ok() {
                    report.temp_files_removed += 1;
                }
            } else if name.starts_with(settings.host.as_str()) && name.ends_with(".parquet") {
                let meta = read_footer(&entry.path())?;
                if footer_value(&meta, META_JOURNAL_ID) == Some(journal_id.as_str())
                    && let Some(seqs) =
                        footer_value(&meta, META_JOURNAL_SEQS).and_then(SeqRanges::parse)
                {
                    published.extend(&seqs);
                }
            }
        }
        if report.temp_files_removed > 0 {
            let _ = sync_dir(&dir);
        }
    }

    // Pass 2: write what no file holds.
    let mut open: HashMap<i64, OpenFile> = HashMap::new();
    let mut done: BTreeMap<i64, usize> = BTreeMap::new();
    let mut result: Result<(), RecoveryError> = Ok(());
    for (_, path) in &segments {
        read_segment(path, |seq, payload| {
            if published.contains(seq) {
                report.already_published += 1;
                return Ok(());
            }
            let event = match decode_event(payload) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(seq, error = %e, segment = %path.display(), "journal record cannot be decoded");
                    report.undecodable += 1;
                    return Ok(());
                }
            };
            if result.is_err() {
                return Ok(());
            }
            let hour = hour_of(event.event_time);
            let step = (|| -> Result<(), RecoveryError> {
                let file = match open.remove(&hour) {
                    Some(f) => f,
                    None => OpenFile::create(settings, hour, &event, seq, now, true)?,
                };
                let mut file = file;
                file.append(seq, &event)?;
                if file.size() >= max_file_bytes {
                    let p = file.publish().map_err(|a| a.error)?;
                    report.recovered += p.rows;
                    *done.entry(hour).or_default() += 1;
                } else {
                    open.insert(hour, file);
                }
                Ok(())
            })();
            if let Err(e) = step {
                result = Err(e);
            }
            Ok(())
        })?;
    }
    result?;
    for (hour, file) in open {
        let p = file.publish().map_err(|a| a.error)?;
        report.recovered += p.rows;
        *done.entry(hour).or_default() += 1;
    }
    report.files = done.values().sum();

    // Every record is now in exactly one file: the segments can go.
    for (_, path) in &segments {
        fs::remove_file(path).map_err(|source| JournalError::Io {
            op: "remove",
            path: path.clone(),
            source,
        })?;
    }
    if !segments.is_empty() {
        sync_dir(&journal.path).map_err(|source| JournalError::Io {
            op: "sync",
            path: journal.path.clone(),
            source,
        })?;
    }
    Ok(report)
}

/// Reads the events with sequence numbers in `wanted` from the segments at `paths`, in order.
pub fn read_events(
    paths: &[impl AsRef<Path>],
    wanted: &SeqRanges,
    mut f: impl FnMut(u64, super::Event),
) -> Result<u64, JournalError> {
    let mut found = 0;
    for path in paths {
        read_segment(path.as_ref(), |seq, payload| {
            if wanted.contains(seq) {
                match decode_event(payload) {
                    Ok(e) => {
                        found += 1;
                        f(seq, e);
                    }
                    Err(e) => tracing::error!(seq, error = %e, "journal record cannot be decoded"),
                }
            }
            Ok(())
        })?;
    }
    Ok(found)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::journal::encode_record;
    use crate::audit::{Event, EventKind};
    use std::io::Write;
    use std::time::{Duration, UNIX_EPOCH};

    fn settings(dir: &Path, journal: &JournalDir) -> FileSettings {
        FileSettings {
            audit_dir: dir.join("audit"),
            host: "h".into(),
            journal_id: journal.id,
            row_group_rows: 1000,
        }
    }

    fn all_ids(audit: &Path) -> Vec<uuid::Uuid> {
        let mut ids = Vec::new();
        for e in crate::audit::inspect::read_events(audit).unwrap() {
            ids.push(e.event_id);
        }
        ids.sort();
        ids
    }

    /// The crash the design is about: the file was renamed into place, the journal not yet emptied.
    #[test]
    fn crash_between_rename_and_truncation_gives_no_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let journal = JournalDir::open(dir.path()).unwrap();
        let s = settings(dir.path(), &journal);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let events: Vec<Event> = (0..10u64)
            .map(|i| Event::new(EventKind::Query, t0 + Duration::from_secs(i * 600), "h"))
            .collect();
        let (_, mut seg) = journal.create_segment(100).unwrap();
        let mut buf = Vec::new();
        for (i, e) in events.iter().enumerate() {
            encode_record(&mut buf, 100 + i as u64, e).unwrap();
        }
        seg.write_all(&buf).unwrap();
        // Events 0..4 (seq 100..=103) were already published before the crash, plus a temp file.
        let hour = hour_of(events[0].event_time);
        let mut f = OpenFile::create(&s, hour, &events[0], 100, t0, false).unwrap();
        for (i, e) in events.iter().enumerate().take(4) {
            assert_eq!(hour_of(e.event_time), hour);
            f.append(100 + i as u64, e).unwrap();
        }
        f.publish().unwrap();
        let mut tmp = OpenFile::create(&s, hour, &events[5], 105, t0, false).unwrap();
        tmp.append(105, &events[5]).unwrap();
        tmp.flush().unwrap();
        std::mem::forget(tmp);

        let r = recover(&journal, &s, u64::MAX, t0).unwrap();
        assert_eq!(r.records, 10);
        assert_eq!(r.already_published, 4);
        assert_eq!(r.recovered, 6);
        assert_eq!(r.temp_files_removed, 1);
        assert_eq!(r.next_seq, 110);
        assert!(journal.segments().unwrap().is_empty());
        let mut want: Vec<_> = events.iter().map(|e| e.event_id).collect();
        want.sort();
        assert_eq!(all_ids(&s.audit_dir), want);
        // Running again changes nothing.
        let r = recover(&journal, &s, u64::MAX, t0).unwrap();
        assert_eq!(r.records, 0);
        assert_eq!(all_ids(&s.audit_dir), want);
    }
}
