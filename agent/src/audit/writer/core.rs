//! The state the writer's threads share: the sync state (written and synced positions, pending
//! records and their acknowledgements, the gap), the journal's segment table, and the messages
//! between threads. Settling pending records and releasing journal records happen here, under one
//! lock each; the threads' loops are elsewhere.

use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc as std_mpsc};
use std::time::SystemTime;

use tokio::sync::oneshot;
use uuid::Uuid;

use super::intents::Undo;
use crate::audit::journal::{JournalDir, SeqRanges, sync_dir};
use crate::audit::{AuditError, Event};
use crate::sync::lock;

pub(super) type AckTx = oneshot::Sender<Result<(), AuditError>>;

// Events travel boxed: an event is about 1.5 KB, and unboxed it was copied at every hand-off
// (into and out of the channel, into the batch, the pending queue, the parquet thread's batch);
// those copies cost more than the one allocation.
pub(super) enum Msg {
    Event(Box<Event>, AckTx),
    Intent(Box<Event>, AckTx),
    Tick,
    Shutdown,
}

/// Where a journal record is: its number, its segment (by first number) and its byte offset there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RecordLoc {
    pub(super) seq: u64,
    pub(super) seg: u64,
    pub(super) pos: u64,
}

/// What travels from the journal thread to the parquet thread, in journal order.
// Boxed, for the same reason as `Msg`.
pub(super) enum Rec {
    /// A complete event (its own row, or the row of the pending intent with its id).
    Event(Box<Event>),
    /// An intent record: a new intent, one submitted again, or one copied forward out of an old
    /// segment; the parquet thread keeps only where its latest record is (the event is read back
    /// from the journal if it is ever needed).
    Intent {
        id: Uuid,
        time: SystemTime,
        loc: RecordLoc,
        /// A copy made by the writer (no acknowledgement, not counted in a gap if it fails).
        copy: bool,
    },
    /// Not a journal record: the writer stopped waiting for this intent's completion (timeout or
    /// bound), so the parquet thread writes it with `outcome_unknown`.
    Expire(Uuid),
}

impl Rec {
    pub(super) fn is_copy(&self) -> bool {
        matches!(self, Rec::Intent { copy: true, .. })
    }

    pub(super) fn id_and_time(&self) -> Option<(Uuid, SystemTime)> {
        match self {
            Rec::Event(e) => Some((e.event_id, e.event_time)),
            Rec::Intent { id, time, .. } => Some((*id, *time)),
            Rec::Expire(_) => None,
        }
    }
}

pub(super) enum PMsg {
    Events(Vec<(u64, Rec)>),
    Shutdown(std_mpsc::Sender<u64>),
}

pub(super) struct Health {
    pub(super) healthy: AtomicBool,
    pub(super) gap_events: AtomicU64,
    pub(super) syncs: AtomicU64,
    /// Complete `query` events submitted: statements recorded (for `snowtrail status`).
    pub(super) statements: AtomicU64,
    /// The Parquet files open now, under their final names (updated by the parquet thread when the
    /// set changes).
    pub(super) open_files: Mutex<Vec<PathBuf>>,
}

pub(super) struct Pending {
    /// The position the record ends at (for an `Expire`, the position written when it was decided).
    pub(super) end: u64,
    pub(super) seq: u64,
    pub(super) rec: Rec,
    pub(super) ack: Option<AckTx>,
    /// How to take back the record's change to the journal thread's intent table if it fails.
    pub(super) undo: Option<Undo>,
}

#[derive(Clone, Copy)]
pub(super) struct Gap {
    pub(super) count: u64,
    pub(super) first: SystemTime,
    pub(super) last: SystemTime,
}

pub(super) struct SyncState {
    pub(super) file: Option<Arc<File>>,
    pub(super) written: u64,
    pub(super) synced: u64,
    pub(super) pending: VecDeque<Pending>,
    pub(super) in_flight: bool,
    pub(super) failed: bool,
    pub(super) stop: bool,
    /// Events that failed since the last `audit_gap` event was made durable.
    pub(super) gap: Option<Gap>,
    /// The `audit_gap` event in flight and the gap it reports, put back if it fails too.
    pub(super) gap_carry: Option<(uuid::Uuid, Gap)>,
    /// Intent table changes of records that failed, for the journal thread to take back.
    pub(super) undo: Vec<Undo>,
}

pub(super) struct Seg {
    pub(super) first_seq: u64,
    pub(super) path: PathBuf,
    pub(super) outstanding: u64,
    pub(super) sealed: bool,
}

pub(super) struct Core {
    pub(super) sync: Mutex<SyncState>,
    pub(super) cv: Condvar,
    pub(super) segs: Mutex<VecDeque<Seg>>,
    pub(super) health: Arc<Health>,
    pub(super) journal: JournalDir,
    pub(super) events_written: AtomicU64,
    pub(super) files_published: AtomicU64,
    /// Intents written with `outcome_unknown`.
    pub(super) intents_unknown: AtomicU64,
    /// `batch_window_ms`: an fdatasync slower than this is reported, since events behind it wait longer.
    pub(super) batch_window: std::time::Duration,
}

/// The results of settling pending events, delivered outside the lock.
#[derive(Default)]
pub(super) struct Settled {
    pub(super) acks: Vec<(AckTx, Result<(), AuditError>)>,
    pub(super) events: Vec<(u64, Rec)>,
    pub(super) failed: Vec<u64>,
}

impl Gap {
    pub(super) fn merge(gap: &mut Option<Gap>, other: Gap) {
        match gap {
            Some(g) => {
                g.count += other.count;
                g.first = g.first.min(other.first);
                g.last = g.last.max(other.last);
            }
            None => *gap = Some(other),
        }
    }

    /// Counts one failed event, unless it is the `audit_gap` event itself, whose gap is put back.
    pub(super) fn fail_event(st: &mut SyncState, health: &Health, id: Uuid, time: SystemTime) {
        if let Some((gap_id, g)) = st.gap_carry
            && gap_id == id
        {
            st.gap_carry = None;
            Gap::merge(&mut st.gap, g);
            return;
        }
        Gap::add(&mut st.gap, time);
        health.gap_events.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn add(gap: &mut Option<Gap>, t: SystemTime) {
        match gap {
            Some(g) => {
                g.count += 1;
                g.first = g.first.min(t);
                g.last = g.last.max(t);
            }
            None => {
                *gap = Some(Gap {
                    count: 1,
                    first: t,
                    last: t,
                })
            }
        }
    }
}

impl Core {
    /// Resolves pending records up to `upto` as durable, or every pending record as failed (an
    /// `Expire` is never failed: it needs no disk, so it goes on to Parquet either way).
    pub(super) fn settle(
        &self,
        st: &mut SyncState,
        outcome: Result<u64, AuditError>,
        out: &mut Settled,
    ) {
        match outcome {
            Ok(upto) => {
                while st.pending.front().is_some_and(|p| p.end <= upto) {
                    let Some(p) = st.pending.pop_front() else {
                        break;
                    };
                    if let Some(ack) = p.ack {
                        out.acks.push((ack, Ok(())));
                    } else if let Rec::Event(e) = &p.rec
                        && st.gap_carry.is_some_and(|(id, _)| id == e.event_id)
                    {
                        st.gap_carry = None;
                    }
                    out.events.push((p.seq, p.rec));
                }
            }
            Err(e) => {
                let pending = std::mem::take(&mut st.pending);
                for p in pending {
                    let Some((id, time)) = p.rec.id_and_time() else {
                        out.events.push((p.seq, p.rec));
                        continue;
                    };
                    if !p.rec.is_copy() {
                        Gap::fail_event(st, &self.health, id, time);
                    }
                    if let Some(ack) = p.ack {
                        out.acks.push((ack, Err(e.clone())));
                    }
                    if let Some(u) = p.undo {
                        st.undo.push(u);
                    }
                    out.failed.push(p.seq);
                }
            }
        }
    }

    pub(super) fn deliver(&self, out: &mut Settled, parquet: &std_mpsc::Sender<PMsg>) {
        // Records go to the parquet stage before their acknowledgements are released.
        if !out.events.is_empty() {
            let records = out
                .events
                .iter()
                .filter(|(_, r)| !matches!(r, Rec::Expire(_)))
                .count();
            self.events_written
                .fetch_add(records as u64, Ordering::Relaxed);
            let events = std::mem::take(&mut out.events);
            if let Err(std_mpsc::SendError(PMsg::Events(lost))) = parquet.send(PMsg::Events(events))
            {
                // The parquet thread is gone (it panicked): the events stay in the journal.
                tracing::error!(
                    count = lost.len(),
                    "audit parquet stage is gone; events stay in the journal"
                );
            }
        }
        for (ack, r) in out.acks.drain(..) {
            let _ = ack.send(r);
        }
        if !out.failed.is_empty() {
            let failed = std::mem::take(&mut out.failed);
            self.release(failed.iter().copied());
        }
    }

    /// Marks journal records as no longer needed (published or failed) and deletes the sealed
    /// segments at the front whose records are all released.
    pub(super) fn release(&self, seqs: impl Iterator<Item = u64>) {
        let mut doomed = Vec::new();
        {
            let mut segs = lock(&self.segs);
            for seq in seqs {
                let i = segs.partition_point(|s| s.first_seq <= seq);
                if let Some(seg) = i.checked_sub(1).and_then(|i| segs.get_mut(i)) {
                    seg.outstanding = seg.outstanding.saturating_sub(1);
                }
            }
            while segs.front().is_some_and(|s| s.sealed && s.outstanding == 0) {
                if let Some(s) = segs.pop_front() {
                    doomed.push(s.path);
                }
            }
        }
        for path in &doomed {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "journal segment could not be removed");
            }
        }
        if !doomed.is_empty() {
            let _ = sync_dir(&self.journal.path);
        }
    }

    pub(super) fn release_ranges(&self, seqs: &SeqRanges) {
        self.release(seqs.ranges().iter().flat_map(|&(a, b)| a..=b));
    }
}
