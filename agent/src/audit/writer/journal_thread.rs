//! The journal thread (encode, append, rotate, reopen after failure) and the sync thread (one
//! fdatasync at a time, then acknowledgements). See the parent module for the design.

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::mpsc;

use super::core::{AckTx, Core, Gap, Msg, PMsg, Pending, Seg, Settled, lock};
use crate::audit::clock::Clock;
use crate::audit::config::OnAuditFailure;
use crate::audit::journal::{HEADER_LEN, SEGMENT_BYTES, encode_record};
use crate::audit::{AuditError, Event, EventKind};

/// Most events the journal thread encodes into one write.
const MAX_BATCH: usize = 1024;
/// A slow fdatasync is reported at most this often.
const SLOW_SYNC_REPORT_EVERY: Duration = Duration::from_secs(60);

/// The sync thread: one fdatasync at a time, started as soon as there is unsynced data.
pub(super) fn run_sync(core: &Core, parquet: &std_mpsc::Sender<PMsg>) {
    let mut out = Settled::default();
    let mut last_slow_report: Option<Instant> = None;
    loop {
        let (target, file) = {
            let mut st = lock(&core.sync);
            loop {
                let work =
                    !st.failed && !st.in_flight && st.written > st.synced && st.file.is_some();
                if work {
                    break;
                }
                if st.stop && !st.in_flight && (st.failed || st.written == st.synced) {
                    return;
                }
                st = core.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.in_flight = true;
            (st.written, st.file.clone())
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
                        Err(AuditError::Journal(format!("fdatasync: {e}"))),
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
}

impl JournalWriter {
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Msg>) -> Self {
        let mut batch: Vec<(Event, Option<AckTx>)> = Vec::with_capacity(MAX_BATCH);
        let mut stopping = false;
        while !stopping {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Event(e, ack) => batch.push((e, Some(ack))),
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

    /// Reopens after a failure if needed, adds a pending `audit_gap` event, writes the batch.
    pub(super) fn step(&mut self, batch: &mut Vec<(Event, Option<AckTx>)>) {
        let failed = lock(&self.core.sync).failed || self.file.is_none();
        if failed && !self.reopen() {
            self.fail(batch, "the journal is not writable");
            return;
        }
        let gap = lock(&self.core.sync).gap.take();
        if let Some(g) = gap {
            let e = self.gap_event(g);
            lock(&self.core.sync).gap_carry = Some((e.event_id, g));
            batch.insert(0, (e, None));
        }
        if !batch.is_empty() {
            self.write_batch(batch);
        }
    }

    pub(super) fn gap_event(&self, g: Gap) -> Event {
        let ts =
            |t: SystemTime| DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut e = Event::new(EventKind::Lifecycle, self.clock.now(), &self.host);
        e.lifecycle_action = Some("audit_gap".into());
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
    pub(super) fn fail(&mut self, batch: &mut Vec<(Event, Option<AckTx>)>, why: &str) {
        if batch.is_empty() {
            return;
        }
        let mut st = lock(&self.core.sync);
        for (e, ack) in batch.drain(..) {
            Gap::fail_event(&mut st, &self.core.health, &e);
            if let Some(ack) = ack {
                let _ = ack.send(Err(AuditError::Journal(why.to_owned())));
            }
        }
    }

    pub(super) fn write_batch(&mut self, batch: &mut Vec<(Event, Option<AckTx>)>) {
        self.buf.clear();
        let mut ends = Vec::with_capacity(batch.len());
        let base = self.seg_base + self.seg_len;
        for (e, ack) in batch.iter_mut() {
            match encode_record(&mut self.buf, self.next_seq, e) {
                Ok(()) => {
                    ends.push(Some((self.next_seq, base + self.buf.len() as u64)));
                    self.next_seq += 1;
                }
                Err(err) => {
                    tracing::error!(error = %err, "audit event cannot be journaled");
                    if let Some(ack) = ack.take() {
                        let _ = ack.send(Err(AuditError::Journal(err.to_string())));
                    }
                    ends.push(None);
                }
            }
        }
        let Some(file) = self.file.as_mut() else {
            return self.fail(batch, "the journal is not open");
        };
        if let Err(e) = std::io::Write::write_all(file, &self.buf) {
            tracing::error!(error = %e, "audit journal write failed");
            self.on_error(batch, &format!("write: {e}"));
            return;
        }
        let written = ends.iter().flatten().count() as u64;
        if let Some(seg) = lock(&self.core.segs).back_mut() {
            seg.outstanding += written;
        }
        {
            let mut st = lock(&self.core.sync);
            for ((event, ack), end) in batch.drain(..).zip(ends) {
                if let Some((seq, end)) = end {
                    st.pending.push_back(Pending {
                        end,
                        seq,
                        event,
                        ack,
                    });
                }
            }
            st.written = base + self.buf.len() as u64;
            self.core.cv.notify_all();
        }
        self.seg_len += self.buf.len() as u64;
        if self.seg_len >= SEGMENT_BYTES {
            self.rotate();
        }
    }

    /// A write or sync of the current segment failed: fail everything unsynced and mark the journal
    /// failed; [`reopen`](Self::reopen) cuts the segment back and starts a new one.
    pub(super) fn on_error(&mut self, batch: &mut Vec<(Event, Option<AckTx>)>, why: &str) {
        let err = AuditError::Journal(why.to_owned());
        let mut out = Settled::default();
        {
            let mut st = lock(&self.core.sync);
            while st.in_flight {
                st = self.core.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.failed = true;
            self.core.health.healthy.store(false, Ordering::Relaxed);
            self.core.settle(&mut st, Err(err.clone()), &mut out);
            for (e, ack) in batch.drain(..) {
                Gap::fail_event(&mut st, &self.core.health, &e);
                if let Some(ack) = ack {
                    out.acks.push((ack, Err(err.clone())));
                }
            }
        }
        for (ack, r) in out.acks.drain(..) {
            let _ = ack.send(r);
        }
        self.core.release(out.failed.drain(..));
    }

    /// Seals the current segment (synced whole) and starts the next.
    pub(super) fn rotate(&mut self) {
        let upto = {
            let mut st = lock(&self.core.sync);
            while st.in_flight {
                st = self.core.cv.wait(st).unwrap_or_else(|e| e.into_inner());
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
            Some(Err(e)) => self.on_error(&mut Vec::new(), &format!("fdatasync: {e}")),
            None => {}
        }
    }

    /// Starts a fresh segment after a failure or a rotation; returns whether the journal is writable.
    pub(super) fn reopen(&mut self) -> bool {
        let mut out = Settled::default();
        let synced = {
            let mut st = lock(&self.core.sync);
            while st.in_flight {
                st = self.core.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            // Events written after a failed fdatasync are past the synced length and are about to
            // be cut off: they fail too (a rotation comes here with nothing pending).
            if !st.pending.is_empty() {
                let err =
                    AuditError::Journal("the journal failed before this event was synced".into());
                self.core.settle(&mut st, Err(err), &mut out);
            }
            st.synced
        };
        for (ack, r) in out.acks.drain(..) {
            let _ = ack.send(r);
        }
        self.core.release(out.failed.drain(..));
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
