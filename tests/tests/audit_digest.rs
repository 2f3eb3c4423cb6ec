//! Tamper evidence: the signed digest chain over the audit files. An untouched trail verifies;
//! each kind of tampering (a file removed, a byte flipped, a file rewritten with a row less, a file
//! added, the newest digest removed, a digest swapped for one signed by another key) makes
//! `snowtrail audit verify` name the file and exit non-zero; and a trail after 20 `kill -9`s during
//! traffic verifies, because start-up writes the digest each crash interrupted.
#![allow(clippy::unwrap_used)]

mod audit_common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use audit_common::{Dirs, at, open_in, published_in, rich_event, wait_until};
use snowtrail::audit::digest::{DIGEST_DIR, DigestFile, public_key_text};
use snowtrail::audit::digest_verify::{ChainOptions, check_chains};
use snowtrail::audit::files::{FileSettings, OpenFile, hour_of};
use snowtrail::audit::readback::{self, VerifyOptions};
use snowtrail::audit::{AuditConfig, Clock, EventKind, ManualClock};

/// The digest files under an audit directory, in path order.
fn digests(audit: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(dates) = fs::read_dir(audit.join(DIGEST_DIR)) else {
        return out;
    };
    for d in dates.flatten() {
        for h in fs::read_dir(d.path()).unwrap().flatten() {
            for f in fs::read_dir(h.path()).unwrap().flatten() {
                if f.file_name().to_string_lossy().ends_with(".json") {
                    out.push(f.path());
                }
            }
        }
    }
    out.sort();
    out
}

fn partition(hour: u64) -> String {
    format!("date=2024-05-01/hour={:02}", 10 + hour)
}

/// A trail of three hours, one file and one interval digest each, then a clean shutdown (a fourth,
/// empty digest).
async fn build_trail(dirs: &Dirs) {
    let clock = Arc::new(ManualClock::new(at(0, 0)));
    let config = AuditConfig {
        digest_interval_s: 60,
        ..AuditConfig::default()
    };
    let (w, task) = dirs.start(clock.clone(), config).await;
    for h in 0..3u64 {
        clock.set(at(h * 3600 + 10, 0));
        for i in 0..20 {
            let kind = if i % 5 == 0 {
                EventKind::Login
            } else {
                EventKind::Query
            };
            snowtrail::audit::EventSink::submit(&w, rich_event(kind, clock.now(), i))
                .await
                .unwrap();
        }
        // Rows the parquet thread takes after the hour ended go to a file of their own (opened
        // late), which closes later; the digests name them all the same.
        wait_until("the hour's open file", || {
            open_in(&dirs.audit, &partition(h)) == 1
        });
        // The hour ends: its file closes, and the digest interval has passed.
        clock.set(at((h + 1) * 3600 + 1, 0));
        wait_until("the hour's file", || {
            !published_in(&dirs.audit, &partition(h)).is_empty()
        });
        wait_until("the hour's digest", || {
            digests(&dirs.audit).len() == h as usize + 1
        });
    }
    task.shutdown().await.unwrap();
    assert_eq!(digests(&dirs.audit).len(), 4);
}

/// Runs `snowtrail audit verify` on `audit` with the state directory; returns (success, output).
fn verify_cli(audit: &Path, state: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(snowtrail_tests::snowtrail_bin())
        .args(["audit", "verify"])
        .arg(audit)
        .arg("--state-dir")
        .arg(state)
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Asserts that verify fails with a PROBLEM line holding every one of `needles`.
fn detected(audit: &Path, state: &Path, extra: &[&str], needles: &[&str]) {
    let (ok, text) = verify_cli(audit, state, extra);
    assert!(!ok, "verify passed a tampered trail:\n{text}");
    let hit = text
        .lines()
        .any(|l| l.starts_with("PROBLEM") && needles.iter().all(|n| l.contains(n)));
    assert!(hit, "no PROBLEM line with {needles:?}:\n{text}");
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A fresh copy of the built trail (audit and state directories) for one tamper case.
fn fresh(built: &Dirs) -> Dirs {
    let d = Dirs::new();
    copy_dir(&built.audit, &d.audit);
    copy_dir(&built.state, &d.state);
    d
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Writes `path`'s events except the first as a valid Parquet file at `to`, with the agent's own
/// writer.
fn rewrite_without_first_row(path: &Path, to: &Path) {
    let mut events = readback::read_file_events(path).unwrap();
    let n = events.len();
    assert!(
        n >= 2,
        "{} has {n} rows: nothing left to rewrite",
        path.display()
    );
    events.remove(0);
    let scratch = tempfile::tempdir().unwrap();
    let settings = FileSettings {
        audit_dir: scratch.path().to_owned(),
        host: "test-host".into(),
        journal_id: uuid::Uuid::now_v7(),
        row_group_rows: 1000,
        on_publish: None,
    };
    let hour = hour_of(events[0].event_time);
    let mut f =
        OpenFile::create(&settings, hour, &events[0], 1, events[0].event_time, false).unwrap();
    for (i, e) in events.iter().enumerate() {
        f.append(i as u64 + 1, e).unwrap();
    }
    let p = f.publish().unwrap();
    assert_eq!(readback::read_file_events(&p.path).unwrap().len(), n - 1);
    fs::copy(&p.path, to).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_detected_and_an_untouched_trail_verifies() {
    let built = Dirs::new();
    build_trail(&built).await;
    let files: Vec<PathBuf> = readback::list_files(&built.audit)
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    assert!(files.len() >= 3, "{files:?}");
    let digest_paths = digests(&built.audit);

    // `audit pubkey` prints the key the digests are signed with; the key file is root-only.
    let out = Command::new(snowtrail_tests::snowtrail_bin())
        .args(["audit", "pubkey", "--state-dir"])
        .arg(&built.state)
        .output()
        .unwrap();
    assert!(out.status.success());
    let pubkey = String::from_utf8(out.stdout).unwrap();
    let pubkey = pubkey.trim().to_owned();
    assert!(
        pubkey.len() == 8 + 64 && pubkey.starts_with("ed25519:"),
        "{pubkey}"
    );
    let d0 = DigestFile::parse(&fs::read(&digest_paths[0]).unwrap()).unwrap();
    assert_eq!(d0.digest.public_key, pubkey);
    assert!(d0.digest.starts_chain);
    let listed: Vec<_> = digest_paths
        .iter()
        .flat_map(|p| {
            DigestFile::parse(&fs::read(p).unwrap())
                .unwrap()
                .digest
                .files
        })
        .collect();
    assert_eq!(listed.len(), files.len());
    assert_eq!(listed.iter().map(|f| f.rows).sum::<u64>(), 60);
    let key_mode = fs::metadata(built.state.join("digest/signing.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let pubkey_file = built.tmp.path().join("pubkey.txt");
    fs::write(&pubkey_file, format!("{pubkey}\n")).unwrap();
    let pk = pubkey_file.to_str().unwrap();

    // Untouched: passes, and says what it covers.
    let (ok, text) = verify_cli(&built.audit, &built.state, &["--pubkey", pk]);
    assert!(ok, "{text}");
    let summary = format!(
        "digests: 4 (1 host) cover {} files, 60 rows, events from 2024-05-01T10:00:10.000Z to 2024-05-01T12:00:10.000Z; 0 files not yet covered",
        files.len()
    );
    assert!(text.contains(&summary), "{text}");

    // A Parquet file removed.
    let d = fresh(&built);
    let victim = d.audit.join(files[1].strip_prefix(&built.audit).unwrap());
    fs::remove_file(&victim).unwrap();
    detected(&d.audit, &d.state, &[], &[&name(&victim), "removed"]);

    // One byte flipped.
    let d = fresh(&built);
    let victim = d.audit.join(files[0].strip_prefix(&built.audit).unwrap());
    let mut bytes = fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&victim, bytes).unwrap();
    detected(&d.audit, &d.state, &[], &[&name(&victim), "changed"]);

    // Rewritten as valid Parquet with one row less.
    let d = fresh(&built);
    let biggest = files
        .iter()
        .max_by_key(|f| readback::read_file_events(f).unwrap().len())
        .unwrap();
    let victim = d.audit.join(biggest.strip_prefix(&built.audit).unwrap());
    rewrite_without_first_row(biggest, &victim);
    detected(&d.audit, &d.state, &[], &[&name(&victim), "changed"]);

    // A foreign file added to a partition.
    let d = fresh(&built);
    let foreign = victim_dir(&d.audit, &files[0], &built.audit).join("test-host-foreign.parquet");
    // From the biggest file: a file of rows that reached the writer after their hour closed may
    // hold a single row.
    rewrite_without_first_row(biggest, &foreign);
    detected(
        &d.audit,
        &d.state,
        &[],
        &["test-host-foreign.parquet", "named by no digest"],
    );

    // The newest digest removed: the state directory's head names it.
    let d = fresh(&built);
    let newest = d
        .audit
        .join(digest_paths[3].strip_prefix(&built.audit).unwrap());
    fs::remove_file(&newest).unwrap();
    detected(&d.audit, &d.state, &[], &[&name(&newest), "missing"]);

    // A digest swapped for one with the same contents signed by another key: found with the
    // host's public key given, and without it (the chain's key changes).
    let d = fresh(&built);
    let swapped = d
        .audit
        .join(digest_paths[1].strip_prefix(&built.audit).unwrap());
    let orig = DigestFile::parse(&fs::read(&swapped).unwrap()).unwrap();
    let other = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    let mut body = orig.digest.clone();
    body.public_key = public_key_text(&other.verifying_key());
    fs::write(&swapped, DigestFile::sign(body, &other).to_bytes()).unwrap();
    detected(
        &d.audit,
        &d.state,
        &["--pubkey", pk],
        &[&name(&swapped), "signed by another key"],
    );
    detected(
        &d.audit,
        &d.state,
        &[],
        &[&name(&swapped), "signed by another key"],
    );

    // The built trail itself is still untouched.
    assert!(verify_cli(&built.audit, &built.state, &[]).0);
}

fn victim_dir(audit: &Path, file: &Path, built: &Path) -> PathBuf {
    audit.join(file.parent().unwrap().strip_prefix(built).unwrap())
}

/// 20 `kill -9`s of a writer under traffic with a one-second digest interval, each followed by
/// verification: no finding ever, the files closed before a kill are "not yet covered" until the
/// next start digests them; after a clean shutdown every file is covered.
#[test]
fn a_trail_after_20_kills_verifies() {
    const KILLS: u64 = 20;
    let dirs = Dirs::new();
    fs::create_dir_all(&dirs.audit).unwrap();
    let bin = env!("CARGO_BIN_EXE_audit-stress");
    let opts = VerifyOptions {
        chain: ChainOptions {
            state_dir: Some(dirs.state.clone()),
            ..ChainOptions::default()
        },
    };
    for run in 0..=KILLS {
        let last = run == KILLS;
        let mut cmd = Command::new(bin);
        cmd.arg(&dirs.state)
            .arg(&dirs.audit)
            .arg(run.to_string())
            .arg("8");
        if last {
            cmd.arg("20");
        }
        cmd.args(["--digest-interval", "1"]);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        if !last {
            // Kill at varied moments: during start-up (and its recovery digest), or after some
            // hundreds of acknowledged events; now and then after an interval digest.
            let target = match run % 5 {
                0 => 0,
                _ => 10 + (run * 37) % 100,
            };
            let mut seen = 0;
            while seen < target {
                match lines.next() {
                    Some(Ok(_)) => seen += 1,
                    _ => panic!("run {run}: the stress binary stopped"),
                }
            }
            if run % 10 == 3 {
                std::thread::sleep(Duration::from_millis(1100));
            }
            child.kill().unwrap(); // SIGKILL
        }
        for _ in lines.by_ref() {}
        let status = child.wait().unwrap();
        if last {
            assert!(status.success(), "the final run must stop cleanly");
        }
        // Between kills only the chain (cheap); the whole verification at the end.
        let parquet: Vec<String> = readback::list_files(&dirs.audit)
            .unwrap()
            .into_iter()
            .map(|f| {
                f.path
                    .strip_prefix(&dirs.audit)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let chain = check_chains(&dirs.audit, &parquet, &[], &opts.chain);
        assert!(chain.findings.is_empty(), "run {run}: {:?}", chain.findings);
        assert_eq!(
            chain.covered_files + chain.not_yet_covered.len(),
            parquet.len()
        );
        if !last {
            continue;
        }
        let mut out = Vec::new();
        let report = readback::verify_with(&dirs.audit, &opts, &mut out).unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(report.ok(), "{text}");
        assert!(report.chain.not_yet_covered.is_empty(), "{text}");
        assert_eq!(report.chain.covered_files, report.files, "{text}");
        assert_eq!(report.chain.covered_rows, report.events, "{text}");
        assert!(report.events > 0);
        // Every start after a kill with files closed wrote the digest it interrupted.
        assert!(report.chain.digests >= 2, "{text}");
    }
    let (ok, text) = verify_cli(&dirs.audit, &dirs.state, &[]);
    assert!(ok, "{text}");
}
