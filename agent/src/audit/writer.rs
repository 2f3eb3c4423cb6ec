//! The audit writer: takes events from any task, makes them durable in the journal with group
//! commit, acknowledges them, and turns them into hourly Parquet files.
//!
//! Three threads, so that no tokio worker ever waits on the disk:
//! - **journal** (owns the bounded channel's receiver): takes every event waiting in the channel,
//!   encodes them into one buffer, appends it to the current segment with one `write`, and queues
//!   their acknowledgements behind the written position. It rotates segments at
//!   [`SEGMENT_BYTES`](super::journal::SEGMENT_BYTES), and after a failure reopens a fresh segment.
//! - **sync**: whenever the written position is ahead of the synced one and no fdatasync is in
//!   flight, it starts one at once; events written meanwhile wait for the next, which starts as soon
//!   as the in-flight one returns (DECISIONS.md 12). One fdatasync at a time on purpose: after a
//!   failed fsync, Linux may report success to a concurrent one for pages it dropped, so overlapping
//!   fsyncs could acknowledge lost events. An event waits therefore at most for the in-flight
//!   fdatasync and its own; `batch_window_ms` is the bound this must stay within on healthy disks.
//!   When an fdatasync returns, the sync thread resolves the acknowledgements it covers and passes the
//!   events on to Parquet (only durable events reach Parquet).
//! - **parquet**: appends events to the open file of their hour (`event_time`, UTC), closes files
//!   at the hour boundary (writer clock), at `max_file_bytes`, at `max_file_age_s`, a few seconds
//!   after opening for rows that arrived after their hour closed, and at shutdown; publishes them
//!   atomically (`files`), then releases the journal segments whose events are all published.
//!
//! On a journal write or sync failure (disk full, directory unwritable) every unsynced event's
//! acknowledgement fails with [`AuditError::Journal`], [`AuditWriter::healthy`] turns false, the
//! segment is cut back to its last synced byte, and the writer retries with a fresh segment twice a
//! second. Events that fail are counted as a gap; once writing works again the writer records one
//! `lifecycle` event with `lifecycle_action = "audit_gap"` and the count and time range in `detail`.
//! Whether statements are refused meanwhile (`on_audit_failure = "block"`) or go ahead (`"allow"`)
//! is the proxy's decision; the writer's behaviour is the same in both modes.
//!
//! A Parquet failure does not fail acknowledgements (the events are durable in the journal); the
//! file is dropped and rebuilt from the journal every few seconds until it can be written.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc as std_mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::{mpsc, oneshot};

use super::clock::Clock;
use super::config::{AuditConfig, OnAuditFailure};
use super::event::{Event, EventKind};
use super::files::{FileSettings, OpenFile, hour_end, hour_of, sanitize_host};
use super::journal::{HEADER_LEN, JournalDir, SEGMENT_BYTES, SeqRanges, encode_record, sync_dir};
use super::recovery::{RecoveryReport, read_events, recover};
use super::{Ack, AuditError, EventSink};

/// Most events the journal thread encodes into one write.
const MAX_BATCH: usize = 1024;
/// How often the parquet thread checks closing times and failed files (real time).
const TICK: Duration = Duration::from_millis(250);
/// How long a file opened for an hour that already closed stays open for more late rows.
const LATE_LINGER: Duration = Duration::from_secs(5);
/// How often a Parquet file that failed is rebuilt from the journal.
const RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// Everything the writer needs; built by the daemon from the configuration.
pub struct WriterOptions {
    /// The state directory; the journal lives in `<state_dir>/journal`.
    pub state_dir: PathBuf,
    /// Where the Parquet partitions go.
    pub audit_dir: PathBuf,
    /// This host's name, used in file names and the writer's own events.
    pub host: String,
    /// The `[audit]` section.
    pub config: AuditConfig,
    /// The top-level `on_audit_failure` key, recorded in `audit_gap` events.
    pub on_failure: OnAuditFailure,
    /// The clock that decides when files close.
    pub clock: Arc<dyn Clock>,
}

/// The cheap, clonable handle every part of the agent submits events through.
#[derive(Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<Msg>,
    health: Arc<Health>,
}

/// Owns the writer's threads; [`shutdown`](WriterTask::shutdown) stops them cleanly.
pub struct WriterTask {
    tx: mpsc::Sender<Msg>,
    core: Arc<Core>,
    journal: Option<JoinHandle<JournalWriter>>,
    sync: Option<JoinHandle<()>>,
    parquet: Option<(std_mpsc::Sender<PMsg>, JoinHandle<()>)>,
    recovery: RecoveryReport,
}

/// What a clean shutdown did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Events made durable since start (the writer's own lifecycle events included).
    pub events_written: u64,
    /// Parquet files published since start (recovery's not included).
    pub files_published: u64,
    /// Events whose acknowledgement failed since start.
    pub gap_events: u64,
    /// Durable events that could not be written to Parquet and stay in the journal for the next start.
    pub left_in_journal: u64,
}

type AckTx = oneshot::Sender<Result<(), AuditError>>;

enum Msg {
    Event(Event, AckTx),
    Tick,
    Shutdown,
}

enum PMsg {
    Events(Vec<(u64, Event)>),
    Shutdown(std_mpsc::Sender<u64>),
}

struct Health {
    healthy: AtomicBool,
    gap_events: AtomicU64,
}

struct Pending {
    end: u64,
    seq: u64,
    event: Event,
    ack: Option<AckTx>,
}

#[derive(Clone, Copy)]
struct Gap {
    count: u64,
    first: SystemTime,
    last: SystemTime,
}

struct SyncState {
    file: Option<Arc<File>>,
    written: u64,
    synced: u64,
    pending: VecDeque<Pending>,
    in_flight: bool,
    failed: bool,
    stop: bool,
    /// Events that failed since the last `audit_gap` event was made durable.
    gap: Option<Gap>,
    /// The `audit_gap` event in flight and the gap it reports, put back if it fails too.
    gap_carry: Option<(uuid::Uuid, Gap)>,
}

struct Seg {
    first_seq: u64,
    path: PathBuf,
    outstanding: u64,
    sealed: bool,
}

struct Core {
    sync: Mutex<SyncState>,
    cv: Condvar,
    segs: Mutex<VecDeque<Seg>>,
    health: Arc<Health>,
    journal: JournalDir,
    events_written: AtomicU64,
    files_published: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The results of settling pending events, delivered outside the lock.
#[derive(Default)]
struct Settled {
    acks: Vec<(AckTx, Result<(), AuditError>)>,
    events: Vec<(u64, Event)>,
    failed: Vec<u64>,
}

impl Gap {
    fn merge(gap: &mut Option<Gap>, other: Gap) {
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
    fn fail_event(st: &mut SyncState, health: &Health, e: &Event) {
        if let Some((id, g)) = st.gap_carry {
            if id == e.event_id {
                st.gap_carry = None;
                Gap::merge(&mut st.gap, g);
                return;
            }
        }
        Gap::add(&mut st.gap, e.event_time);
        health.gap_events.fetch_add(1, Ordering::Relaxed);
    }

    fn add(gap: &mut Option<Gap>, t: SystemTime) {
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
    /// Resolves pending events up to `upto` as durable, or every pending event as failed.
    fn settle(&self, st: &mut SyncState, outcome: Result<u64, AuditError>, out: &mut Settled) {
        match outcome {
            Ok(upto) => {
                while st.pending.front().is_some_and(|p| p.end <= upto) {
                    let Some(p) = st.pending.pop_front() else {
                        break;
                    };
                    if let Some(ack) = p.ack {
                        out.acks.push((ack, Ok(())));
                    } else if st.gap_carry.is_some_and(|(id, _)| id == p.event.event_id) {
                        st.gap_carry = None;
                    }
                    out.events.push((p.seq, p.event));
                }
            }
            Err(e) => {
                let pending = std::mem::take(&mut st.pending);
                for p in pending {
                    Gap::fail_event(st, &self.health, &p.event);
                    if let Some(ack) = p.ack {
                        out.acks.push((ack, Err(e.clone())));
                    }
                    out.failed.push(p.seq);
                }
            }
        }
    }

    fn deliver(&self, out: &mut Settled, parquet: &std_mpsc::Sender<PMsg>) {
        // Events go to the parquet stage before their acknowledgements are released.
        if !out.events.is_empty() {
            self.events_written
                .fetch_add(out.events.len() as u64, Ordering::Relaxed);
            let events = std::mem::take(&mut out.events);
            if let Err(std_mpsc::SendError(PMsg::Events(lost))) = parquet.send(PMsg::Events(events)) {
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
    fn release(&self, seqs: impl Iterator<Item = u64>) {
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

    fn release_ranges(&self, seqs: &SeqRanges) {
        self.release(seqs.ranges().iter().flat_map(|&(a, b)| a..=b));
    }
}

impl AuditWriter {
    /// Opens the journal, runs recovery (every journal left behind becomes Parquet), then starts the
    /// writer's threads.
    pub async fn start(opts: WriterOptions) -> Result<(AuditWriter, WriterTask), AuditError> {
        tokio::task::spawn_blocking(move || start_blocking(opts))
            .await
            .map_err(|e| AuditError::Recovery(format!("start-up task failed: {e}")))?
    }

    /// Whether the journal is writable right now; the proxy consults it before forwarding a statement
    /// when `on_audit_failure = "block"`.
    pub fn healthy(&self) -> bool {
        self.health.healthy.load(Ordering::Relaxed)
    }

    /// Events whose acknowledgement failed since start (the gap), for metrics.
    pub fn gap_events(&self) -> u64 {
        self.health.gap_events.load(Ordering::Relaxed)
    }
}

impl EventSink for AuditWriter {
    fn submit(&self, event: Event) -> Ack {
        let (ack_tx, ack_rx) = oneshot::channel();
        let recv = async move { ack_rx.await.unwrap_or(Err(AuditError::Closed)) };
        match self.tx.try_send(Msg::Event(event, ack_tx)) {
            Ok(()) => Box::pin(recv),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Box::pin(std::future::ready(Err(AuditError::Closed)))
            }
            Err(mpsc::error::TrySendError::Full(msg)) => {
                // The channel is full: the event must still be submitted if the caller drops the ack,
                // so the wait for room happens in a task of its own.
                let tx = self.tx.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(h) => {
                        h.spawn(async move {
                            let _ = tx.send(msg).await;
                        });
                    }
                    Err(_) => {
                        let _ = tx.blocking_send(msg);
                    }
                }
                Box::pin(recv)
            }
        }
    }
}

impl WriterTask {
    /// What start-up recovery did.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Stops taking events, makes every accepted one durable, closes and publishes all files, and
    /// empties the journal (keeping one empty segment that carries the sequence counter).
    pub async fn shutdown(mut self) -> Result<ShutdownReport, AuditError> {
        let _ = self.tx.send(Msg::Shutdown).await;
        let core = self.core.clone();
        let journal = self.journal.take();
        let sync = self.sync.take();
        let parquet = self.parquet.take();
        tokio::task::spawn_blocking(move || -> Result<ShutdownReport, AuditError> {
            let dead = |what: &str| AuditError::Internal(format!("audit {what} thread panicked"));
            let jw = journal
                .ok_or_else(|| dead("journal"))?
                .join()
                .map_err(|_| dead("journal"))?;
            {
                let mut st = lock(&core.sync);
                st.stop = true;
                core.cv.notify_all();
            }
            if let Some(s) = sync {
                s.join().map_err(|_| dead("sync"))?;
            }
            let mut left = 0;
            if let Some((tx, handle)) = parquet {
                let (rtx, rrx) = std_mpsc::channel();
                let _ = tx.send(PMsg::Shutdown(rtx));
                left = rrx.recv().map_err(|_| dead("parquet"))?;
                handle.join().map_err(|_| dead("parquet"))?;
            }
            jw.empty_journal();
            Ok(ShutdownReport {
                events_written: core.events_written.load(Ordering::Relaxed),
                files_published: core.files_published.load(Ordering::Relaxed),
                gap_events: core.health.gap_events.load(Ordering::Relaxed),
                left_in_journal: left,
            })
        })
        .await
        .map_err(|e| AuditError::Internal(format!("shutdown task failed: {e}")))?
    }
}

fn start_blocking(opts: WriterOptions) -> Result<(AuditWriter, WriterTask), AuditError> {
    let rec = |e: &dyn std::fmt::Display| AuditError::Recovery(e.to_string());
    let journal = JournalDir::open(&opts.state_dir).map_err(|e| rec(&e))?;
    let settings = FileSettings {
        audit_dir: opts.audit_dir.clone(),
        host: sanitize_host(&opts.host),
        journal_id: journal.id,
        row_group_rows: opts.config.row_group_rows.max(1),
    };
    let max_file_bytes = opts.config.max_file_bytes.max(1);
    let report =
        recover(&journal, &settings, max_file_bytes, opts.clock.now()).map_err(|e| rec(&e))?;
    if report.records > 0 {
        tracing::info!(?report, "audit journal recovered");
    }
    let (seg_path, seg_file) = journal
        .create_segment(report.next_seq)
        .map_err(|e| rec(&e))?;
    let sync_handle = seg_file.try_clone().map_err(|e| rec(&e))?;

    let health = Arc::new(Health {
        healthy: AtomicBool::new(true),
        gap_events: AtomicU64::new(0),
    });
    let core = Arc::new(Core {
        sync: Mutex::new(SyncState {
            file: Some(Arc::new(sync_handle)),
            written: HEADER_LEN,
            synced: HEADER_LEN,
            pending: VecDeque::new(),
            in_flight: false,
            failed: false,
            stop: false,
            gap: None,
            gap_carry: None,
        }),
        cv: Condvar::new(),
        segs: Mutex::new(VecDeque::from([Seg {
            first_seq: report.next_seq,
            path: seg_path,
            outstanding: 0,
            sealed: false,
        }])),
        health: health.clone(),
        journal,
        events_written: AtomicU64::new(0),
        files_published: AtomicU64::new(0),
    });

    let (tx, rx) = mpsc::channel(opts.config.channel_capacity.max(1));
    let (ptx, prx) = std_mpsc::channel();
    let spawn_err =
        |e: std::io::Error| AuditError::Internal(format!("cannot start audit thread: {e}"));

    let stage = ParquetStage {
        core: core.clone(),
        settings,
        max_file_bytes,
        max_age: opts.config.max_file_age_s.map(Duration::from_secs),
        clock: opts.clock.clone(),
        open: HashMap::new(),
        failed: BTreeMap::new(),
        next_retry: Instant::now(),
        ticker: tx.downgrade(),
    };
    let parquet = std::thread::Builder::new()
        .name("audit-parquet".into())
        .spawn(move || stage.run(prx))
        .map_err(spawn_err)?;

    let sync_core = core.clone();
    let sync_ptx = ptx.clone();
    let sync = std::thread::Builder::new()
        .name("audit-sync".into())
        .spawn(move || run_sync(&sync_core, &sync_ptx))
        .map_err(spawn_err)?;

    let jw = JournalWriter {
        core: core.clone(),
        file: Some(seg_file),
        seg_base: 0,
        seg_len: HEADER_LEN,
        next_seq: report.next_seq,
        buf: Vec::with_capacity(1 << 16),
        host: opts.host.clone(),
        clock: opts.clock.clone(),
        on_failure: opts.on_failure,
        parquet: ptx.clone(),
    };
    let journal = std::thread::Builder::new()
        .name("audit-journal".into())
        .spawn(move || jw.run(rx))
        .map_err(spawn_err)?;

    let writer = AuditWriter {
        tx: tx.clone(),
        health,
    };
    let task = WriterTask {
        tx,
        core,
        journal: Some(journal),
        sync: Some(sync),
        parquet: Some((ptx, parquet)),
        recovery: report,
    };
    Ok((writer, task))
}

/// The sync thread: one fdatasync at a time, started as soon as there is unsynced data.
fn run_sync(core: &Core, parquet: &std_mpsc::Sender<PMsg>) {
    let mut out = Settled::default();
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
        let result = match file {
            Some(f) => f.sync_data(),
            None => Ok(()),
        };
        {
            let mut st = lock(&core.sync);
            st.in_flight = false;
            match result {
                Ok(()) => {
                    st.synced = st.synced.max(target);
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
struct JournalWriter {
    core: Arc<Core>,
    file: Option<File>,
    /// Global position of the current segment's first byte.
    seg_base: u64,
    seg_len: u64,
    next_seq: u64,
    buf: Vec<u8>,
    host: String,
    clock: Arc<dyn Clock>,
    on_failure: OnAuditFailure,
    parquet: std_mpsc::Sender<PMsg>,
}

impl JournalWriter {
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) -> Self {
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
    fn step(&mut self, batch: &mut Vec<(Event, Option<AckTx>)>) {
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

    fn gap_event(&self, g: Gap) -> Event {
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
    fn fail(&mut self, batch: &mut Vec<(Event, Option<AckTx>)>, why: &str) {
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

    fn write_batch(&mut self, batch: &mut Vec<(Event, Option<AckTx>)>) {
        self.buf.clear();
        let first_seq = self.next_seq;
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
            self.next_seq = first_seq.max(self.next_seq);
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
    fn on_error(&mut self, batch: &mut Vec<(Event, Option<AckTx>)>, why: &str) {
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
    fn rotate(&mut self) {
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
    fn reopen(&mut self) -> bool {
        let synced = {
            let mut st = lock(&self.core.sync);
            while st.in_flight {
                st = self.core.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.synced
        };
        if let Some(old) = self.file.take() {
            // Drop whatever reached the file but was never acknowledged.
            let keep = synced.saturating_sub(self.seg_base);
            if let Err(e) = old.set_len(keep) {
                tracing::warn!(error = %e, "journal segment could not be cut back to its synced length");
            }
        }
        lock(&self.core.sync).file = None;
        let created = match self.core.journal.create_segment(self.next_seq) {
            Err(super::journal::JournalError::Io { source, .. })
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
    fn empty_journal(mut self) {
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

/// The parquet thread's state.
struct ParquetStage {
    core: Arc<Core>,
    settings: FileSettings,
    max_file_bytes: u64,
    max_age: Option<Duration>,
    clock: Arc<dyn Clock>,
    open: HashMap<i64, OpenFile>,
    failed: BTreeMap<i64, SeqRanges>,
    next_retry: Instant,
    ticker: mpsc::WeakSender<Msg>,
}

impl ParquetStage {
    fn run(mut self, rx: std_mpsc::Receiver<PMsg>) {
        loop {
            match rx.recv_timeout(TICK) {
                Ok(PMsg::Events(events)) => self.append(events),
                Ok(PMsg::Shutdown(reply)) => {
                    // Take what is still queued, then close everything.
                    while let Ok(PMsg::Events(events)) = rx.try_recv() {
                        self.append(events);
                    }
                    let hours: Vec<i64> = self.open.keys().copied().collect();
                    for h in hours {
                        self.close(h);
                    }
                    self.retry_failed();
                    let left = self.failed.values().map(SeqRanges::count).sum();
                    let _ = reply.send(left);
                    return;
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
            self.maintain();
        }
    }

    fn append(&mut self, events: Vec<(u64, Event)>) {
        let now = self.clock.now();
        for (seq, event) in events {
            let hour = hour_of(event.event_time);
            if !self.open.contains_key(&hour) {
                let late = now >= hour_end(hour);
                match OpenFile::create(&self.settings, hour, &event, seq, now, late) {
                    Ok(f) => {
                        self.open.insert(hour, f);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "audit parquet file cannot be created; kept in the journal");
                        self.failed.entry(hour).or_default().insert(seq);
                        continue;
                    }
                }
            }
            let Some(file) = self.open.get_mut(&hour) else {
                continue;
            };
            if let Err(e) = file.append(seq, &event) {
                tracing::error!(error = %e, "audit parquet write failed; kept in the journal");
                if let Some(f) = self.open.remove(&hour) {
                    let a = f.abandon(e);
                    self.failed.entry(hour).or_default().extend(&a.seqs);
                }
                continue;
            }
            if file.size() >= self.max_file_bytes {
                self.close(hour);
            }
        }
    }

    /// Closes files whose time has come; retries failed ones; asks the journal thread to retry while
    /// the journal is unhealthy.
    fn maintain(&mut self) {
        let now = self.clock.now();
        let due: Vec<i64> = self
            .open
            .iter()
            .filter(|(hour, f)| {
                let age = now.duration_since(f.opened_at).unwrap_or_default();
                let closed_hour = if f.late {
                    age >= LATE_LINGER
                } else {
                    now >= hour_end(**hour)
                };
                closed_hour || self.max_age.is_some_and(|m| age >= m)
            })
            .map(|(h, _)| *h)
            .collect();
        for h in due {
            self.close(h);
        }
        for f in self.open.values_mut() {
            if let Err(e) = f.flush() {
                tracing::warn!(error = %e, "audit parquet flush failed");
            }
        }
        if !self.failed.is_empty() && Instant::now() >= self.next_retry {
            self.retry_failed();
            self.next_retry = Instant::now() + RETRY_INTERVAL;
        }
        if !self.core.health.healthy.load(Ordering::Relaxed) {
            if let Some(tx) = self.ticker.upgrade() {
                let _ = tx.try_send(Msg::Tick);
            }
        }
    }

    fn close(&mut self, hour: i64) {
        let Some(f) = self.open.remove(&hour) else {
            return;
        };
        match f.publish() {
            Ok(p) => {
                tracing::debug!(path = %p.path.display(), rows = p.rows, "audit file published");
                self.core.files_published.fetch_add(1, Ordering::Relaxed);
                self.core.release_ranges(&p.seqs);
            }
            Err(a) => {
                tracing::error!(error = %a.error, "audit parquet file could not be published; kept in the journal");
                self.failed.entry(a.hour).or_default().extend(&a.seqs);
            }
        }
    }

    /// Rebuilds files that failed from the journal, which still holds their events.
    fn retry_failed(&mut self) {
        let paths: Vec<PathBuf> = lock(&self.core.segs)
            .iter()
            .map(|s| s.path.clone())
            .collect();
        let failed = std::mem::take(&mut self.failed);
        let now = self.clock.now();
        for (hour, seqs) in failed {
            let mut file: Option<OpenFile> = None;
            let mut error = None;
            let read = read_events(&paths, &seqs, |seq, event| {
                if error.is_some() {
                    return;
                }
                if file.is_none() {
                    match OpenFile::create(&self.settings, hour, &event, seq, now, true) {
                        Ok(f) => file = Some(f),
                        Err(e) => {
                            error = Some(e);
                            return;
                        }
                    }
                }
                if let Some(f) = file.as_mut() {
                    if let Err(e) = f.append(seq, &event) {
                        error = Some(e);
                    }
                }
            });
            let published = match (read, error, file) {
                (Ok(_), None, Some(f)) => f.publish().map_err(|a| a.error.to_string()),
                (Ok(_), None, None) => {
                    // Nothing to rebuild from (a bug or a removed segment): do not retry forever.
                    tracing::error!(hour, seqs = %seqs, "audit events to rebuild are not in the journal");
                    self.core.release_ranges(&seqs);
                    continue;
                }
                (read, error, f) => {
                    if let Some(f) = f {
                        f.discard();
                    }
                    Err(match (read, error) {
                        (Err(e), _) => e.to_string(),
                        (_, Some(e)) => e.to_string(),
                        _ => String::new(),
                    })
                }
            };
            match published {
                Ok(p) => {
                    tracing::info!(path = %p.path.display(), rows = p.rows, "audit file rebuilt from the journal");
                    self.core.files_published.fetch_add(1, Ordering::Relaxed);
                    self.core.release_ranges(&p.seqs);
                }
                Err(e) => {
                    tracing::debug!(error = %e, hour, "audit file rebuild failed; will retry");
                    self.failed.entry(hour).or_default().extend(&seqs);
                }
            }
        }
    }
}
