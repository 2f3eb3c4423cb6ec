//! Walking the digest chains of an audit directory: what `audit verify` says about tampering.
//!
//! For each host, the digests under `_digests/` are ordered by sequence number and checked: each is
//! where its contents put it (host, sequence, end time), signed by the expected key (the one given
//! with `--pubkey`, else the key its chain's first digest names, so a digest signed by another key
//! stands out), links to its predecessor by SHA-256 and signature, and no sequence number is
//! missing. Every file a digest names must exist with the SHA-256 and size the digest records (so a
//! removed file, a flipped byte or a file rewritten with a row less is found), no file may be named
//! twice, and every Parquet file must be named by some digest.
//!
//! What cannot be told from the trail alone, and how it is handled:
//! - Files closed after the newest digest are not covered yet (the current interval). With the
//!   state directory (`--state-dir`), they are told apart exactly: `pending.jsonl` lists them with
//!   their hashes, and any other unnamed file is reported as added. Without it, an unnamed file
//!   modified after the newest digest is taken for "not yet covered" and one modified before it is
//!   reported as added.
//! - The removal of the newest digest: the state directory's `head.json` names it, so with
//!   `--state-dir` it is found at once; without, it is found once the next digest links to it
//!   (and its files, if older than the digest before, show up as named by no digest).
//! - A file not yet digested that is removed while the agent is down is forgotten: at start, the
//!   digest log cannot tell it from a file whose rename a crash prevented.
//! - Someone holding the host's key (root on the host) can rewrite the whole trail, state
//!   directory included, consistently. Only a copy of the digests or of `head.json` kept elsewhere
//!   (an external anchor) and `--pubkey` with the key recorded when the host was set up prove
//!   more; a reset state directory starts a new chain with a new key, which is reported.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ed25519_dalek::VerifyingKey;

use super::digest::{
    DIGEST_DIR, DigestFile, FORMAT_VERSION, FileRecord, Root, digest_rel_path, parse_public_key,
    parse_time, public_key_text, sha256_file, sha256_hex,
};
use super::digest_log::{read_head, read_pending};

/// What to check the digests against.
#[derive(Debug, Clone, Default)]
pub struct ChainOptions {
    /// The key every digest must be signed with; without it, the key each chain starts with.
    pub pubkey: Option<VerifyingKey>,
    /// The writer's state directory (`head.json`, `pending.jsonl`), to find a removed newest
    /// digest and tell files not yet digested from added ones.
    pub state_dir: Option<PathBuf>,
    /// The recordings directory, for files a digest names under the `recordings` root.
    pub recordings_dir: Option<PathBuf>,
}

/// What walking the chains found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainReport {
    /// Digest files read.
    pub digests: usize,
    /// Hosts with a chain.
    pub hosts: Vec<String>,
    /// Files named by a digest and found intact.
    pub covered_files: usize,
    /// Rows of those files.
    pub covered_rows: u64,
    /// The earliest and latest event time of those files.
    pub span: Option<(SystemTime, SystemTime)>,
    /// Files closed after the newest digest (not tampering).
    pub not_yet_covered: Vec<PathBuf>,
    /// Things worth knowing that are not tampering, one line each.
    pub notes: Vec<String>,
    /// Evidence of tampering or damage, one line each naming the file.
    pub findings: Vec<String>,
}

struct Loaded {
    rel: String,
    sha256: String,
    file: DigestFile,
}

fn list_digest_files(dir: &Path, report: &mut ChainReport) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let root = dir.join(DIGEST_DIR);
    let sorted = |p: &Path| -> Vec<fs::DirEntry> {
        let mut v: Vec<_> = fs::read_dir(p)
            .map(|r| r.flatten().collect())
            .unwrap_or_default();
        v.sort_by_key(|e| e.file_name());
        v
    };
    for date in sorted(&root) {
        let dname = date.file_name().to_string_lossy().into_owned();
        for hour in sorted(&date.path()) {
            let hname = hour.file_name().to_string_lossy().into_owned();
            for f in sorted(&hour.path()) {
                let name = f.file_name().to_string_lossy().into_owned();
                let rel = format!("{DIGEST_DIR}/{dname}/{hname}/{name}");
                if name.starts_with('.') {
                    continue; // a digest being written, or one a crash left half written
                }
                if !name.ends_with(".json") {
                    report.findings.push(format!(
                        "{rel}: not a digest (unexpected file under {DIGEST_DIR})"
                    ));
                    continue;
                }
                out.push((rel, f.path()));
            }
        }
    }
    out
}

/// Walks the digest chains under `dir` and checks every file they name; `parquet` are the Parquet
/// files found under `dir` and `recordings` those found under `opts.recordings_dir` (relative
/// paths), each of which some digest must name.
pub fn check_chains(
    dir: &Path,
    parquet: &[String],
    recordings: &[String],
    opts: &ChainOptions,
) -> ChainReport {
    let mut report = ChainReport::default();
    let mut loaded: Vec<Loaded> = Vec::new();
    for (rel, path) in list_digest_files(dir, &mut report) {
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                report.findings.push(format!("{rel}: unreadable: {e}"));
                continue;
            }
        };
        match DigestFile::parse(&bytes) {
            Ok(file) => loaded.push(Loaded {
                rel,
                sha256: sha256_hex(&bytes),
                file,
            }),
            Err(e) => report
                .findings
                .push(format!("{rel}: not a valid digest (changed?): {e}")),
        }
    }
    report.digests = loaded.len();

    // Each digest on its own: place, version, signature.
    for d in &loaded {
        let b = &d.file.digest;
        if b.version != FORMAT_VERSION {
            report.findings.push(format!(
                "{}: digest format version {} is not {FORMAT_VERSION}",
                d.rel, b.version
            ));
        }
        let expected = parse_time(&b.digest_end).map(|t| digest_rel_path(&b.host, b.sequence, t));
        if expected.as_deref() != Some(d.rel.as_str()) {
            report.findings.push(format!(
                "{}: holds digest {} of host {} ending {}, which belongs at {} (moved, renamed or reordered)",
                d.rel,
                b.sequence,
                b.host,
                b.digest_end,
                expected.as_deref().unwrap_or("?")
            ));
        }
        let claimed = parse_public_key(&b.public_key);
        let key = match (&opts.pubkey, &claimed) {
            (Some(k), Ok(c)) if k != c => {
                report.findings.push(format!(
                    "{}: signed by another key ({}), not the given public key {}",
                    d.rel,
                    b.public_key,
                    public_key_text(k)
                ));
                continue;
            }
            (Some(k), _) => *k,
            (None, Ok(c)) => *c,
            (None, Err(e)) => {
                report
                    .findings
                    .push(format!("{}: names no valid public key: {e}", d.rel));
                continue;
            }
        };
        if !d.file.verify(&key) {
            report.findings.push(format!(
                "{}: signature does not verify (the digest was changed after it was signed)",
                d.rel
            ));
        }
    }

    // Chains, per host.
    let mut by_host: BTreeMap<String, Vec<&Loaded>> = BTreeMap::new();
    for d in &loaded {
        by_host
            .entry(d.file.digest.host.clone())
            .or_default()
            .push(d);
    }
    let head = opts
        .state_dir
        .as_deref()
        .map(read_head)
        .transpose()
        .unwrap_or_else(|e| {
            report
                .findings
                .push(format!("state directory: head.json unreadable: {e}"));
            None
        })
        .flatten();
    report.hosts = by_host.keys().cloned().collect();
    for (host, chain) in by_host.iter_mut() {
        chain.sort_by(|a, b| {
            (a.file.digest.sequence, &a.rel).cmp(&(b.file.digest.sequence, &b.rel))
        });
        if opts.pubkey.is_none()
            && let Some(first) = chain.first()
        {
            let k0 = &first.file.digest.public_key;
            for d in chain.iter().filter(|d| &d.file.digest.public_key != k0) {
                report.findings.push(format!(
                    "{}: signed by another key ({}) than the rest of host {host}'s chain ({k0})",
                    d.rel, d.file.digest.public_key
                ));
            }
        }
        let mut prev: Option<&Loaded> = None;
        for d in chain.iter() {
            let b = &d.file.digest;
            match prev {
                None => {
                    if !b.starts_chain || b.previous.is_some() {
                        let missing = b.previous.as_ref().map_or("?", |p| p.path.as_str());
                        report.findings.push(format!(
                            "host {host}: the oldest digest {} (sequence {}) links to {missing}, which is missing (removed)",
                            d.rel, b.sequence
                        ));
                    }
                }
                Some(p) => {
                    let ps = p.file.digest.sequence;
                    if b.sequence == ps {
                        report.findings.push(format!(
                            "host {host}: {} and {} both claim sequence {}",
                            p.rel, d.rel, b.sequence
                        ));
                    } else if b.starts_chain {
                        report.findings.push(format!(
                            "host {host}: {} starts a new chain after {} (the state directory was reset, or the chain was forged)",
                            d.rel, p.rel
                        ));
                    } else if b.sequence != ps + 1 {
                        let missing = b.previous.as_ref().map_or("?", |x| x.path.as_str());
                        report.findings.push(format!(
                            "host {host}: digests {}..{} are missing between {} and {} (removed; {} links to {missing})",
                            ps + 1,
                            b.sequence - 1,
                            p.rel,
                            d.rel,
                            d.rel
                        ));
                    } else {
                        let ok = b.previous.as_ref().is_some_and(|x| {
                            x.path == p.rel
                                && x.sha256 == p.sha256
                                && x.signature == p.file.signature
                        });
                        if !ok {
                            report.findings.push(format!(
                                "{}: its previous digest is not {} as it is now (that digest was changed, replaced or reordered)",
                                d.rel, p.rel
                            ));
                        }
                    }
                }
            }
            prev = Some(d);
        }
        if let (Some(h), Some(newest)) = (head.as_ref().filter(|h| &h.host == host), prev) {
            let n = newest.file.digest.sequence;
            if h.sequence > n {
                report.findings.push(format!(
                    "host {host}: the newest digest, sequence {} ({}), is missing (removed); the newest found is {}",
                    h.sequence, h.path, newest.rel
                ));
            } else if h.sequence == n && h.sha256 != newest.sha256 {
                report.findings.push(format!(
                    "{}: differs from the newest digest the state directory recorded (replaced)",
                    newest.rel
                ));
            } else if h.sequence + 1 < n {
                report.notes.push(format!(
                    "host {host}: the state directory's head is digest {} but the chain goes on to {n}",
                    h.sequence
                ));
            }
        }
    }
    if let Some(h) = head.as_ref()
        && !by_host.contains_key(&h.host)
    {
        report.findings.push(format!(
            "host {}: no digest found, but the state directory records digest {} ({}) (removed)",
            h.host, h.sequence, h.path
        ));
    }

    // The files the digests name.
    let mut named: HashMap<(Root, String), (&str, &FileRecord)> = HashMap::new();
    let mut recordings_unchecked = 0usize;
    for d in &loaded {
        for f in &d.file.digest.files {
            if let Some((other, _)) = named.insert((f.root, f.path.clone()), (&d.rel, f)) {
                report.findings.push(format!(
                    "{}: named by two digests, {other} and {}",
                    f.path, d.rel
                ));
            }
            let base = match f.root {
                Root::Audit => dir,
                Root::Recordings => match &opts.recordings_dir {
                    Some(r) => r.as_path(),
                    None => {
                        recordings_unchecked += 1;
                        continue;
                    }
                },
            };
            let path = base.join(&f.path);
            match sha256_file(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    report.findings.push(format!(
                        "{}: removed (named by digest {} with {} rows)",
                        path.display(),
                        d.rel,
                        f.rows
                    ));
                }
                Err(e) => report
                    .findings
                    .push(format!("{}: unreadable: {e}", path.display())),
                Ok((sha, bytes)) if sha != f.sha256 || bytes != f.bytes => {
                    report.findings.push(format!(
                        "{}: changed (SHA-256 or size differs from digest {}: {} bytes now, {} when digested)",
                        path.display(),
                        d.rel,
                        bytes,
                        f.bytes
                    ));
                }
                Ok(_) => {
                    report.covered_files += 1;
                    report.covered_rows += f.rows;
                    if let (Some(a), Some(b)) = (
                        parse_time(&f.first_event_time),
                        parse_time(&f.last_event_time),
                    ) {
                        report.span = Some(match report.span {
                            Some((x, y)) => (x.min(a), y.max(b)),
                            None => (a, b),
                        });
                    }
                }
            }
        }
    }
    if recordings_unchecked > 0 {
        report.notes.push(format!(
            "{recordings_unchecked} recordings files named by digests were not checked (no recordings directory given)"
        ));
    }

    // Parquet files no digest names.
    let pending: Option<HashMap<(Root, String), String>> = opts.state_dir.as_deref().map(|s| {
        read_pending(s)
            .unwrap_or_default()
            .into_iter()
            .map(|f| ((f.root, f.path), f.sha256))
            .collect()
    });
    let newest_end = loaded
        .iter()
        .filter_map(|d| parse_time(&d.file.digest.digest_end))
        .max();
    let published = parquet.iter().map(|rel| (Root::Audit, dir, rel)).chain(
        opts.recordings_dir
            .as_deref()
            .into_iter()
            .flat_map(|r| recordings.iter().map(move |rel| (Root::Recordings, r, rel))),
    );
    for (root, base, rel) in published {
        let key = (root, rel.clone());
        if named.contains_key(&key) {
            continue;
        }
        let path = base.join(rel);
        let uncovered = match &pending {
            Some(p) => match p.get(&key) {
                Some(sha) => {
                    if sha256_file(&path).is_ok_and(|(s, _)| &s == sha) {
                        true
                    } else {
                        report.findings.push(format!(
                            "{}: changed since it was closed (SHA-256 differs from the state directory's record; not yet digested)",
                            path.display()
                        ));
                        continue;
                    }
                }
                None => false,
            },
            None => {
                let mtime = fs::metadata(&path).and_then(|m| m.modified()).ok();
                match (newest_end, mtime) {
                    (None, _) => true,
                    (Some(end), Some(m)) => m > end,
                    (Some(_), None) => false,
                }
            }
        };
        if uncovered {
            report.not_yet_covered.push(path);
        } else {
            report.findings.push(format!(
                "{}: named by no digest (added, or its digest was removed)",
                path.display()
            ));
        }
    }
    if !report.not_yet_covered.is_empty() && pending.is_none() {
        report.notes.push(
            "files modified after the newest digest are taken for not yet covered; pass --state-dir to tell them from added files"
                .to_owned(),
        );
    }
    report
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::digest::{DIGEST_DIR, Reason, state_path};
    use crate::audit::digest_log::{DigestLog, HEAD_FILE};
    use crate::audit::files::ClosedFile;
    use ed25519_dalek::SigningKey;
    use std::time::{Duration, UNIX_EPOCH};

    struct Trail {
        _tmp: tempfile::TempDir,
        state: PathBuf,
        audit: PathBuf,
        digests: Vec<String>,
        files: Vec<String>,
    }

    /// Three digests, two files each, the last one empty; one more file closed after them.
    fn trail() -> Trail {
        let tmp = tempfile::tempdir().unwrap();
        let (state, audit) = (tmp.path().join("state"), tmp.path().join("audit"));
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut log = DigestLog::open(&state, &audit, "h", Duration::from_secs(60), t).unwrap();
        let (mut digests, mut files) = (Vec::new(), Vec::new());
        for i in 0..7u64 {
            let rel = format!("date=2023-11-14/hour=22/h-{i}.parquet");
            let path = audit.join(&rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            let content = format!("file {i}");
            fs::write(&path, &content).unwrap();
            log.record(&ClosedFile {
                path,
                sha256: sha256_hex(content.as_bytes()),
                bytes: content.len() as u64,
                rows: i + 1,
                first_event_time: t + Duration::from_secs(i),
                last_event_time: t + Duration::from_secs(i + 1),
            })
            .unwrap();
            files.push(rel);
            if i % 2 == 1 {
                digests.push(
                    log.write(t + Duration::from_secs(100 * i), Reason::Interval)
                        .unwrap(),
                );
            }
        }
        Trail {
            _tmp: tmp,
            state,
            audit,
            digests,
            files,
        }
    }

    fn check(t: &Trail, state: bool) -> ChainReport {
        let opts = ChainOptions {
            state_dir: state.then(|| t.state.clone()),
            ..ChainOptions::default()
        };
        check_chains(&t.audit, &t.files, &[], &opts)
    }

    #[test]
    fn an_untouched_trail_passes() {
        let t = trail();
        let r = check(&t, true);
        assert!(r.findings.is_empty(), "{:?}", r.findings);
        assert_eq!((r.digests, r.covered_files, r.covered_rows), (3, 6, 21));
        assert_eq!(r.not_yet_covered.len(), 1);
        assert_eq!(r.hosts, vec!["h".to_owned()]);
        let key = crate::audit::digest::load_key(&t.state)
            .unwrap()
            .unwrap()
            .verifying_key();
        let r = check_chains(
            &t.audit,
            &t.files,
            &[],
            &ChainOptions {
                pubkey: Some(key),
                ..ChainOptions::default()
            },
        );
        assert!(r.findings.is_empty(), "{:?}", r.findings);
    }

    fn one_finding(r: &ChainReport, needle: &str) {
        assert!(
            r.findings.iter().any(|f| f.contains(needle)),
            "no finding with {needle:?}: {:?}",
            r.findings
        );
    }

    #[test]
    fn removed_and_changed_files_are_found() {
        let t = trail();
        fs::remove_file(t.audit.join(&t.files[0])).unwrap();
        fs::write(t.audit.join(&t.files[1]), "file X").unwrap();
        let r = check(&t, true);
        one_finding(&r, "h-0.parquet: removed");
        one_finding(&r, "h-1.parquet: changed");
        assert_eq!(r.findings.len(), 2, "{:?}", r.findings);
    }

    #[test]
    fn an_added_file_is_found() {
        let t = trail();
        let mut files = t.files.clone();
        let rel = "date=2023-11-14/hour=22/foreign.parquet".to_owned();
        fs::write(t.audit.join(&rel), "x").unwrap();
        files.push(rel);
        let r = check_chains(
            &t.audit,
            &files,
            &[],
            &ChainOptions {
                state_dir: Some(t.state.clone()),
                ..ChainOptions::default()
            },
        );
        one_finding(&r, "foreign.parquet: named by no digest");
    }

    #[test]
    fn an_added_recordings_file_is_found() {
        let t = trail();
        let recordings = t._tmp.path().join("recordings");
        let rel = "date=2023-11-14/hour=22/foreign.parquet".to_owned();
        fs::create_dir_all(recordings.join("date=2023-11-14/hour=22")).unwrap();
        fs::write(recordings.join(&rel), "x").unwrap();
        let opts = ChainOptions {
            state_dir: Some(t.state.clone()),
            recordings_dir: Some(recordings.clone()),
            ..ChainOptions::default()
        };
        let r = check_chains(&t.audit, &t.files, std::slice::from_ref(&rel), &opts);
        assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
        one_finding(
            &r,
            "recordings/date=2023-11-14/hour=22/foreign.parquet: named by no digest",
        );
        // The same file is not the audit's business when no recordings directory is given.
        let r = check_chains(
            &t.audit,
            &t.files,
            &[rel],
            &ChainOptions {
                recordings_dir: None,
                ..opts
            },
        );
        assert!(r.findings.is_empty(), "{:?}", r.findings);
    }

    #[test]
    fn removed_digests_are_found() {
        let t = trail();
        // The newest: only the state directory knows.
        fs::remove_file(t.audit.join(&t.digests[2])).unwrap();
        let r = check(&t, true);
        one_finding(&r, "the newest digest, sequence 3");
        // A middle one: the chain shows the gap.
        let t = trail();
        fs::remove_file(t.audit.join(&t.digests[1])).unwrap();
        let r = check(&t, true);
        one_finding(&r, "digests 2..2 are missing");
        one_finding(&r, "h-2.parquet: named by no digest");
        // The first one.
        let t = trail();
        fs::remove_file(t.audit.join(&t.digests[0])).unwrap();
        one_finding(&check(&t, false), "the oldest digest");
    }

    #[test]
    fn reordered_and_foreign_key_digests_are_found() {
        let t = trail();
        let (a, b) = (t.audit.join(&t.digests[0]), t.audit.join(&t.digests[1]));
        let (ba, bb) = (fs::read(&a).unwrap(), fs::read(&b).unwrap());
        fs::write(&a, bb).unwrap();
        fs::write(&b, ba).unwrap();
        one_finding(&check(&t, false), "belongs at");

        // Digest 2 replaced by one with the same contents signed by another key.
        let t = trail();
        let p = t.audit.join(&t.digests[1]);
        let d = DigestFile::parse(&fs::read(&p).unwrap()).unwrap();
        let other = SigningKey::from_bytes(&[3u8; 32]);
        let mut body = d.digest.clone();
        body.public_key = public_key_text(&other.verifying_key());
        fs::write(&p, DigestFile::sign(body, &other).to_bytes()).unwrap();
        let r = check(&t, false);
        one_finding(&r, "signed by another key");
        // Its successor's link no longer matches either.
        one_finding(&r, "its previous digest is not");

        // Changed contents, same key: the signature fails.
        let t = trail();
        let p = t.audit.join(&t.digests[0]);
        let text = fs::read_to_string(&p)
            .unwrap()
            .replace("\"rows\":1,", "\"rows\":5,");
        fs::write(&p, text).unwrap();
        one_finding(&check(&t, false), "signature does not verify");
    }

    #[test]
    fn without_state_an_added_old_file_is_found_and_a_new_one_is_pending() {
        let t = trail();
        let r = check(&t, false);
        assert!(r.findings.is_empty(), "{:?}", r.findings);
        assert_eq!(r.not_yet_covered.len(), 1);
        assert!(state_path(&t.state).join(HEAD_FILE).exists());
        assert!(t.audit.join(DIGEST_DIR).is_dir());
    }
}
