//! Start-up recovery: turns every journal segment left behind into Parquet, exactly once, before the
//! writer serves traffic.
//!
//! Rows and records. Most rows stand for one journal record (an event). A statement's row stands
//! for several: its completion and the intent record it completes; an intent nobody completed is
//! a row of its own (flag `outcome_unknown`) standing for its latest intent record. An intent can
//! have several records: the writer copies a pending intent forward out of an old segment (so that
//! a long statement does not hold the journal), and a resubmitted intent replaces the earlier one;
//! each new record supersedes the previous one. A published file lists in its footer every record
//! its rows stand for.
//!
//! The argument, step by step:
//! 1. An event or intent is acknowledged only after the fdatasync that covers its whole journal
//!    record, so every acknowledged one is an intact record of some segment (a torn tail holds only
//!    unacknowledged ones, and reading stops there).
//! 2. A record is released, and may leave the journal, only when a published file lists it, when a
//!    later record of the same intent is durable (it is superseded), or when it failed (never
//!    acknowledged). Segments are deleted whole and oldest first, so what the journal holds is
//!    always a suffix: if a record is there, every later record is too.
//! 3. A published file names, in its footer, the journal (`snowtrail.journal_id`) and the records
//!    (`snowtrail.journal_seqs`) its rows stand for. The rename is the commit point: a file is
//!    either absent or complete. A file holds rows of one hour (the row's `event_time`).
//! 4. Rows are made one way everywhere (the parquet thread, its rebuilds, and here: `replay`):
//!    in journal order, a complete event takes with it the pending intent records with its
//!    `event_id`; an intent record waits. The live writer writes a waiting intent as
//!    `outcome_unknown` when the journal thread gives up on it (timeout, bound; an in-memory
//!    decision sent down the same ordered path) or at shutdown; recovery does so for the intents
//!    still waiting after the last record. The journal thread decides, in journal order, whether a
//!    complete event completes a pending intent or comes too late (the intent was given up on); a
//!    late one is refused and never journaled. So a statement never gets both a completed row and
//!    an `outcome_unknown` row, and a live row always lists the statement's last intent record and
//!    the completion: nothing of the statement is journaled after them.
//! 5. Recovery reads the segments, lists the partitions of the hours they touch, reads the footers of
//!    this journal's files there, and replays the records no file lists. A listed record yields no
//!    row but settles a waiting intent with its `event_id`: that statement's row is published (an
//!    earlier copy of its intent, superseded and released without being listed, may still be in
//!    the journal). The files that can list a journaled record are found: a statement's row lies in
//!    the hour of its last record (its completion, or its latest intent record), which by 2 is in
//!    the journal whenever any record of the statement is, so its hour is listed. Recovery writes
//!    its rows through the same publish protocol, then deletes the segments. A crash anywhere in
//!    recovery leaves either the segments (and recovery runs again, skipping what it published) or
//!    nothing left to do.
//!
//! So a crash between a Parquet rename and the journal's truncation costs nothing: the footer says the
//! records are already out. And every acknowledged intent ends as exactly one row: the completed one
//! if its completion reached the journal (acknowledged or not), else the intent with
//! `outcome_unknown`. Left-over temporary files (`.*.tmp`) of this host are removed.
//!
//! Limits: a late completion is recognised from a bounded memory of the intents given up on (at
//! least 65,536 and four times `max_pending_intents`); one that comes after more intents than that
//! were given up on is recorded as a row of its own, a second row for the statement. That memory,
//! like the pending intents themselves, does not survive a restart, which cannot matter: a
//! completion is submitted by the process that submitted the intent.
//!
//! Recovery does not repair Parquet files, and it reads the journal twice (event times first, then
//! the records that are missing; a third time for the events of intents nobody completed) so that
//! its memory stays bounded by the open files' row buffers and the ids of waiting intents.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::Path;
use std::time::SystemTime;

use uuid::Uuid;

use super::event::Event;
use super::files::{
    FileError, FileSettings, META_JOURNAL_ID, META_JOURNAL_SEQS, OpenFile, footer_value, hour_of,
    read_footer,
};
use super::journal::{
    DecodeError, JournalDir, JournalError, RecordKind, SeqRanges, decode_event, peek_time_and_id,
    read_segment, record_kind, sync_dir,
};

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
    /// Rows written to new files.
    pub recovered: u64,
    /// Of those, intents nobody completed, written with the flag `outcome_unknown`.
    pub outcome_unknown: u64,
    /// Records whose payload could not be decoded (logged; none are expected).
    pub undecodable: u64,
    /// Files published by recovery.
    pub files: usize,
    /// Temporary files removed.
    pub temp_files_removed: usize,
    /// The sequence number the writer continues with.
    pub next_seq: u64,
}

/// How [`replay`] treats a journal record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Take {
    /// Not part of this replay.
    Skip,
    /// Already in a published file: no row, but it settles a pending intent with its `event_id`
    /// (that intent's row is published, under a later copy or with its completion).
    Published,
    /// To be turned into rows.
    Write,
}

/// What a [`replay`] saw.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Replayed {
    /// Records taken as published.
    pub(crate) published: u64,
    /// Rows handed out.
    pub(crate) rows: u64,
    /// Of those, intents nobody completed.
    pub(crate) unknown: u64,
    /// Records that could not be decoded.
    pub(crate) undecodable: u64,
}

impl Replayed {
    /// Logs record `seq` of the segment `path`, which cannot be decoded, and counts it.
    fn undecodable(&mut self, seq: u64, path: &Path, e: DecodeError) {
        tracing::error!(seq, error = %e, segment = %path.display(), "journal record cannot be decoded");
        self.undecodable += 1;
    }
}

/// Turns journal records into rows the way the writer does, in sequence order: a complete event is
/// a row (record `seq`) and takes with it the pending intent records with its `event_id`
/// (`intents`); an intent record waits; after the last record, every intent still waiting is a row
/// of its own (its last record `seq`, earlier copies in `intents`) with the flag
/// `outcome_unknown`. Calls `row(intents, seq, event)` for each row.
///
/// Recovery replays every record not in a published file; the parquet thread replays exactly the
/// records of a file it must rebuild. Memory: the ids and numbers of waiting intents, not their
/// events (those are read again at the end).
pub(crate) fn replay<E: From<JournalError>>(
    paths: &[impl AsRef<Path>],
    take: impl Fn(u64) -> Take,
    mut row: impl FnMut(&[u64], u64, Event) -> Result<(), E>,
) -> Result<Replayed, E> {
    let mut stats = Replayed::default();
    let mut waiting: HashMap<Uuid, Vec<u64>> = HashMap::new();
    let mut failed: Option<E> = None;
    for path in paths {
        let path = path.as_ref();
        read_segment(path, |seq, payload| {
            if failed.is_some() {
                return Ok(());
            }
            match take(seq) {
                Take::Skip => {}
                Take::Published => {
                    stats.published += 1;
                    if !waiting.is_empty()
                        && let Ok((_, id)) = peek_time_and_id(payload)
                    {
                        waiting.remove(&id);
                    }
                }
                Take::Write => match record_kind(payload) {
                    Err(e) => stats.undecodable(seq, path, e),
                    Ok(RecordKind::Intent) => match peek_time_and_id(payload) {
                        Ok((_, id)) => waiting.entry(id).or_default().push(seq),
                        Err(e) => stats.undecodable(seq, path, e),
                    },
                    Ok(RecordKind::Event) => match decode_event(payload) {
                        Ok(event) => {
                            let intents = waiting.remove(&event.event_id).unwrap_or_default();
                            stats.rows += 1;
                            if let Err(e) = row(&intents, seq, event) {
                                failed = Some(e);
                            }
                        }
                        Err(e) => stats.undecodable(seq, path, e),
                    },
                },
            }
            Ok(())
        })?;
    }
    if let Some(e) = failed {
        return Err(e);
    }
    if waiting.is_empty() {
        return Ok(stats);
    }
    // Intents nobody completed: the last record of each is its row.
    let mut last: HashMap<u64, Vec<u64>> = HashMap::with_capacity(waiting.len());
    for (_, mut seqs) in waiting {
        if let Some(l) = seqs.pop() {
            last.insert(l, seqs);
        }
    }
    for path in paths {
        let path = path.as_ref();
        read_segment(path, |seq, payload| {
            if failed.is_some() {
                return Ok(());
            }
            let Some(earlier) = last.remove(&seq) else {
                return Ok(());
            };
            match decode_event(payload) {
                Ok(mut event) => {
                    event.mark_outcome_unknown();
                    stats.rows += 1;
                    stats.unknown += 1;
                    if let Err(e) = row(&earlier, seq, event) {
                        failed = Some(e);
                    }
                }
                Err(e) => stats.undecodable(seq, path, e),
            }
            Ok(())
        })?;
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(stats),
    }
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
            if let Ok((t, _)) = peek_time_and_id(payload) {
                hours.insert(hour_of(t));
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
    let paths: Vec<&Path> = segments.iter().map(|(_, p)| p.as_path()).collect();
    let take = |seq| {
        if published.contains(seq) {
            Take::Published
        } else {
            Take::Write
        }
    };
    let mut recovered = 0;
    let stats = replay(
        &paths,
        take,
        |intents, seq, event| -> Result<(), RecoveryError> {
            let hour = hour_of(event.event_time);
            let mut file = match open.remove(&hour) {
                Some(f) => f,
                None => OpenFile::create(settings, hour, &event, seq, now, true)?,
            };
            file.append(seq, &event)?;
            for &s in intents {
                file.cover(s);
            }
            if file.size() >= max_file_bytes {
                let p = file.publish().map_err(|a| a.error)?;
                recovered += p.rows;
                *done.entry(hour).or_default() += 1;
            } else {
                open.insert(hour, file);
            }
            Ok(())
        },
    )?;
    for (hour, file) in open {
        let p = file.publish().map_err(|a| a.error)?;
        recovered += p.rows;
        *done.entry(hour).or_default() += 1;
    }
    report.recovered = recovered;
    report.already_published = stats.published;
    report.outcome_unknown = stats.unknown;
    report.undecodable = stats.undecodable;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::files::read_footer;
    use super::*;
    use crate::audit::journal::{RecordKind, encode_kind, encode_record};
    use crate::audit::{Event, EventKind, Flag};
    use std::io::Write;
    use std::time::{Duration, UNIX_EPOCH};

    fn settings(dir: &Path, journal: &JournalDir) -> FileSettings {
        FileSettings {
            audit_dir: dir.join("audit"),
            host: "h".into(),
            journal_id: journal.id,
            row_group_rows: 1000,
            on_publish: None,
        }
    }

    fn all_ids(audit: &Path) -> Vec<uuid::Uuid> {
        let mut ids = Vec::new();
        for e in crate::audit::readback::read_events(audit).unwrap() {
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

    /// A crash after the digest log heard of a file but before its rename: only the temporary
    /// file is left, which recovery removes before writing the events again.
    #[test]
    fn crash_between_digest_record_and_rename_leaves_a_temp_that_recovery_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let journal = JournalDir::open(dir.path()).unwrap();
        let told = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut s = settings(dir.path(), &journal);
        s.on_publish = Some(std::sync::Arc::new({
            let told = told.clone();
            move |f: &crate::audit::files::ClosedFile| {
                told.lock().unwrap().push(f.path.clone());
                panic!("the process dies here");
            }
        }));
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let events: Vec<Event> = (0..3u64)
            .map(|i| Event::new(EventKind::Query, t0 + Duration::from_secs(i), "h"))
            .collect();
        let (_, mut seg) = journal.create_segment(1).unwrap();
        let mut buf = Vec::new();
        for (i, e) in events.iter().enumerate() {
            encode_record(&mut buf, 1 + i as u64, e).unwrap();
        }
        seg.write_all(&buf).unwrap();
        let hour = hour_of(t0);
        let mut f = OpenFile::create(&s, hour, &events[0], 1, t0, false).unwrap();
        for (i, e) in events.iter().enumerate() {
            f.append(1 + i as u64, e).unwrap();
        }
        let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.publish()));
        assert!(crashed.is_err());
        let part = s.audit_dir.join(super::super::files::partition_rel(hour));
        let names: Vec<String> = fs::read_dir(&part)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].starts_with(".h-") && names[0].ends_with(".tmp"));
        assert!(!told.lock().unwrap()[0].exists());

        s.on_publish = None;
        let r = recover(&journal, &s, u64::MAX, t0).unwrap();
        assert_eq!(r.temp_files_removed, 1);
        assert_eq!(r.recovered, 3);
        let mut want: Vec<_> = events.iter().map(|e| e.event_id).collect();
        want.sort();
        assert_eq!(all_ids(&s.audit_dir), want);
    }

    /// Writes `records` (kind, event) as one segment starting at `first`.
    fn segment(journal: &JournalDir, first: u64, records: &[(RecordKind, &Event)]) {
        let (_, mut seg) = journal.create_segment(first).unwrap();
        let mut buf = Vec::new();
        for (i, (kind, e)) in records.iter().enumerate() {
            encode_kind(&mut buf, first + i as u64, *kind, e).unwrap();
        }
        seg.write_all(&buf).unwrap();
    }

    fn completed(intent: &Event) -> Event {
        let mut c = intent.clone();
        c.query_id = Some("01-done".into());
        c.success = Some(true);
        c
    }

    fn footer_seqs(audit: &Path) -> SeqRanges {
        let mut all = SeqRanges::default();
        for f in crate::audit::readback::list_files(audit).unwrap() {
            let meta = read_footer(&f.path).unwrap();
            all.extend(&SeqRanges::parse(footer_value(&meta, META_JOURNAL_SEQS).unwrap()).unwrap());
        }
        all
    }

    /// Intents meet their completions across segments; an intent copied forward is one statement;
    /// intents nobody completed are written once with outcome_unknown.
    #[test]
    fn intents_pair_across_segments_and_the_rest_are_unknown() {
        use RecordKind::{Event as E, Intent as I};
        let dir = tempfile::tempdir().unwrap();
        let journal = JournalDir::open(dir.path()).unwrap();
        let s = settings(dir.path(), &journal);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let a = Event::new(EventKind::Query, t0, "h");
        let b = Event::new(EventKind::Query, t0, "h");
        let c = Event::new(EventKind::Query, t0 + Duration::from_secs(3600), "h");
        let plain = Event::new(EventKind::Login, t0, "h");
        let a_done = completed(&a);
        segment(&journal, 1, &[(I, &a), (I, &b), (E, &plain)]);
        // b copied forward into the next segment, its original still there (a crash before the
        // first segment was deleted).
        segment(&journal, 4, &[(E, &a_done), (I, &c), (I, &b)]);

        let r = recover(&journal, &s, u64::MAX, t0).unwrap();
        assert_eq!(r.records, 6);
        assert_eq!(r.recovered, 4);
        assert_eq!(r.outcome_unknown, 2);
        let rows = crate::audit::readback::read_events(&s.audit_dir).unwrap();
        let by_id: HashMap<_, _> = rows.iter().map(|e| (e.event_id, e)).collect();
        assert_eq!(rows.len(), 4, "one row per statement");
        assert_eq!(by_id[&a.event_id], &a_done);
        assert_eq!(by_id[&plain.event_id], &plain);
        for e in [&b, &c] {
            let row = by_id[&e.event_id];
            assert_eq!(row.flags, vec![Flag::OutcomeUnknown]);
            assert_eq!(row.query_id, None);
        }
        // Every record is accounted for in some footer.
        assert_eq!(footer_seqs(&s.audit_dir).to_string(), "1-6");
        assert!(journal.segments().unwrap().is_empty());
        assert_eq!(recover(&journal, &s, u64::MAX, t0).unwrap().records, 0);
    }

    /// The crash this is about with intents: the statement's row is published under the intent's
    /// latest copy, but an older segment still holds the original record. It must not come back as
    /// an outcome_unknown row.
    #[test]
    fn a_published_row_settles_stale_copies_of_its_intent() {
        use RecordKind::{Event as E, Intent as I};
        let dir = tempfile::tempdir().unwrap();
        let journal = JournalDir::open(dir.path()).unwrap();
        let s = settings(dir.path(), &journal);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let x = Event::new(EventKind::Query, t0, "h");
        let y = Event::new(EventKind::Query, t0, "h");
        let x_done = completed(&x);
        // seq 1: x, 2: y (originals); 3: x copy, 4: x completed, 5: y copy.
        segment(&journal, 1, &[(I, &x), (I, &y)]);
        segment(&journal, 3, &[(I, &x), (E, &x_done), (I, &y)]);
        // Published before the crash: x's completed row (records 3 and 4) and y as unknown
        // (record 5, at shutdown or after its timeout).
        let hour = hour_of(t0);
        let mut f = OpenFile::create(&s, hour, &x_done, 4, t0, false).unwrap();
        f.append(4, &x_done).unwrap();
        f.cover(3);
        let mut y_unknown = y.clone();
        y_unknown.mark_outcome_unknown();
        f.append(5, &y_unknown).unwrap();
        f.publish().unwrap();

        let r = recover(&journal, &s, u64::MAX, t0).unwrap();
        assert_eq!(r.already_published, 3);
        assert_eq!(r.recovered, 0, "{r:?}");
        let rows = crate::audit::readback::read_events(&s.audit_dir).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(journal.segments().unwrap().is_empty());
    }

    /// What the parquet thread does to rebuild a file: replay exactly the records it held.
    #[test]
    fn replaying_some_records_gives_the_same_rows() {
        use RecordKind::{Event as E, Intent as I};
        let dir = tempfile::tempdir().unwrap();
        let journal = JournalDir::open(dir.path()).unwrap();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (x, y, other) = (
            Event::new(EventKind::Query, t0, "h"),
            Event::new(EventKind::Query, t0, "h"),
            Event::new(EventKind::Query, t0, "h"),
        );
        let x_done = completed(&x);
        segment(&journal, 1, &[(I, &x), (E, &other), (E, &x_done), (I, &y)]);
        let paths: Vec<_> = journal
            .segments()
            .unwrap()
            .into_iter()
            .map(|s| s.1)
            .collect();
        let held = SeqRanges::parse("1-1,3-4").unwrap();
        let mut rows = Vec::new();
        let take = |seq| {
            if held.contains(seq) {
                Take::Write
            } else {
                Take::Skip
            }
        };
        let stats = replay(
            &paths,
            take,
            |intents, seq, e| -> Result<(), RecoveryError> {
                rows.push((intents.to_vec(), seq, e));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!((stats.rows, stats.unknown), (2, 1));
        assert_eq!(rows[0], (vec![1], 3, x_done));
        let mut y_unknown = y.clone();
        y_unknown.mark_outcome_unknown();
        assert_eq!(rows[1], (vec![], 4, y_unknown));
    }
}
