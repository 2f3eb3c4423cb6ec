//! Stage transfers (PUT/GET) tied to the statement that asked for them.
//!
//! A PUT or GET statement's answer sends the driver to cloud storage (docs/protocol.md, "PUT/GET"):
//! the files move in plain HTTP requests to a storage host, not to Snowflake. When that host is
//! intercepted (docs/decisions.md §3), each request whose host and path fall under the statement's stage
//! location or presigned URLs is counted for that statement: requests, bytes sent and bytes
//! received. The statement's event waits until its transfers have gone quiet, so it carries the
//! totals; when none was seen before the wait ends it is flagged `transfer_unseen` (they went
//! over a connection that passed through, or the driver found nothing to move).
//!
//! When the statement is recorded, its recording waits with its event: each transfer request
//! that ends is listed in it (method, host, path, status, bytes; never the presigned query nor
//! the files' bytes), and it is submitted with the event, so the recording says what the event
//! says.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::capture::Recording;
use crate::audit::{Event, Flag};
use crate::recording::payload::{MAX_TRANSFER_FILES, TransferFile, TransferPart};
use crate::snowflake::TransferTarget;
use crate::sync::lock;

/// At most this many PUT/GET statements wait for their transfers at once; the oldest is
/// completed early (with what it saw) when more arrive.
pub const MAX_PENDING_TRANSFERS: usize = 1024;

/// A PUT/GET statement's event, held while its transfers run.
pub struct PendingTransfer {
    event: Mutex<Option<Event>>,
    requests: AtomicU32,
    in_flight: AtomicU32,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    last_activity: Mutex<Option<Instant>>,
    /// The statement's recording and the transfers listed for it, while it is recorded.
    recording: Mutex<Option<(Recording, TransferPart)>>,
}

/// A finished PUT/GET statement: its event with the transfer totals, and its recording with
/// the transfers listed.
pub type Finished = (Event, Option<Recording>);

impl PendingTransfer {
    /// Holds `event` until its transfers are over.
    pub fn new(event: Event) -> Arc<PendingTransfer> {
        PendingTransfer::recorded(event, None)
    }

    /// Holds `event` and its recording (with the file command's `part`) until its transfers
    /// are over.
    pub fn recorded(event: Event, recording: Option<(Recording, TransferPart)>) -> Arc<Self> {
        Arc::new(PendingTransfer {
            event: Mutex::new(Some(event)),
            requests: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            last_activity: Mutex::new(None),
            recording: Mutex::new(recording),
        })
    }

    fn touch(&self) {
        *lock(&self.last_activity) = Some(Instant::now());
    }

    /// A transfer request started.
    pub fn begin(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
    }

    /// The request's body went out (`bytes` of it).
    pub fn sent(&self, bytes: u64) {
        self.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        self.touch();
    }

    /// The response's body came back (`bytes` of it): the request (`file`) is over.
    pub fn end(&self, bytes: u64, file: TransferFile) {
        self.bytes_received.fetch_add(bytes, Ordering::Relaxed);
        if let Some((_, part)) = lock(&self.recording).as_mut() {
            if part.files.len() < MAX_TRANSFER_FILES {
                part.files.push(file);
            } else {
                part.unlisted += 1;
            }
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.touch();
    }

    /// Whether any transfer was seen.
    pub fn seen(&self) -> bool {
        self.requests.load(Ordering::Relaxed) > 0
    }

    /// Whether the transfers are over: at least one was seen, none is running, and nothing
    /// happened for `quiet`.
    pub fn settled(&self, quiet: Duration) -> bool {
        self.seen()
            && self.in_flight.load(Ordering::Acquire) == 0
            && lock(&self.last_activity).is_some_and(|t| t.elapsed() >= quiet)
    }

    /// Takes the event for completion (once), with the transfer totals, and its recording
    /// with the transfers listed; flagged `transfer_unseen` when `unseen_is_a_gap` and no
    /// transfer was seen.
    pub fn finish(&self, unseen_is_a_gap: bool) -> Option<Finished> {
        let mut event = lock(&self.event).take()?;
        let recording = lock(&self.recording).take().map(|(mut rec, part)| {
            rec.transfer(part);
            rec
        });
        let requests = self.requests.load(Ordering::Relaxed);
        event.stage_requests = Some(requests);
        event.stage_bytes_sent = Some(self.bytes_sent.load(Ordering::Relaxed));
        event.stage_bytes_received = Some(self.bytes_received.load(Ordering::Relaxed));
        if requests == 0 && unseen_is_a_gap {
            event.add_flag(Flag::TransferUnseen);
        }
        Some((event, recording))
    }
}

struct Entry {
    cgroup_id: u64,
    location: String,
    targets: Vec<TransferTarget>,
    pending: Arc<PendingTransfer>,
}

/// The PUT/GET statements waiting for their transfers, found by a request's host and path.
#[derive(Default)]
pub struct TransferBook {
    entries: Mutex<Vec<Entry>>,
}

impl TransferBook {
    /// Expects transfers to `targets` from cgroup `cgroup_id` for `pending`. Returns the events
    /// this one completes: an earlier statement of the same cgroup and stage location that saw
    /// no transfer was a driver's first round (it asks again for a presigned URL per file, and
    /// the files then move under the later statement), and the oldest entry when the book is
    /// full.
    pub fn register(
        &self,
        cgroup_id: u64,
        location: &str,
        targets: Vec<TransferTarget>,
        pending: Arc<PendingTransfer>,
    ) -> Vec<Finished> {
        let mut entries = lock(&self.entries);
        let mut done = Vec::new();
        entries.retain(|e| {
            let superseded =
                e.cgroup_id == cgroup_id && e.location == location && !e.pending.seen();
            if superseded {
                done.extend(e.pending.finish(false));
            }
            !superseded && lock(&e.pending.event).is_some()
        });
        if entries.len() >= MAX_PENDING_TRANSFERS {
            let oldest = entries.remove(0);
            done.extend(oldest.pending.finish(true));
        }
        entries.push(Entry {
            cgroup_id,
            location: location.to_owned(),
            targets,
            pending,
        });
        done
    }

    /// The statement a request from `cgroup_id` to `host` for `path` transfers for: the most
    /// specific target wins, and among equals the newest statement.
    pub fn find(&self, cgroup_id: u64, host: &str, path: &str) -> Option<Arc<PendingTransfer>> {
        let entries = lock(&self.entries);
        let mut best: Option<(usize, &Arc<PendingTransfer>)> = None;
        for e in entries.iter().filter(|e| e.cgroup_id == cgroup_id) {
            for t in e.targets.iter().filter(|t| t.matches(host, path)) {
                if best.is_none_or(|(len, _)| t.path_prefix.len() >= len) {
                    best = Some((t.path_prefix.len(), &e.pending));
                }
            }
        }
        best.map(|(_, p)| p.clone())
    }

    /// Forgets `pending` once its event completed.
    pub fn remove(&self, pending: &Arc<PendingTransfer>) {
        lock(&self.entries).retain(|e| !Arc::ptr_eq(&e.pending, pending));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::EventKind;

    fn target(host: &str, prefix: &str) -> TransferTarget {
        TransferTarget {
            host: host.into(),
            path_prefix: prefix.into(),
        }
    }

    fn event(sql: &str) -> Event {
        let mut e = Event::new(EventKind::Query, std::time::SystemTime::now(), "h");
        e.sql_text = Some(sql.into());
        e
    }

    #[test]
    fn a_request_counts_for_the_most_specific_newest_statement() {
        let book = TransferBook::default();
        let stage = PendingTransfer::new(event("put a"));
        let file = PendingTransfer::new(event("put b"));
        assert!(
            book.register(7, "b/p/", vec![target("h", "/b/p/")], stage.clone())
                .is_empty()
        );
        stage.begin();
        assert!(
            book.register(7, "b/p/", vec![target("h", "/b/p/f.gz")], file.clone())
                .is_empty()
        );
        let found = book.find(7, "h", "/b/p/f.gz").unwrap();
        assert!(Arc::ptr_eq(&found, &file));
        let found = book.find(7, "H", "/b/p/other").unwrap();
        assert!(Arc::ptr_eq(&found, &stage));
        assert!(book.find(8, "h", "/b/p/f.gz").is_none(), "another cgroup");
        assert!(book.find(7, "h", "/b/q/f.gz").is_none(), "another prefix");
    }

    #[test]
    fn a_first_round_without_transfers_is_completed_by_the_next() {
        let book = TransferBook::default();
        let first = PendingTransfer::new(event("put file://x @s"));
        book.register(7, "s/", vec![target("h", "/s/x")], first);
        let second = PendingTransfer::new(event("put file://x.gz @s"));
        let done = book.register(7, "s/", vec![target("h", "/s/x.gz")], second);
        assert_eq!(done.len(), 1);
        let first = &done[0].0;
        assert_eq!(first.sql_text.as_deref(), Some("put file://x @s"));
        assert_eq!(first.stage_requests, Some(0));
        assert!(first.flags.is_empty());
    }

    #[test]
    fn totals_and_settling() {
        let p = PendingTransfer::new(event("get @s"));
        assert!(!p.settled(Duration::ZERO), "nothing seen yet");
        p.begin();
        p.sent(10);
        assert!(!p.settled(Duration::ZERO), "still running");
        p.end(1000, TransferFile::default());
        assert!(p.settled(Duration::ZERO));
        assert!(!p.settled(Duration::from_secs(3600)));
        let (e, rec) = p.finish(true).unwrap();
        assert!(rec.is_none(), "not recorded");
        assert_eq!(e.stage_requests, Some(1));
        assert_eq!(e.stage_bytes_sent, Some(10));
        assert_eq!(e.stage_bytes_received, Some(1000));
        assert!(e.flags.is_empty());
        assert!(p.finish(true).is_none(), "completed once");
    }

    #[test]
    fn a_recorded_statement_lists_its_transfers_and_completes_with_them() {
        let part = TransferPart {
            command: Some("UPLOAD".into()),
            sources: vec!["x.csv".into()],
            ..TransferPart::default()
        };
        let p = PendingTransfer::recorded(
            event("put file://x.csv @s"),
            Some((Recording::for_test(1 << 20), part)),
        );
        for (method, status, sent) in [("HEAD", 404, 0), ("PUT", 200, 40)] {
            p.begin();
            p.sent(sent);
            p.end(
                0,
                TransferFile {
                    method: method.into(),
                    host: "h".into(),
                    path: "/s/x.csv.gz".into(),
                    status: Some(status),
                    bytes_sent: sent,
                    bytes_received: 0,
                },
            );
        }
        let (e, rec) = p.finish(true).unwrap();
        assert_eq!(e.stage_requests, Some(2));
        let done = rec.expect("recorded").captured();
        let t = done
            .payload
            .transfer
            .expect("the transfers are in the recording");
        assert_eq!(t.command.as_deref(), Some("UPLOAD"));
        assert_eq!(
            t.files
                .iter()
                .map(|f| f.method.as_str())
                .collect::<Vec<_>>(),
            ["HEAD", "PUT"]
        );
        assert_eq!(t.files[1].bytes_sent, 40);
        assert!(p.finish(true).is_none(), "completed once");
    }

    #[test]
    fn nothing_seen_is_flagged() {
        let p = PendingTransfer::new(event("put file://x @s"));
        let (e, _) = p.finish(true).unwrap();
        assert_eq!(e.flags, vec!["transfer_unseen".to_string()]);
    }
}
