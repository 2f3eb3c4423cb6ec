//! The journal thread (encode, append, rotate, reopen after failure; the intent table: timeouts,
//! the bound, copying intents forward) and the sync thread (one fdatasync at a time, then
//! acknowledgements). See the parent module for the design.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::core::{AckTx, Core, Gap, Msg, PMsg, Pending, Rec, RecordLoc, Seg, Settled};
use super::intents::{IntentEntry, Intents};
use crate::audit::clock::Clock;
use crate::audit::config::OnAuditFailure;
use crate::audit::journal::{HEADER_LEN, RecordKind, encode_kind, encode_payload, read_record_at};
use crate::audit::{AuditError, Event, EventKind, JournalFailure, LifecycleAction};
use crate::sync::{lock, wait};

/// Most events the journal thread encodes into one write.
const MAX_BATCH: usize = 1024;
/// A slow fdatasync is reported at most this often; so are late completions and intents given up
/// on for the bound.
const SLOW_SYNC_REPORT_EVERY: Duration = Duration::from_secs(60);
/// How often the journal thread looks for timed-out intents and for intents to copy forward.
const MAINTAIN_EVERY: Duration = Duration::from_secs(1);
/// Most intent records copied forward in one round (the rest follow a round later), so that a
/// round never holds up the events behind it for long.
const MAX_CARRY: usize = 4096;

/// What a submitter handed the journal thread.
pub(super) enum Item {
    Event(Box<Event>),
    Intent(Box<Event>),
}

impl Item {
    fn event(&self) -> &Event {
        match self {
            Item::Event(e) | Item::Intent(e) => e,
        }
    }
}

/// A count reported to the log at most once a minute.
#[derive(Default)]
pub(super) struct Throttled {
    count: u64,
    last: Option<Instant>,
}

impl Throttled {
    /// Counts one; returns the count to report, if it is time.
    fn hit(&mut self) -> Option<u64> {
        self.count += 1;
        if self
            .last
            .is_none_or(|t| t.elapsed() >= SLOW_SYNC_REPORT_EVERY)
        {
            self.last = Some(Instant::now());
            return Some(std::mem::take(&mut self.count));
        }
        None
    }
}

/// The sync thread: one fdatasync at a time, started as soon as there is unsynced data.
pub(super) fn run_sync(core: &Core, parquet: &std_mpsc::Sender<PMsg>) {
    let mut out = Settled::default();
    let mut last_slow_report: Option<Instant> = None;
    loop {
        let job = {
            let mut st = lock(&core.sync);
            let sync = loop {
                // Records already covered by a sync (an `Expire` decided after it) go on at once.
                if !st.in_flight && st.pending.front().is_some_and(|p| p.end <= st.synced) {
                    let upto = st.synced;
                    core.settle(&mut st, Ok(upto), &mut out);
                    break false;
                }
                let work =
                    !st.failed && !st.in_flight && st.written > st.synced && st.file.is_some();
                if work {
                    break true;
                }
                if st.stop && !st.in_flight && (st.failed || st.written == st.synced) {
                    return;
                }
                st = wait(&core.cv, st);
            };
            if sync {
                st.in_flight = true;
                Some((st.written, st.file.clone()))
            } else {
                None
            }
        };
        let Some((target, file)) = job else {
            core.deliver(&mut out, parquet);
            continue;
        };
        let started = Instant::now();
        let result = match file {
            Some(f) => f.sync_data(),
            None => Ok(()),
        };
        let took = started.elapsed();
        if took > core.batch_window
            && last_slow_report.is_none_or(|t| t.elapsed() >= SLOW_SYNC_REPORT_EVERY)
        {
            last_slow_report = Some(Instant::now());
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                batch_window_ms = core.batch_window.as_millis() as u64,
                "journal fdatasync slower than batch_window_ms; events behind it waited longer"
            );
        }
        {
            let mut st = lock(&core.sync);
            st.in_flight = false;
            match result {
                Ok(()) => {
                    st.synced = st.synced.max(target);
                    core.health.syncs.fetch_add(1, Ordering::Relaxed);
                    core.settle(&mut st, Ok(target), &mut out);
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit journal fdatasync failed");
                    st.failed = true;
                    core.health.healthy.store(false, Ordering::Relaxed);
                    core.settle(
                        &mut st,
                        Err(AuditError::Journal(JournalFailure::Sync(e.into()))),
                        &mut out,
                    );
                }
            }
            core.cv.notify_all();
        }
        core.deliver(&mut out, parquet);
    }
}

/// The journal thread's state.
pub(super) struct JournalWriter {
    pub(super) core: Arc<Core>,
    pub(super) file: Option<File>,
    /// Global position of the current segment's first byte.
    pub(super) seg_base: u64,
    pub(super) seg_len: u64,
    pub(super) next_seq: u64,
    pub(super) buf: Vec<u8>,
    pub(super) host: String,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) on_failure: OnAuditFailure,
    pub(super) parquet: std_mpsc::Sender<PMsg>,
    /// First sequence number of the current segment (its name).
    pub(super) seg_first: u64,
    /// `audit.segment_bytes`.
    pub(super) segment_bytes: u64,
    pub(super) intents: Intents,
    /// Records of the batch being written, reused.
    pub(super) staged: Vec<Pending>,
    pub(super) next_maintenance: Instant,
    pub(super) late: Throttled,
    pub(super) overflow: Throttled,
}

impl JournalWriter {
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Msg>) -> Self {
        let mut batch: Vec<(Item, Option<AckTx>)> = Vec::with_capacity(MAX_BATCH);
        let mut stopping = false;
        while !stopping {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Event(e, ack) => batch.push((Item::Event(e), Some(ack))),
                    Msg::Intent(e, ack) => batch.push((Item::Intent(e), Some(ack))),
                    Msg::Tick => {}
                    Msg::Shutdown => {
                        // Refuse new submissions; what is already queued is still written.
                        rx.close();
                        stopping = true;
                    }
                }
                if batch.len() < MAX_BATCH || stopping {
                    next = rx.try_recv().ok();
                }
            }
            self.step(&mut batch);
        }
        self.step(&mut batch);
        let mut st = lock(&self.core.sync);
        st.stop = true;
        self.core.cv.notify_all();
        drop(st);
        self
    }

    /// Reopens after a failure if needed, adds a pending `audit_gap` event, writes the batch (and,
    /// once a second, what the intent table needs: timeouts, copies out of old segments).
    pub(super) fn step(&mut self, batch: &mut Vec<(Item, Option<AckTx>)>) {
        self.apply_undo();
        let failed = lock(&self.core.sync).failed || self.file.is_none();
        if failed && !self.reopen() {
            self.fail(batch, &JournalFailure::NotWritable);
            return;
        }
        let gap = lock(&self.core.sync).gap.take();
        if let Some(g) = gap {
            let e = self.gap_event(g);
            lock(&self.core.sync).gap_carry = Some((e.event_id, g));
            batch.insert(0, (Item::Event(Box::new(e)), None));
        }
        let maintain = Instant::now() >= self.next_maintenance;
        if !batch.is_empty() || maintain {
            self.write_batch(batch, maintain);
        }
    }

    /// Takes back the intent table changes of records that failed, newest first.
    fn apply_undo(&mut self) {
        let mut undo = {
            let mut st = lock(&self.core.sync);
            if st.undo.is_empty() {
                return;
            }
            std::mem::take(&mut st.undo)
        };
        undo.sort_unstable_by_key(|u| std::cmp::Reverse(u.seq));
        for u in undo {
            self.intents.undo(u);
        }
    }

    pub(super) fn gap_event(&self, g: Gap) -> Event {
        let ts =
            |t: SystemTime| DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut e = Event::new(EventKind::Lifecycle, self.clock.now(), &self.host);
        e.lifecycle_action = Some(LifecycleAction::AuditGap);
        e.success = Some(false);
        e.detail = Some(
            serde_json::json!({
                "count": g.count,
                "from": ts(g.first),
                "to": ts(g.last),
                "on_audit_failure": self.on_failure.as_str(),
            })
            .to_string(),
        );
        tracing::warn!(
            count = g.count,
            "audit gap recorded: events could not be journaled"
        );
        e
    }

    /// Fails a batch that cannot be written at all.
    pub(super) fn fail(&mut self, batch: &mut Vec<(Item, Option<AckTx>)>, why: &JournalFailure) {
        if batch.is_empty() {
            return;
        }
        let mut st = lock(&self.core.sync);
        for (item, ack) in batch.drain(..) {
            let e = item.event();
            Gap::fail_event(&mut st, &self.core.health, e.event_id, e.event_time);
            if let Some(ack) = ack {
                let _ = ack.send(Err(AuditError::Journal(why.clone())));
            }
        }
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    pub(super) fn write_batch(&mut self, batch: &mut Vec<(Item, Option<AckTx>)>, maintain: bool) {
        self.buf.clear();
        let mut staged = std::mem::take(&mut self.staged);
        staged.clear();
        let base = self.seg_base + self.seg_len;
        if maintain {
            self.maintain(base, &mut staged);
        }
        let now = self.clock.now();
        for (item, ack) in batch.drain(..) {
            let start = self.buf.len();
            let (event, kind) = match item {
                Item::Event(e) => (e, RecordKind::Event),
                Item::Intent(e) => (e, RecordKind::Intent),
            };
            // A completion (or a resubmitted intent) of a statement already written with
            // outcome_unknown would be a second row: refused.
            if self.intents.is_late(&event.event_id) {
                if let Some(n) = self.late.hit() {
                    tracing::warn!(
                        event_id = %event.event_id,
                        query_id = event.query_id.as_deref().unwrap_or(""),
                        count = n,
                        "statement events came after their intents were written with \
                         outcome_unknown (intent_timeout_s or max_pending_intents); not recorded"
                    );
                }
                if let Some(ack) = ack {
                    let _ = ack.send(Err(AuditError::IntentExpired));
                }
                continue;
            }
            if let Err(err) = encode_kind(&mut self.buf, self.next_seq, kind, &event) {
                tracing::error!(error = %err, "audit event cannot be journaled");
                if let Some(ack) = ack {
                    let _ = ack.send(Err(AuditError::Journal(JournalFailure::Encode(err.into()))));
                }
                continue;
            }
            let seq = self.take_seq();
            let end = base + self.buf.len() as u64;
            let id = event.event_id;
            match kind {
                RecordKind::Event => {
                    let undo = self.intents.complete(id, seq);
                    staged.push(Pending {
                        end,
                        seq,
                        rec: Rec::Event(event),
                        ack,
                        undo,
                    });
                }
                RecordKind::Intent => {
                    if let Some(oldest) = self.intents.make_room(&id) {
                        if let Some(n) = self.overflow.hit() {
                            tracing::warn!(
                                count = n,
                                pending = self.intents.len(),
                                "too many statements in flight: the oldest intents are written \
                                 with outcome_unknown"
                            );
                        }
                        staged.push(Pending {
                            end,
                            seq: 0,
                            rec: Rec::Expire(oldest),
                            ack: None,
                            undo: None,
                        });
                    }
                    let loc = RecordLoc {
                        seq,
                        seg: self.seg_first,
                        pos: self.seg_len + start as u64,
                    };
                    let time = event.event_time;
                    let undo = self.intents.record(id, loc, time, now);
                    // The event itself is not kept: should the intent become a row of its own
                    // (outcome_unknown), it is read back from the journal.
                    drop(event);
                    staged.push(Pending {
                        end,
                        seq,
                        rec: Rec::Intent {
                            id,
                            time,
                            loc,
                            copy: false,
                        },
                        ack,
                        undo: Some(undo),
                    });
                }
            }
        }
        let records = staged
            .iter()
            .filter(|p| !matches!(p.rec, Rec::Expire(_)))
            .count() as u64;
        if records > 0 {
            let written = match self.file.as_mut() {
                Some(file) => std::io::Write::write_all(file, &self.buf).map_err(|e| {
                    tracing::error!(error = %e, "audit journal write failed");
                    JournalFailure::Write(e.into())
                }),
                None => Err(JournalFailure::NotOpen),
            };
            if let Err(why) = written {
                self.on_error(&mut staged, &why);
                self.staged = staged;
                return;
            }
            if let Some(seg) = lock(&self.core.segs).back_mut() {
                seg.outstanding += records;
            }
        }
        {
            let mut st = lock(&self.core.sync);
            st.pending.extend(staged.drain(..));
            st.written = base + self.buf.len() as u64;
            self.core.cv.notify_all();
        }
        self.staged = staged;
        self.seg_len += self.buf.len() as u64;
        if self.seg_len >= self.segment_bytes {
            self.rotate();
        }
    }

    /// Gives up on intents past `intent_timeout_s`, and copies forward the intents that alone hold
    /// sealed segments at the front of the journal, so those segments can go.
    fn maintain(&mut self, base: u64, staged: &mut Vec<Pending>) {
        self.next_maintenance = Instant::now() + MAINTAIN_EVERY;
        if self.intents.is_empty() {
            return;
        }
        let mut expired = Vec::new();
        self.intents.expire_due(self.clock.now(), &mut expired);
        if !expired.is_empty() {
            tracing::info!(
                count = expired.len(),
                "statements without a completion past intent_timeout_s are written with outcome_unknown"
            );
        }
        for id in expired {
            staged.push(Pending {
                end: base + self.buf.len() as u64,
                seq: 0,
                rec: Rec::Expire(id),
                ack: None,
                undo: None,
            });
        }
        self.carry(base, staged);
    }

    /// Copies the pending intents out of the sealed segments at the front that nothing else holds
    /// (every other record in them is published). Once a copy is durable the parquet thread
    /// releases the old record, and the segment is deleted.
    fn carry(&mut self, base: u64, staged: &mut Vec<Pending>) {
        let front: Vec<(u64, u64)> = lock(&self.core.segs)
            .iter()
            .take_while(|s| s.sealed)
            .map(|s| (s.first_seq, s.outstanding))
            .collect();
        let mut from = Vec::new();
        for (first, outstanding) in front {
            if outstanding == 0 {
                continue; // about to be deleted
            }
            let n = self.intents.count_in(first);
            if n == 0 || outstanding > n {
                break; // held by events not yet published: nothing behind it can go either
            }
            from.push(first);
        }
        if from.is_empty() {
            return;
        }
        let mut entries: Vec<(Uuid, IntentEntry)> = Vec::new();
        self.intents.in_segments(&from, &mut entries);
        let now = self.clock.now();
        let mut payload = Vec::new();
        let mut reading: Option<(u64, PathBuf, File)> = None;
        let mut moved = 0usize;
        for (id, entry) in entries.into_iter().take(MAX_CARRY) {
            if reading
                .as_ref()
                .is_none_or(|(seg, _, _)| *seg != entry.loc.seg)
            {
                let path = self.core.journal.segment_path(entry.loc.seg);
                match File::open(&path) {
                    Ok(f) => reading = Some((entry.loc.seg, path, f)),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "journal segment cannot be read to copy intents forward");
                        reading = None;
                        continue;
                    }
                }
            }
            let Some((_, path, file)) = reading.as_ref() else {
                continue;
            };
            if let Err(e) = read_record_at(file, path, entry.loc.pos, entry.loc.seq, &mut payload) {
                tracing::warn!(error = %e, "pending intent cannot be copied forward; its segment stays");
                continue;
            }
            let start = self.buf.len();
            if encode_payload(&mut self.buf, self.next_seq, &payload).is_err() {
                continue;
            }
            let seq = self.take_seq();
            let loc = RecordLoc {
                seq,
                seg: self.seg_first,
                pos: self.seg_len + start as u64,
            };
            let undo = self.intents.record(id, loc, entry.time, now);
            staged.push(Pending {
                end: base + self.buf.len() as u64,
                seq,
                rec: Rec::Intent {
                    id,
                    time: entry.time,
                    loc,
                    copy: true,
                },
                ack: None,
                undo: Some(undo),
            });
            moved += 1;
        }
        if moved > 0 {
            tracing::debug!(
                moved,
                segments = from.len(),
                "pending intents copied forward out of old journal segments"
            );
        }
    }

    /// A write of the current segment failed: fail everything unsynced and mark the journal
    /// failed; [`reopen`](Self::reopen) cuts the segment back and starts a new one.
    pub(super) fn on_error(&mut self, staged: &mut Vec<Pending>, why: &JournalFailure) {
        let err = AuditError::Journal(why.clone());
        let mut out = Settled::default();
        {
            let mut st = lock(&self.core.sync);
            while st.in_flight {
                st = wait(&self.core.cv, st);
            }
            st.failed = true;
            self.core.health.healthy.store(false, Ordering::Relaxed);
            self.core.settle(&mut st, Err(err.clone()), &mut out);
            // The staged records never counted as outstanding: fail them without releasing.
            for p in staged.drain(..) {
                let Some((id, time)) = p.rec.id_and_time() else {
                    out.events.push((p.seq, p.rec));
                    continue;
                };
                if !p.rec.is_copy() {
                    Gap::fail_event(&mut st, &self.core.health, id, time);
                }
                if let Some(ack) = p.ack {
                    out.acks.push((ack, Err(err.clone())));
                }
                if let Some(u) = p.undo {
                    st.undo.push(u);
                }
            }
        }
        self.core.deliver(&mut out, &self.parquet);
        self.apply_undo();
    }

    /// Seals the current segment (synced whole) and starts the next.
    pub(super) fn rotate(&mut self) {
        let upto = {
            let mut st = lock(&self.core.sync);
            while st.in_flight {
                st = wait(&self.core.cv, st);
            }
            st.in_flight = true;
            st.written
        };
        let synced = self.file.as_ref().map(File::sync_data);
        let mut out = Settled::default();
        {
            let mut st = lock(&self.core.sync);
            st.in_flight = false;
            if let Some(Ok(())) = synced {
                st.synced = st.synced.max(upto);
                self.core.settle(&mut st, Ok(upto), &mut out);
            }
            self.core.cv.notify_all();
        }
        self.core.deliver(&mut out, &self.parquet);
        match synced {
            Some(Ok(())) => {
                // Everything in the old segment is durable; a failed create is retried by reopen.
                self.file = None;
                lock(&self.core.sync).file = None;
                self.reopen();
            }
            Some(Err(e)) => self.on_error(&mut Vec::new(), &JournalFailure::Sync(e.into())),
            None => {}
        }
    }

    /// Starts a fresh segment after a failure or a rotation; returns whether the journal is writable.
    pub(super) fn reopen(&mut self) -> bool {
        let mut out = Settled::default();
        let synced = {
            let mut st = lock(&self.core.sync);
            while st.in_flight {
                st = wait(&self.core.cv, st);
            }
            // Events written after a failed fdatasync are past the synced length and are about to
            // be cut off: they fail too (a rotation comes here with nothing pending).
            if !st.pending.is_empty() {
                let err = AuditError::Journal(JournalFailure::Unsynced);
                self.core.settle(&mut st, Err(err), &mut out);
            }
            st.synced
        };
        self.core.deliver(&mut out, &self.parquet);
        self.apply_undo();
        if let Some(old) = self.file.take() {
            // Drop whatever reached the file but was never acknowledged.
            let keep = synced.saturating_sub(self.seg_base);
            if let Err(e) = old.set_len(keep) {
                tracing::warn!(error = %e, "journal segment could not be cut back to its synced length");
            }
        }
        lock(&self.core.sync).file = None;
        let created = match self.core.journal.create_segment(self.next_seq) {
            Err(crate::audit::journal::JournalError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                // The failed segment holds no record (its first number was never used): replace it.
                let path = self.core.journal.segment_path(self.next_seq);
                let _ = std::fs::remove_file(&path);
                lock(&self.core.segs).retain(|s| s.first_seq != self.next_seq);
                self.core.journal.create_segment(self.next_seq)
            }
            other => other,
        };
        let (path, file) = match created {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "audit journal still not writable");
                return false;
            }
        };
        let Ok(sync_handle) = file.try_clone() else {
            return false;
        };
        {
            let mut segs = lock(&self.core.segs);
            for s in segs.iter_mut() {
                s.sealed = true;
            }
            segs.push_back(Seg {
                first_seq: self.next_seq,
                path,
                outstanding: 0,
                sealed: false,
            });
        }
        self.seg_base = synced;
        self.seg_len = HEADER_LEN;
        self.seg_first = self.next_seq;
        self.file = Some(file);
        {
            let mut st = lock(&self.core.sync);
            st.file = Some(Arc::new(sync_handle));
            st.written = synced + HEADER_LEN;
            st.synced = synced + HEADER_LEN;
            st.failed = false;
        }
        if !self.core.health.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!("audit journal writable again");
        }
        // Sealed segments with nothing outstanding can go now.
        self.core.release(std::iter::empty());
        true
    }

    /// At shutdown, after everything is published: leaves one empty segment carrying the counter.
    pub(super) fn empty_journal(mut self) {
        let current_is_empty = self.seg_len == HEADER_LEN
            && lock(&self.core.segs)
                .back()
                .is_some_and(|s| s.first_seq == self.next_seq && !s.sealed);
        if !current_is_empty && !self.reopen() {
            return;
        }
        self.core.release(std::iter::empty());
    }
}
