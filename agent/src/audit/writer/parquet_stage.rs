//! The parquet thread: open files per hour, closing rules, publishing, and rebuilding failed files
//! from the journal. See the parent module for the design.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::core::{Core, Msg, PMsg, lock};
use crate::audit::Event;
use crate::audit::clock::Clock;
use crate::audit::files::{FileSettings, OpenFile, hour_end, hour_of};
use crate::audit::journal::SeqRanges;
use crate::audit::recovery::read_events;

/// How often the parquet thread checks closing times and failed files (real time).
const TICK: Duration = Duration::from_millis(250);
/// How long a file opened for an hour that already closed stays open for more late rows.
const LATE_LINGER: Duration = Duration::from_secs(5);
/// How often a Parquet file that failed is rebuilt from the journal.
pub(super) const RETRY_INTERVAL: Duration = Duration::from_secs(2);

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
}

impl ParquetStage {
    pub(super) fn run(mut self, rx: std_mpsc::Receiver<PMsg>) {
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

    pub(super) fn append(&mut self, events: Vec<(u64, Event)>) {
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
        if !self.core.health.healthy.load(Ordering::Relaxed)
            && let Some(tx) = self.ticker.upgrade()
        {
            let _ = tx.try_send(Msg::Tick);
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

    /// Rebuilds files that failed from the journal, which still holds their events.
    pub(super) fn retry_failed(&mut self) {
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
                if let Some(f) = file.as_mut()
                    && let Err(e) = f.append(seq, &event)
                {
                    error = Some(e);
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
