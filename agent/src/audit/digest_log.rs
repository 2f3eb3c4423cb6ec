//! The writer's side of the digests: which files were closed since the last digest, the head of
//! the host's chain, and writing the next digest.
//!
//! State under `<state_dir>/digest/` (mode 0700):
//! - `signing.key`: the host's Ed25519 key (see `digest`);
//! - `pending.jsonl`: one [`FileRecord`] per line, appended and fdatasync'd for every file *before*
//!   it is renamed into place (the publish hook of `files`), so a crash never leaves a published
//!   file that the next digest will not name;
//! - `head.json`: the newest digest of the chain ([`Head`]): its sequence number, path, SHA-256
//!   and signature. `audit verify --state-dir` compares the trail with it, which is how the removal
//!   of the newest digest is found before a later digest links to it.
//!
//! Writing a digest: the digest file (temporary name, fsync, rename, directory fsync), then
//! `head.json` the same way, then an empty `pending.jsonl`. A crash between any two steps is
//! repaired by [`DigestLog::open`] at the next start: a digest newer than the head (signed by this
//! host's key, linked to the head) is adopted as the head; pending entries the head digest already
//! names are dropped, and so are entries whose file was never renamed into place (the crash came
//! between the record and the rename; recovery writes those events again, into a file that is
//! recorded anew). Then start-up writes the digest the crash interrupted (reason `recovery`), so
//! a `kill -9` never leaves files that no digest names.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use super::digest::{
    DIGEST_DIR, DigestBody, DigestError, DigestFile, FORMAT_VERSION, FileRecord, PreviousDigest,
    Reason, Root, digest_rel_path, ensure_state_dir, io_err, load_key, load_or_create_key,
    parse_digest_name, parse_time, public_key_text, sha256_hex, time_text, write_atomic,
};
use super::files::{ClosedFile, ensure_dir};

/// The chain head's file name under `<state_dir>/digest`.
pub const HEAD_FILE: &str = "head.json";
/// The file listing files closed since the last digest, under `<state_dir>/digest`.
pub const PENDING_FILE: &str = "pending.jsonl";

/// The newest digest of this host's chain, as `head.json` records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// The host, as in the digests.
    pub host: String,
    /// The newest digest's sequence number.
    pub sequence: u64,
    /// Its path below the audit directory.
    pub path: String,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
    /// Its signature, hex.
    pub signature: String,
    /// When it was written.
    pub digest_end: String,
}

/// Reads `head.json` from a state directory, if there is one.
pub fn read_head(state_dir: &Path) -> Result<Option<Head>, DigestError> {
    let path = super::digest::state_path(state_dir).join(HEAD_FILE);
    match fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| DigestError::Format {
                path,
                message: e.to_string(),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &path)(e)),
    }
}

/// Reads `pending.jsonl` from a state directory: the files closed since the newest digest. A torn
/// last line (a crash while appending) is skipped.
pub fn read_pending(state_dir: &Path) -> Result<Vec<FileRecord>, DigestError> {
    let path = super::digest::state_path(state_dir).join(PENDING_FILE);
    let text = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    let mut out = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<FileRecord>(line) {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "digest log line skipped"),
        }
    }
    Ok(out)
}

/// The host's digest chain as the writer keeps it.
pub struct DigestLog {
    state: PathBuf,
    state_dir: PathBuf,
    audit_dir: PathBuf,
    recordings_dir: Option<PathBuf>,
    host: String,
    interval: Duration,
    key: Option<SigningKey>,
    head: Option<Head>,
    pending: Vec<FileRecord>,
    append: Option<File>,
    last_digest: SystemTime,
    next_try: SystemTime,
}

impl std::fmt::Debug for DigestLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestLog")
            .field("host", &self.host)
            .field("head", &self.head.as_ref().map(|h| h.sequence))
            .field("pending", &self.pending.len())
            .finish()
    }
}

/// How long a digest that could not be written waits before the next attempt.
const RETRY: Duration = Duration::from_secs(5);

impl DigestLog {
    /// Opens the state, repairing what a crash left half done (see the module documentation).
    /// `host` is the host as in file names; `now` starts the first interval.
    pub fn open(
        state_dir: &Path,
        audit_dir: &Path,
        host: &str,
        interval: Duration,
        now: SystemTime,
    ) -> Result<DigestLog, DigestError> {
        let state = ensure_state_dir(state_dir)?;
        let mut log = DigestLog {
            state: state.clone(),
            state_dir: state_dir.to_owned(),
            audit_dir: audit_dir.to_owned(),
            recordings_dir: None,
            host: host.to_owned(),
            interval: interval.max(Duration::from_secs(1)),
            key: load_key(state_dir)?,
            head: read_head(state_dir)?.filter(|h| h.host == host),
            pending: read_pending(state_dir)?,
            append: None,
            last_digest: now,
            next_try: now,
        };
        let before = log.pending.clone();
        log.adopt_newer_digests()?;
        if let Some(h) = &log.head {
            log.last_digest = parse_time(&h.digest_end).unwrap_or(now).min(now);
            // The head digest may have been written just before a crash that kept the pending
            // list: what it names is no longer pending.
            if let Ok(bytes) = fs::read(audit_dir.join(&h.path))
                && let Ok(d) = DigestFile::parse(&bytes)
            {
                let named: HashSet<(Root, String)> = d
                    .digest
                    .files
                    .into_iter()
                    .map(|f| (f.root, f.path))
                    .collect();
                log.pending
                    .retain(|f| !named.contains(&(f.root, f.path.clone())));
            }
        }
        // Entries whose file never got its name (a crash between the record and the rename), and
        // duplicates (the last one stands).
        let mut seen = HashSet::new();
        let mut kept: Vec<FileRecord> = Vec::new();
        for f in std::mem::take(&mut log.pending).into_iter().rev() {
            let exists = match f.root {
                Root::Audit => audit_dir.join(&f.path).is_file(),
                Root::Recordings => true,
            };
            if exists && seen.insert((f.root, f.path.clone())) {
                kept.push(f);
            }
        }
        kept.reverse();
        log.pending = kept;
        if log.pending != before {
            log.rewrite_pending()?;
        }
        Ok(log)
    }

    /// The files closed since the newest digest.
    pub fn pending(&self) -> &[FileRecord] {
        &self.pending
    }

    /// The chain head, once a digest was written.
    pub fn head(&self) -> Option<&Head> {
        self.head.as_ref()
    }

    /// Records an audit file about to be published; durable when this returns.
    pub fn record(&mut self, f: &ClosedFile) -> io::Result<()> {
        let base = self.audit_dir.clone();
        self.record_in(Root::Audit, &base, f)
    }

    /// Names the recordings directory: pending entries of recordings files that were never
    /// renamed into place (a crash between the record and the rename) are dropped, as for audit
    /// files at [`open`](Self::open).
    pub fn set_recordings_dir(&mut self, dir: &Path) -> Result<(), DigestError> {
        self.recordings_dir = Some(dir.to_owned());
        let before = self.pending.len();
        self.pending
            .retain(|f| f.root != Root::Recordings || dir.join(&f.path).is_file());
        if self.pending.len() != before {
            self.rewrite_pending()?;
        }
        Ok(())
    }

    /// Records a recordings file about to be published (see [`set_recordings_dir`](Self::set_recordings_dir)).
    pub fn record_recording(&mut self, f: &ClosedFile) -> io::Result<()> {
        let base = self
            .recordings_dir
            .clone()
            .ok_or_else(|| io::Error::other("the digest log was given no recordings directory"))?;
        self.record_in(Root::Recordings, &base, f)
    }

    fn record_in(&mut self, root: Root, base: &Path, f: &ClosedFile) -> io::Result<()> {
        let rel = f.path.strip_prefix(base).map_err(|_| {
            io::Error::other(format!(
                "{} is not under {}",
                f.path.display(),
                base.display()
            ))
        })?;
        let rec = FileRecord {
            root,
            path: rel.to_string_lossy().into_owned(),
            sha256: f.sha256.clone(),
            bytes: f.bytes,
            rows: f.rows,
            first_event_time: time_text(f.first_event_time),
            last_event_time: time_text(f.last_event_time),
        };
        let mut line = serde_json::to_vec(&rec).map_err(io::Error::other)?;
        line.push(b'\n');
        if self.append.is_none() {
            let path = self.state.join(PENDING_FILE);
            self.append = Some(OpenOptions::new().create(true).append(true).open(path)?);
        }
        if let Some(a) = self.append.as_mut() {
            a.write_all(&line)?;
            a.sync_data()?;
        }
        self.pending.push(rec);
        Ok(())
    }

    /// Whether the interval since the last digest has passed (and no failed attempt is waiting).
    pub fn due(&self, now: SystemTime) -> bool {
        now >= self.next_try
            && now
                .duration_since(self.last_digest)
                .is_ok_and(|d| d >= self.interval)
    }

    /// Writes the next digest of the chain, naming every pending file; returns its path below the
    /// audit directory. On failure nothing changes (the files stay pending) and [`due`](Self::due)
    /// waits a few seconds before the next attempt.
    pub fn write(&mut self, now: SystemTime, reason: Reason) -> Result<String, DigestError> {
        let r = self.try_write(now, reason);
        if r.is_err() {
            self.next_try = now + RETRY;
        }
        r
    }

    fn try_write(&mut self, now: SystemTime, reason: Reason) -> Result<String, DigestError> {
        let key = match &self.key {
            Some(k) => k.clone(),
            None => {
                let k = load_or_create_key(&self.state_dir)?;
                self.key = Some(k.clone());
                k
            }
        };
        // Never earlier than the head: a digest's partition and name follow the chain.
        let head_end = self.head.as_ref().and_then(|h| parse_time(&h.digest_end));
        let end = head_end.map_or(now, |h| now.max(h));
        let sequence = self.head.as_ref().map_or(1, |h| h.sequence + 1);
        let body = DigestBody {
            version: FORMAT_VERSION,
            host: self.host.clone(),
            sequence,
            public_key: public_key_text(&key.verifying_key()),
            reason,
            digest_start: time_text(head_end.unwrap_or(self.last_digest.min(end))),
            digest_end: time_text(end),
            interval_s: self.interval.as_secs(),
            starts_chain: self.head.is_none(),
            previous: self.head.as_ref().map(|h| PreviousDigest {
                path: h.path.clone(),
                sha256: h.sha256.clone(),
                signature: h.signature.clone(),
            }),
            files: self.pending.clone(),
        };
        let file = DigestFile::sign(body, &key);
        let bytes = file.to_bytes();
        let rel = digest_rel_path(&self.host, sequence, end);
        let (dir_rel, name) = rel.rsplit_once('/').unwrap_or(("", rel.as_str()));
        let dir = ensure_dir(&self.audit_dir, Path::new(dir_rel))
            .map_err(|e| io_err("create", &self.audit_dir)(io::Error::other(e.to_string())))?;
        write_atomic(&dir, name, &bytes, false)?;
        let head = Head {
            host: self.host.clone(),
            sequence,
            path: rel.clone(),
            sha256: sha256_hex(&bytes),
            signature: file.signature.clone(),
            digest_end: file.digest.digest_end.clone(),
        };
        self.set_head(head)?;
        self.pending.clear();
        self.rewrite_pending()?;
        self.last_digest = end;
        tracing::debug!(digest = %rel, files = file.digest.files.len(), "audit digest written");
        Ok(rel)
    }

    fn set_head(&mut self, head: Head) -> Result<(), DigestError> {
        let bytes = serde_json::to_vec(&head).unwrap_or_default();
        write_atomic(&self.state, HEAD_FILE, &bytes, true)?;
        self.head = Some(head);
        Ok(())
    }

    fn rewrite_pending(&mut self) -> Result<(), DigestError> {
        let mut bytes = Vec::new();
        for f in &self.pending {
            bytes.extend(serde_json::to_vec(f).unwrap_or_default());
            bytes.push(b'\n');
        }
        self.append = None;
        write_atomic(&self.state, PENDING_FILE, &bytes, true)?;
        Ok(())
    }

    /// Adopts digests of this host written after the recorded head (a crash between writing a
    /// digest and recording it as the head): each must be signed by this host's key and link to
    /// the head.
    fn adopt_newer_digests(&mut self) -> Result<(), DigestError> {
        let Some(key) = self.key.clone() else {
            return Ok(()); // no key, so no digest of ours
        };
        let vk = key.verifying_key();
        let from_date = self
            .head
            .as_ref()
            .and_then(|h| h.path.split('/').nth(1).map(str::to_owned));
        let mut found: Vec<(u64, String)> = Vec::new();
        let root = self.audit_dir.join(DIGEST_DIR);
        let Ok(dates) = fs::read_dir(&root) else {
            return Ok(());
        };
        for date in dates.flatten() {
            let dname = date.file_name().to_string_lossy().into_owned();
            if !dname.starts_with("date=") || from_date.as_ref().is_some_and(|f| dname < *f) {
                continue;
            }
            let Ok(hours) = fs::read_dir(date.path()) else {
                continue;
            };
            for hour in hours.flatten() {
                let hname = hour.file_name().to_string_lossy().into_owned();
                let Ok(files) = fs::read_dir(hour.path()) else {
                    continue;
                };
                for f in files.flatten() {
                    let name = f.file_name().to_string_lossy().into_owned();
                    if let Some((host, seq)) = parse_digest_name(&name)
                        && host == self.host
                        && self.head.as_ref().is_none_or(|h| seq > h.sequence)
                    {
                        found.push((seq, format!("{DIGEST_DIR}/{dname}/{hname}/{name}")));
                    }
                }
            }
        }
        found.sort();
        for (seq, rel) in found {
            let expected = self.head.as_ref().map_or(1, |h| h.sequence + 1);
            if seq != expected {
                continue;
            }
            let bytes = fs::read(self.audit_dir.join(&rel))
                .map_err(io_err("read", &self.audit_dir.join(&rel)))?;
            let Ok(d) = DigestFile::parse(&bytes) else {
                continue;
            };
            let links = match (&self.head, &d.digest.previous) {
                (None, None) => d.digest.starts_chain,
                (Some(h), Some(p)) => p.sha256 == h.sha256 && p.signature == h.signature,
                _ => false,
            };
            if !links || !d.verify(&vk) || d.digest.sequence != seq {
                continue;
            }
            tracing::info!(digest = %rel, "audit digest written before a crash adopted as the chain head");
            self.set_head(Head {
                host: self.host.clone(),
                sequence: seq,
                path: rel,
                sha256: sha256_hex(&bytes),
                signature: d.signature.clone(),
                digest_end: d.digest.digest_end.clone(),
            })?;
        }
        Ok(())
    }
}

/// Where the host's digest chain stands, for `snowtrail status`: the newest digest, the files
/// waiting for the next one, and whether that one is late.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainStatus {
    /// The newest digest, if the chain has one.
    pub head: Option<Head>,
    /// Files closed since the newest digest (the next digest names them).
    pub files_pending: usize,
    /// How long past its due time the next digest is (zero when it is not late).
    pub overdue: Duration,
}

/// Slack before a digest counts as late: the writer checks the interval about once a second and
/// retries a failed digest every few seconds, so only a digest missing for longer than this is a
/// problem worth a warning.
pub const OVERDUE_GRACE: Duration = Duration::from_secs(60);

/// Reads the chain's state from `state_dir` and judges it at `now`: the next digest is due one
/// `interval` after the newer of the head's end and `started` (the daemon's start, which writes
/// any digest a crash interrupted), and late once [`OVERDUE_GRACE`] has passed beyond that.
pub fn chain_status(
    state_dir: &Path,
    interval: Duration,
    started: SystemTime,
    now: SystemTime,
) -> Result<ChainStatus, DigestError> {
    let head = read_head(state_dir)?;
    let files_pending = read_pending(state_dir)?.len();
    let last = head
        .as_ref()
        .and_then(|h| parse_time(&h.digest_end))
        .map_or(started, |t| t.max(started));
    let overdue = now
        .duration_since(last + interval + OVERDUE_GRACE)
        .unwrap_or(Duration::ZERO);
    Ok(ChainStatus {
        head,
        files_pending,
        overdue,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::digest::{parse_public_key, state_path};
    use std::time::UNIX_EPOCH;

    fn closed(audit: &Path, name: &str, t: SystemTime) -> ClosedFile {
        let dir = audit.join("date=2023-11-14/hour=22");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        fs::write(&path, name.as_bytes()).unwrap();
        ClosedFile {
            path,
            sha256: sha256_hex(name.as_bytes()),
            bytes: name.len() as u64,
            rows: 1,
            first_event_time: t,
            last_event_time: t,
        }
    }

    fn read_digest(audit: &Path, rel: &str) -> (Vec<u8>, DigestFile) {
        let b = fs::read(audit.join(rel)).unwrap();
        let d = DigestFile::parse(&b).unwrap();
        (b, d)
    }

    #[test]
    fn digests_chain_and_name_each_file_once() {
        let tmp = tempfile::tempdir().unwrap();
        let (state, audit) = (tmp.path().join("state"), tmp.path().join("audit"));
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut log = DigestLog::open(&state, &audit, "h", Duration::from_secs(60), t).unwrap();
        assert!(!log.due(t + Duration::from_secs(59)));
        assert!(log.due(t + Duration::from_secs(60)));
        log.record(&closed(&audit, "a.parquet", t)).unwrap();
        log.record(&closed(&audit, "b.parquet", t)).unwrap();
        let r1 = log
            .write(t + Duration::from_secs(60), Reason::Interval)
            .unwrap();
        let r2 = log
            .write(t + Duration::from_secs(120), Reason::Shutdown)
            .unwrap();
        let (b1, d1) = read_digest(&audit, &r1);
        let (_, d2) = read_digest(&audit, &r2);
        let key = parse_public_key(&d1.digest.public_key).unwrap();
        assert!(d1.verify(&key) && d2.verify(&key));
        assert!(d1.digest.starts_chain && d1.digest.previous.is_none());
        assert_eq!(d1.digest.files.len(), 2);
        assert_eq!(d1.digest.files[0].path, "date=2023-11-14/hour=22/a.parquet");
        let p = d2.digest.previous.unwrap();
        assert_eq!((p.path, p.sha256), (r1, sha256_hex(&b1)));
        assert_eq!(p.signature, d1.signature);
        assert!(d2.digest.files.is_empty() && !d2.digest.starts_chain);
        assert_eq!(read_head(&state).unwrap().unwrap().sequence, 2);
        assert!(read_pending(&state).unwrap().is_empty());
    }

    #[test]
    fn chain_status_reports_the_head_pending_files_and_lateness() {
        let tmp = tempfile::tempdir().unwrap();
        let (state, audit) = (tmp.path().join("state"), tmp.path().join("audit"));
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let hour = Duration::from_secs(3600);
        let st = chain_status(&state, hour, t, t).unwrap();
        assert_eq!((st.head, st.files_pending), (None, 0));
        // No digest yet: due an interval after the start.
        let late = t + hour + OVERDUE_GRACE + Duration::from_secs(7);
        assert_eq!(
            chain_status(&state, hour, t, late)
                .unwrap()
                .overdue
                .as_secs(),
            7
        );
        let mut log = DigestLog::open(&state, &audit, "h", hour, t).unwrap();
        log.record(&closed(&audit, "a.parquet", t)).unwrap();
        let w = t + Duration::from_secs(100);
        log.write(w, Reason::Interval).unwrap();
        log.record(&closed(&audit, "b.parquet", t)).unwrap();
        let st = chain_status(&state, hour, t, w + hour).unwrap();
        let head = st.head.unwrap();
        assert_eq!((head.sequence, st.files_pending), (1, 1));
        assert_eq!(st.overdue, Duration::ZERO);
        let st = chain_status(&state, hour, t, w + hour + OVERDUE_GRACE + hour).unwrap();
        assert_eq!(st.overdue, hour);
        // A restart long after the head: due an interval after the new start, not late at once.
        let restart = w + 10 * hour;
        let st = chain_status(&state, hour, restart, restart + hour).unwrap();
        assert_eq!(st.overdue, Duration::ZERO);
    }

    /// A crash after the digest's rename but before the head and the pending list were updated:
    /// the next start adopts the digest and does not name its files again.
    #[test]
    fn a_digest_written_before_a_crash_is_adopted() {
        let tmp = tempfile::tempdir().unwrap();
        let (state, audit) = (tmp.path().join("state"), tmp.path().join("audit"));
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut log = DigestLog::open(&state, &audit, "h", Duration::from_secs(60), t).unwrap();
        log.record(&closed(&audit, "a.parquet", t)).unwrap();
        let r1 = log.write(t, Reason::Interval).unwrap();
        let head1 = fs::read(state_path(&state).join(HEAD_FILE)).unwrap();
        log.record(&closed(&audit, "b.parquet", t)).unwrap();
        let pending_b = fs::read(state_path(&state).join(PENDING_FILE)).unwrap();
        let r2 = log
            .write(t + Duration::from_secs(5), Reason::Interval)
            .unwrap();
        // Put the state back as it was between the rename of digest 2 and its head update.
        fs::write(state_path(&state).join(HEAD_FILE), &head1).unwrap();
        fs::write(state_path(&state).join(PENDING_FILE), &pending_b).unwrap();
        // And a record whose file was never renamed into place.
        let mut ghost = closed(&audit, "c.parquet", t);
        fs::remove_file(&ghost.path).unwrap();
        ghost.rows = 9;
        let line = serde_json::to_string(&FileRecord {
            root: Root::Audit,
            path: "date=2023-11-14/hour=22/c.parquet".into(),
            sha256: ghost.sha256.clone(),
            bytes: 1,
            rows: 9,
            first_event_time: time_text(t),
            last_event_time: time_text(t),
        })
        .unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(state_path(&state).join(PENDING_FILE))
            .unwrap();
        writeln!(f, "{line}").unwrap();
        write!(f, "{{\"torn").unwrap();

        let mut log = DigestLog::open(&state, &audit, "h", Duration::from_secs(60), t).unwrap();
        assert_eq!(log.head().unwrap().path, r2);
        assert!(log.pending().is_empty(), "{:?}", log.pending());
        let r3 = log
            .write(t + Duration::from_secs(10), Reason::Recovery)
            .unwrap();
        let (_, d3) = read_digest(&audit, &r3);
        assert_eq!(d3.digest.sequence, 3);
        assert_eq!(d3.digest.previous.unwrap().path, r2);
        assert_ne!(r1, r2);
    }
}
