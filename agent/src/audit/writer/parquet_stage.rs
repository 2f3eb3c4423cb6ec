//! The parquet thread: pairing intents with their completions, open files per hour, closing
//! rules, publishing, and rebuilding failed files from the journal. See the parent module for the
//! design.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use uuid::Uuid;

use super::core::{Core, Msg, PMsg, Rec, RecordLoc};
use crate::audit::Event;
use crate::audit::clock::Clock;
use crate::audit::digest::Reason;
use crate::audit::digest_log::DigestLog;
use crate::audit::files::{FileSettings, OpenFile, hour_end, hour_of};
use crate::audit::journal::{JournalError, SeqRanges, decode_event, read_record_at};
use crate::audit::recovery::{RecoveryError, Take, replay};
use crate::sync::lock;

/// How often the parquet thread checks closing times and failed files (real time).
const TICK: Duration = Duration::from_millis(250);
/// How long a file opened for an hour that already closed stays open for more late rows.
const LATE_LINGER: Duration = Duration::from_secs(5);
/// How often a Parquet file that failed is rebuilt from the journal.
pub(super) const RETRY_INTERVAL: Duration = Duration::from_secs(2);
/// How often the journal thread is woken for its intent timeouts and copies.
const JOURNAL_TICK: Duration = Duration::from_secs(1);

/// The parquet thread's state.
pub(super) struct ParquetStage {
    pub(super) core: Arc<Core>,
    pub(super) settings: FileSettings,
    pub(super) max_file_bytes: u64,
    pub(super) max_age: Option<Duration>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) open: HashMap<i64, OpenFile>,
    pub(super) failed: BTreeMap<i64, SeqRanges>,
    pub(super) next_retry: Instant,
    pub(super) ticker: mpsc::WeakSender<Msg>,
    pub(super) next_tick: Instant,
    /// Pending intents: where each one's latest journal record is. No row until its completion
    /// (or an `Expire`, or shutdown) comes.
    pub(super) intents: HashMap<Uuid, RecordLoc>,
    /// Reused buffer for reading intents back from the journal.
    pub(super) payload: Vec<u8>,
    /// The host's digest chain: told about every published file (the publish hook), written
    /// here every `digest_interval_s` and at shutdown.
    pub(super) digests: Arc<Mutex<DigestLog>>,
    /// The open files as last shown in `Health::open_files`.
    pub(super) shown: Vec<PathBuf>,
}

impl ParquetStage {
    pub(super) fn run(mut self, rx: std_mpsc::Receiver<PMsg>) {
        loop {
            match rx.recv_timeout(TICK) {
                Ok(PMsg::Events(events)) => self.append(events),
                Ok(PMsg::Shutdown(reply)) => {
                    // Take what is still queued, write the intents nobody completed, then close
                    // everything.
                    while let Ok(PMsg::Events(events)) = rx.try_recv() {
                        self.append(events);
                    }
                    let mut pending: Vec<(Uuid, RecordLoc)> = self.intents.drain().collect();
                    pending.sort_unstable_by_key(|(_, loc)| loc.seq);
                    if !pending.is_empty() {
                        tracing::info!(
                            count = pending.len(),
                            "statements still in flight at shutdown are written with outcome_unknown"
                        );
                    }
                    let mut unreadable = 0;
                    for (id, loc) in pending {
                        if !self.write_unknown(id, loc) {
                            unreadable += 1;
                        }
                    }
                    let hours: Vec<i64> = self.open.keys().copied().collect();
                    for h in hours {
                        self.close(h);
                    }
                    self.retry_failed();
                    self.write_digest(Reason::Shutdown);
                    let left = self.failed.values().map(SeqRanges::count).sum::<u64>() + unreadable;
                    let _ = reply.send(left);
                    return;
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
            self.maintain();
            self.show_open_files();
        }
    }

    /// Updates the list of open files `snowtrail status` shows, when it changed.
    fn show_open_files(&mut self) {
        let mut now: Vec<PathBuf> = self.open.values().map(OpenFile::path).collect();
        now.sort_unstable();
        if now != self.shown {
            lock(&self.core.health.open_files).clone_from(&now);
            self.shown = now;
        }
    }

    pub(super) fn append(&mut self, records: Vec<(u64, Rec)>) {
        for (seq, rec) in records {
            match rec {
                Rec::Event(event) => {
                    let intent = if self.intents.is_empty() {
                        None
                    } else {
                        self.intents.remove(&event.event_id).map(|l| l.seq)
                    };
                    self.add_row(seq, intent, &event);
                }
                Rec::Intent { id, loc, .. } => {
                    // A resubmission or a copy supersedes the intent's earlier record, which is
                    // no longer needed: its segment may go.
                    if let Some(old) = self.intents.insert(id, loc) {
                        self.core.release(std::iter::once(old.seq));
                    }
                }
                Rec::Expire(id) => {
                    if let Some(loc) = self.intents.remove(&id) {
                        self.write_unknown(id, loc);
                    }
                }
            }
        }
    }

    /// Writes a pending intent as its own row with `outcome_unknown`, reading it back from the
    /// journal. If it cannot be read it stays pending (for shutdown, or the next start's
    /// recovery) and `false` is returned.
    fn write_unknown(&mut self, id: Uuid, loc: RecordLoc) -> bool {
        let path = self.core.journal.segment_path(loc.seg);
        let read = File::open(&path)
            .map_err(|source| JournalError::Io {
                op: "open",
                path: path.clone(),
                source,
            })
            .and_then(|f| read_record_at(&f, &path, loc.pos, loc.seq, &mut self.payload));
        let event = match read.map(|()| decode_event(&self.payload)) {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                tracing::error!(seq = loc.seq, error = %e, "journaled intent cannot be decoded");
                self.intents.insert(id, loc);
                return false;
            }
            Err(e) => {
                tracing::error!(error = %e, "journaled intent cannot be read; kept in the journal");
                self.intents.insert(id, loc);
                return false;
            }
        };
        let mut event = event;
        event.mark_outcome_unknown();
        self.core.intents_unknown.fetch_add(1, Ordering::Relaxed);
        self.add_row(loc.seq, None, &event);
        true
    }

    /// Appends `event` (record `seq`, completing the intent record `intent` if any) as a row of
    /// its hour's file.
    fn add_row(&mut self, seq: u64, intent: Option<u64>, event: &Event) {
        let hour = hour_of(event.event_time);
        if !self.open.contains_key(&hour) {
            let now: SystemTime = self.clock.now();
            let late = now >= hour_end(hour);
            match OpenFile::create(&self.settings, hour, event, seq, now, late) {
                Ok(f) => {
                    self.open.insert(hour, f);
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit parquet file cannot be created; kept in the journal");
                    let failed = self.failed.entry(hour).or_default();
                    failed.insert(seq);
                    if let Some(i) = intent {
                        failed.insert(i);
                    }
                    return;
                }
            }
        }
        let Some(file) = self.open.get_mut(&hour) else {
            return;
        };
        let appended = file.append(seq, event);
        if let Some(i) = intent {
            file.cover(i);
        }
        if let Err(e) = appended {
            tracing::error!(error = %e, "audit parquet write failed; kept in the journal");
            if let Some(f) = self.open.remove(&hour) {
                let a = f.abandon(e);
                self.failed.entry(hour).or_default().extend(&a.seqs);
            }
            return;
        }
        if file.size() >= self.max_file_bytes {
            self.close(hour);
        }
    }

    /// Closes files whose time has come; retries failed ones; asks the journal thread to retry while
    /// the journal is unhealthy.
    pub(super) fn maintain(&mut self) {
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
        if lock(&self.digests).due(now) {
            self.write_digest(Reason::Interval);
        }
        let mut broken = Vec::new();
        for (hour, f) in self.open.iter_mut() {
            if let Err(e) = f.flush() {
                tracing::error!(error = %e, "audit parquet write failed; kept in the journal");
                broken.push((*hour, e));
            }
        }
        // A file whose write failed may be damaged: drop it and rebuild it from the journal.
        for (hour, e) in broken {
            if let Some(f) = self.open.remove(&hour) {
                let a = f.abandon(e);
                self.failed.entry(hour).or_default().extend(&a.seqs);
            }
        }
        if !self.failed.is_empty() && Instant::now() >= self.next_retry {
            self.retry_failed();
            self.next_retry = Instant::now() + RETRY_INTERVAL;
        }
        // The journal thread sleeps while nothing is submitted: wake it now and then for its
        // intent timeouts and copies, and at once while the journal is unhealthy (to retry).
        let unhealthy = !self.core.health.healthy.load(Ordering::Relaxed);
        if (unhealthy || Instant::now() >= self.next_tick)
            && let Some(tx) = self.ticker.upgrade()
        {
            self.next_tick = Instant::now() + JOURNAL_TICK;
            let _ = tx.try_send(Msg::Tick);
        }
    }

    /// Writes the next digest (the files published since the last one); a failure is logged and
    /// retried at the next interval check, the files staying pending.
    fn write_digest(&mut self, reason: Reason) {
        let now = self.clock.now();
        if let Err(e) = lock(&self.digests).write(now, reason) {
            tracing::error!(error = %e, "audit digest could not be written; will retry");
        }
    }

    pub(super) fn close(&mut self, hour: i64) {
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

    /// Rebuilds files that failed from the journal, which still holds their records: the same
    /// rows again (complete events with the intents they complete, intents nobody completed).
    pub(super) fn retry_failed(&mut self) {
        let paths: Vec<PathBuf> = lock(&self.core.segs)
            .iter()
            .map(|s| s.path.clone())
            .collect();
        let failed = std::mem::take(&mut self.failed);
        let now = self.clock.now();
        for (hour, seqs) in failed {
            let mut file: Option<OpenFile> = None;
            let take = |seq| {
                if seqs.contains(seq) {
                    Take::Write
                } else {
                    Take::Skip
                }
            };
            let read = replay(
                &paths,
                take,
                |intents, seq, event| -> Result<(), RecoveryError> {
                    let f = match file.as_mut() {
                        Some(f) => f,
                        None => file.insert(OpenFile::create(
                            &self.settings,
                            hour,
                            &event,
                            seq,
                            now,
                            true,
                        )?),
                    };
                    f.append(seq, &event)?;
                    for &i in intents {
                        f.cover(i);
                    }
                    Ok(())
                },
            );
            let published = match (read, file) {
                (Ok(_), Some(f)) => f.publish().map_err(|a| RecoveryError::from(a.error)),
                (Ok(_), None) => {
                    // Nothing to rebuild from (a bug or a removed segment): do not retry forever.
                    tracing::error!(hour, seqs = %seqs, "audit events to rebuild are not in the journal");
                    self.core.release_ranges(&seqs);
                    continue;
                }
                (Err(e), f) => {
                    if let Some(f) = f {
                        f.discard();
                    }
                    Err(e)
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
