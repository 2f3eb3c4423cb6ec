//! The audit writer: takes events from any task, makes them durable in the journal with group
//! commit, acknowledges them, and turns them into hourly Parquet files.
//!
//! Three threads, so that no tokio worker ever waits on the disk:
//! - **journal** (owns the bounded channel's receiver): takes every event and intent waiting in the
//!   channel, encodes them into one buffer, appends it to the current segment with one `write`,
//!   and queues their acknowledgements behind the written position. It rotates segments at
//!   `segment_bytes` (default [`SEGMENT_BYTES`](super::journal::SEGMENT_BYTES)), and after a
//!   failure reopens a fresh segment. It keeps the table of pending intents (`intents`): a complete
//!   event with a pending intent's id completes it, one whose intent was given up on is refused
//!   with [`AuditError::IntentExpired`]; once a second it gives up on intents older than
//!   `intent_timeout_s` (and on the oldest whenever a new one would exceed `max_pending_intents`),
//!   and it copies forward the pending intents that alone hold sealed segments at the front of the
//!   journal (their other records all published), so a long statement never holds old segments.
//! - **sync**: whenever the written position is ahead of the synced one and no fdatasync is in
//!   flight, it starts one at once; events written meanwhile wait for the next, which starts as soon
//!   as the in-flight one returns (docs/decisions.md §12). One fdatasync at a time on purpose: after a
//!   failed fsync, Linux may report success to a concurrent one for pages it dropped, so overlapping
//!   fsyncs could acknowledge lost events. An event waits therefore at most for the in-flight
//!   fdatasync and its own, never for a timer: an idle agent pays one fdatasync per statement, a busy
//!   one shares each. `batch_window_ms` is the wait this must stay within; an fdatasync slower than
//!   the window is logged (at most once a minute). When an fdatasync returns, the sync thread
//!   resolves the acknowledgements it covers and passes the records on to Parquet (only durable
//!   records reach Parquet), in journal order.
//! - **parquet**: keeps where each pending intent's latest record is (no row for it yet; the event
//!   itself is read back from the journal if it is ever needed), appends each complete event to the
//!   open file of its hour (`event_time`, UTC) together with the intent it completes, writes the
//!   intents given up on (and, at shutdown, those still pending) with `outcome_unknown`, closes
//!   files at the hour boundary (writer clock), at `max_file_bytes`, at `max_file_age_s`, a few
//!   seconds after opening for rows that arrived after their hour closed (a completion after its
//!   hour's file closed, for one), and at shutdown; publishes them atomically (`files`), then
//!   releases the journal records they hold, and the segments whose records are all released.
//!   Each file is recorded in the digest log just before its rename (`digest_log`); the thread
//!   writes the next signed digest every `digest_interval_s` and at shutdown, and start-up writes
//!   the one a crash interrupted, after recovery.
//!
//! On a journal write or sync failure (disk full, directory unwritable) every unsynced event's
//! acknowledgement fails with [`AuditError::Journal`], [`AuditWriter::healthy`] turns false, the
//! segment is cut back to its last synced byte, and the writer retries with a fresh segment twice a
//! second. Events that fail are counted as a gap; once writing works again the writer records one
//! `lifecycle` event with `lifecycle_action = "audit_gap"` and the count and time range in `detail`.
//! Whether statements are refused meanwhile (`on_audit_failure = "block"`) or go ahead (`"allow"`)
//! is the proxy's decision; the writer's behaviour is the same in both modes. Likewise
//! `durability`: the writer always acknowledges after the fdatasync, and the proxy decides whether
//! to wait for that before forwarding.
//!
//! Dropping the [`WriterTask`] without [`shutdown`](WriterTask::shutdown) leaves open files to the
//! next start's recovery (their events are in the journal); nothing acknowledged is lost.
//!
//! A Parquet failure does not fail acknowledgements (the events are durable in the journal); the
//! file is dropped and rebuilt from the journal every few seconds until it can be written.
//!
//! A journal record that fails takes back what it did to the intent table (a failed intent is no
//! longer pending; a failed completion leaves its intent pending), so an intent's completion
//! submitted anyway under `on_audit_failure = "allow"` is the statement's row, and a failed
//! completion's intent is still written once, as `outcome_unknown` if nothing completes it.
//!
//! Memory for intents: the journal thread keeps about a hundred bytes per pending intent and 16
//! per intent given up on (a bounded number), the parquet thread a few dozen per pending intent;
//! intent events are not kept.
//!
//! Files: `core` (state the threads share, and how pending records settle), `intents` (the
//! journal thread's intent table), `journal_thread` (the journal and sync threads),
//! `parquet_stage` (the parquet thread); this file holds the public API.

mod core;
mod intents;
mod journal_thread;
mod parquet_stage;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc as std_mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use self::core::{AckTx, Core, Health, Msg, PMsg, Seg, SyncState};
use self::intents::Intents;
use self::journal_thread::{JournalWriter, Throttled, run_sync};
use self::parquet_stage::ParquetStage;
use super::clock::Clock;
use super::config::{AuditConfig, OnAuditFailure};
use super::digest::Reason;
use super::digest_log::DigestLog;
use super::files::{ClosedFile, FileSettings, sanitize_host};
use super::journal::{HEADER_LEN, JournalDir};
use super::recovery::{RecoveryReport, recover};
use super::{Ack, AuditError, Event, EventSink, StartFailure, WriterFailure};
use crate::sync::lock;

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
    /// The recordings directory, when recording is on: its files are named in the same digest
    /// chain (`root = "recordings"`, see [`AuditWriter::recordings_hook`]).
    pub recordings_dir: Option<PathBuf>,
}

/// The cheap, clonable handle every part of the agent submits events through.
#[derive(Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<Msg>,
    max_sql_bytes: usize,
    health: Arc<Health>,
    core: Arc<Core>,
    digests: Arc<Mutex<DigestLog>>,
}

/// What the writer is doing now, for `snowtrail status`; read from counters, never waits on a thread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Whether the journal is writable.
    pub healthy: bool,
    /// Complete `query` events submitted since start.
    pub statements: u64,
    /// Journal records made durable since start.
    pub durable_records: u64,
    /// Records in the journal not yet in a published Parquet file (written or being synced,
    /// statements in flight, rows of open files): how far the files lag the journal.
    pub unpublished_records: u64,
    /// Events that could not be recorded since start.
    pub gap_events: u64,
    /// Parquet files published since start.
    pub files_published: u64,
    /// The files open now, under the names they will have once published.
    pub open_files: Vec<PathBuf>,
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
    /// Journal records made durable since start: events, intents (a statement counts its intent
    /// and its completion), the writer's own lifecycle events, and intents copied forward.
    pub events_written: u64,
    /// Parquet files published since start (recovery's not included).
    pub files_published: u64,
    /// Events whose acknowledgement failed since start.
    pub gap_events: u64,
    /// Durable events that could not be written to Parquet and stay in the journal for the next start.
    pub left_in_journal: u64,
    /// Intents written with the flag `outcome_unknown` since start: past `intent_timeout_s`,
    /// beyond `max_pending_intents`, or still pending at this shutdown.
    pub intents_unknown: u64,
}

impl AuditWriter {
    /// Opens the journal, runs recovery (every journal left behind becomes Parquet), then starts the
    /// writer's threads.
    pub async fn start(opts: WriterOptions) -> Result<(AuditWriter, WriterTask), AuditError> {
        tokio::task::spawn_blocking(move || start_blocking(opts))
            .await
            .map_err(|e| AuditError::Recovery(StartFailure::Task(e.into())))?
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

    /// Journal fdatasyncs since start, for metrics; far fewer than events under load (group commit).
    pub fn journal_syncs(&self) -> u64 {
        self.health.syncs.load(Ordering::Relaxed)
    }

    /// The publish hook of the recordings writer: each recordings file is recorded in this
    /// writer's digest log (`root = "recordings"`) before it is renamed into place, so the next
    /// digest names it. Needs [`WriterOptions::recordings_dir`].
    pub fn recordings_hook(&self) -> super::files::PublishHook {
        let log = self.digests.clone();
        Arc::new(move |f: &ClosedFile| lock(&log).record_recording(f))
    }

    /// A snapshot of the writer's counters and open files.
    pub fn stats(&self) -> WriterStats {
        let unpublished_records = lock(&self.core.segs).iter().map(|s| s.outstanding).sum();
        WriterStats {
            healthy: self.healthy(),
            statements: self.health.statements.load(Ordering::Relaxed),
            durable_records: self.core.events_written.load(Ordering::Relaxed),
            unpublished_records,
            gap_events: self.gap_events(),
            files_published: self.core.files_published.load(Ordering::Relaxed),
            open_files: lock(&self.health.open_files).clone(),
        }
    }
}

impl EventSink for AuditWriter {
    fn healthy(&self) -> bool {
        AuditWriter::healthy(self)
    }

    fn submit(&self, event: Event) -> Ack {
        if event.event_kind == super::EventKind::Query {
            self.health.statements.fetch_add(1, Ordering::Relaxed);
        }
        self.send(event, Msg::Event)
    }

    fn submit_intent(&self, event: Event) -> Ack {
        self.send(event, Msg::Intent)
    }
}

impl AuditWriter {
    fn send(&self, mut event: Event, msg: fn(Box<Event>, AckTx) -> Msg) -> Ack {
        event.cap_sql(self.max_sql_bytes);
        let (ack_tx, ack_rx) = oneshot::channel();
        let recv = async move { ack_rx.await.unwrap_or(Err(AuditError::Closed)) };
        match self.tx.try_send(msg(Box::new(event), ack_tx)) {
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
            let dead = |what: &'static str| AuditError::Internal(WriterFailure::Panicked(what));
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
                intents_unknown: core.intents_unknown.load(Ordering::Relaxed),
            })
        })
        .await
        .map_err(|e| AuditError::Internal(WriterFailure::Task(e.into())))?
    }
}

/// Room for one batch of records, reserved once.
const MAX_BATCH_HINT: usize = 1024;

fn start_blocking(opts: WriterOptions) -> Result<(AuditWriter, WriterTask), AuditError> {
    let rec = AuditError::Recovery;
    let journal =
        JournalDir::open(&opts.state_dir).map_err(|e| rec(StartFailure::Journal(e.into())))?;
    let host = sanitize_host(&opts.host);
    let digests = DigestLog::open(
        &opts.state_dir,
        &opts.audit_dir,
        &host,
        Duration::from_secs(opts.config.digest_interval_s),
        opts.clock.now(),
    )
    .map_err(|e| rec(StartFailure::Digest(e.into())))?;
    let mut digests = digests;
    if let Some(dir) = &opts.recordings_dir {
        digests
            .set_recordings_dir(dir)
            .map_err(|e| rec(StartFailure::Digest(e.into())))?;
    }
    let digests = Arc::new(Mutex::new(digests));
    let hook_log = digests.clone();
    let settings = FileSettings {
        audit_dir: opts.audit_dir.clone(),
        host,
        journal_id: journal.id,
        row_group_rows: opts.config.row_group_rows.max(1),
        on_publish: Some(Arc::new(move |f: &ClosedFile| lock(&hook_log).record(f))),
    };
    let max_file_bytes = opts.config.max_file_bytes.max(1);
    let report = recover(&journal, &settings, max_file_bytes, opts.clock.now())
        .map_err(|e| rec(StartFailure::Recovery(e.into())))?;
    if report.records > 0 {
        tracing::info!(?report, "audit journal recovered");
    }
    {
        // Files closed (before a crash, or by recovery just now) that no digest names yet: the
        // digest the crash interrupted.
        let mut log = lock(&digests);
        if !log.pending().is_empty() {
            match log.write(opts.clock.now(), Reason::Recovery) {
                Ok(path) => {
                    tracing::info!(digest = %path, "audit digest interrupted by a crash written")
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit digest could not be written; will retry")
                }
            }
        }
    }
    let (seg_path, seg_file) = journal
        .create_segment(report.next_seq)
        .map_err(|e| rec(StartFailure::Journal(e.into())))?;
    let sync_handle = seg_file
        .try_clone()
        .map_err(|e| rec(StartFailure::Io(e.into())))?;

    let health = Arc::new(Health {
        healthy: AtomicBool::new(true),
        gap_events: AtomicU64::new(0),
        syncs: AtomicU64::new(0),
        statements: AtomicU64::new(0),
        open_files: Mutex::new(Vec::new()),
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
            undo: Vec::new(),
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
        intents_unknown: AtomicU64::new(0),
        batch_window: Duration::from_millis(opts.config.batch_window_ms),
    });

    let (tx, rx) = mpsc::channel(opts.config.channel_capacity.max(1));
    let (ptx, prx) = std_mpsc::channel();
    let spawn_err = |e: std::io::Error| AuditError::Internal(WriterFailure::Spawn(e.into()));

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
        next_tick: Instant::now(),
        intents: HashMap::new(),
        payload: Vec::new(),
        digests: digests.clone(),
        shown: Vec::new(),
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
        seg_first: report.next_seq,
        segment_bytes: opts.config.segment_bytes.max(HEADER_LEN + 1),
        intents: Intents::new(
            opts.config.max_pending_intents,
            Duration::from_secs(opts.config.intent_timeout_s),
        ),
        staged: Vec::with_capacity(MAX_BATCH_HINT),
        next_maintenance: Instant::now(),
        late: Throttled::default(),
        overflow: Throttled::default(),
    };
    let journal = std::thread::Builder::new()
        .name("audit-journal".into())
        .spawn(move || jw.run(rx))
        .map_err(spawn_err)?;

    let writer = AuditWriter {
        tx: tx.clone(),
        max_sql_bytes: opts.config.max_sql_bytes,
        health,
        core: core.clone(),
        digests,
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
