//! Disk full, in both failure modes: a small tmpfs (mounted by the test, as root) holds the state and
//! audit directories. While it is full, acknowledgements fail and the writer reports itself unhealthy;
//! once space is back it recovers by itself, every acknowledged event is in the Parquet files, none of
//! the failed ones is, and an `audit_gap` lifecycle event records the count and the time range.
//! Statement intents and completions that fail there still give one row per statement.
#![allow(clippy::unwrap_used)]

mod audit_common;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use audit_common::{rich_event, start, wait_until};
use snowtrail::audit::{
    AuditConfig, AuditError, EventKind, EventSink, OnAuditFailure, SystemClock, readback,
};

/// A tmpfs mounted on a temporary directory, unmounted when dropped.
struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &path,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(format!("size={size}").as_str()),
        )
        .expect("mounting a tmpfs needs root");
        Tmpfs { _dir: dir, path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Fills the file system with one file until it refuses more.
fn fill(path: &Path) -> File {
    let mut f = File::create(path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    // Whatever fits in the last partial page too.
    while f.write(&[0u8; 512]).is_ok_and(|n| n > 0) {}
    f
}

async fn disk_full(mode: OnAuditFailure) {
    let fs = Tmpfs::mount("8m");
    let state = fs.path.join("state");
    let audit = fs.path.join("audit");
    let (w, task) = start(
        &state,
        &audit,
        Arc::new(SystemClock),
        AuditConfig::default(),
        mode,
    )
    .await;
    let mut acked = Vec::new();
    let mut failed = Vec::new();
    let t0 = std::time::SystemTime::now();
    for i in 0..20 {
        let e = rich_event(EventKind::Query, t0, i);
        let id = e.event_id;
        w.submit(e).await.unwrap();
        acked.push(id);
    }
    assert!(w.healthy());

    let filler_path = fs.path.join("filler");
    let filler = fill(&filler_path);
    // Every submission now fails; at least the first one finds out by writing.
    for i in 20..60 {
        let e = rich_event(EventKind::Query, t0, i);
        let id = e.event_id;
        match w.submit(e).await {
            Ok(()) => acked.push(id), // a record that still fit in a page the journal already had
            Err(AuditError::Journal(_)) => failed.push(id),
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(!failed.is_empty(), "nothing failed on a full disk");
    assert!(!w.healthy(), "the writer must report the failure");
    assert_eq!(w.gap_events(), failed.len() as u64);

    drop(filler);
    std::fs::remove_file(&filler_path).unwrap();
    wait_until("the writer to recover", || w.healthy());
    for i in 60..80 {
        let e = rich_event(EventKind::Query, t0, i);
        let id = e.event_id;
        w.submit(e).await.unwrap();
        acked.push(id);
    }
    let report = task.shutdown().await.unwrap();
    assert_eq!(report.left_in_journal, 0);
    assert_eq!(report.gap_events, failed.len() as u64);

    let events = readback::read_events(&audit).unwrap();
    let ids: std::collections::HashSet<_> = events.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), events.len(), "duplicates");
    for id in &acked {
        assert!(ids.contains(id), "acknowledged event {id} lost");
    }
    for id in &failed {
        assert!(!ids.contains(id), "failed event {id} was written anyway");
    }
    let gaps: Vec<_> = events
        .iter()
        .filter(|e| e.lifecycle_action.map(|a| a.as_str()) == Some("audit_gap"))
        .collect();
    assert_eq!(gaps.len(), 1, "one audit_gap event");
    assert_eq!(events.len(), acked.len() + 1);
    let detail: serde_json::Value =
        serde_json::from_str(gaps[0].detail.as_deref().unwrap()).unwrap();
    assert_eq!(detail["count"], failed.len() as u64);
    let mode_name = match mode {
        OnAuditFailure::Block => "block",
        OnAuditFailure::Allow => "allow",
    };
    assert_eq!(detail["on_audit_failure"], mode_name);
    assert!(detail["from"].as_str().unwrap().ends_with('Z') && detail["to"].is_string());
    let mut out = Vec::new();
    assert!(
        readback::verify(&audit, &mut out).unwrap().ok(),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_block() {
    disk_full(OnAuditFailure::Block).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_allow() {
    disk_full(OnAuditFailure::Allow).await;
}

/// Statement intents through a full disk: an intent that fails is no statement of its own (its
/// completion, submitted anyway under `allow`, is the row), a completion that fails leaves its
/// intent pending (completed again later, or written with `outcome_unknown` at shutdown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_with_intents() {
    let fs = Tmpfs::mount("8m");
    let state = fs.path.join("state");
    let audit = fs.path.join("audit");
    let (w, task) = start(
        &state,
        &audit,
        Arc::new(SystemClock),
        AuditConfig::default(),
        OnAuditFailure::Allow,
    )
    .await;
    // Now, to the microsecond the files keep.
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let t0 =
        std::time::UNIX_EPOCH + std::time::Duration::from_micros(since_epoch.as_micros() as u64);
    let statement = |i| {
        let mut e = rich_event(EventKind::Query, t0, i);
        // Longer than a page, so that no record of a statement fits in what the journal's file
        // already has: each meets the full disk.
        e.sql_text = Some(format!("select '{}' -- {i}", "x".repeat(5000)));
        e.query_id = None;
        e.success = None;
        e
    };
    let completed = |e: &snowtrail::audit::Event| {
        let mut c = e.clone();
        c.query_id = Some("01-done".into());
        c.success = Some(true);
        c
    };
    // a: completed while the disk is full; b: never completed.
    let (a, b) = (statement(1), statement(2));
    w.submit_intent(a.clone()).await.unwrap();
    w.submit_intent(b.clone()).await.unwrap();

    let filler_path = fs.path.join("filler");
    let filler = fill(&filler_path);
    // The first records to meet the full disk: a's completion, then c's intent (each fails, unless
    // it still fit in what the journal's file already had).
    let a_done = completed(&a);
    let a_first = w.submit(a_done.clone()).await;
    let c = statement(3);
    let c_first = w.submit_intent(c.clone()).await;
    // Fail until the writer knows the journal is not writable; then d's intent fails at once.
    let mut i = 10;
    while w.healthy() {
        let _ = w.submit(rich_event(EventKind::Login, t0, i)).await;
        i += 1;
    }
    let d = statement(4);
    let d_intent = w.submit_intent(d.clone()).await;
    assert!(
        matches!(d_intent, Err(AuditError::Journal(_))),
        "{d_intent:?}"
    );
    assert!(
        a_first.is_err() || c_first.is_err(),
        "nothing failed on a full disk"
    );

    drop(filler);
    std::fs::remove_file(&filler_path).unwrap();
    wait_until("the writer to recover", || w.healthy());
    // Under `allow` the statements went upstream anyway: their completions are their rows.
    let (c_done, d_done) = (completed(&c), completed(&d));
    w.submit(c_done.clone()).await.unwrap();
    w.submit(d_done.clone()).await.unwrap();
    if a_first.is_err() {
        // Its intent is still pending: completed now.
        w.submit(a_done.clone()).await.unwrap();
    }
    let report = task.shutdown().await.unwrap();
    assert_eq!(report.intents_unknown, 1);
    assert_eq!(report.left_in_journal, 0);

    let events = readback::read_events(&audit).unwrap();
    let mut rows = std::collections::HashMap::new();
    for e in &events {
        assert!(
            rows.insert(e.event_id, e.clone()).is_none(),
            "duplicate {}",
            e.event_id
        );
    }
    assert_eq!(rows[&a.event_id], a_done);
    assert_eq!(rows[&c.event_id], c_done);
    assert_eq!(rows[&d.event_id], d_done);
    let mut b_unknown = b.clone();
    b_unknown.flags.push(snowtrail::audit::Flag::OutcomeUnknown);
    assert_eq!(rows[&b.event_id], b_unknown);
    let mut out = Vec::new();
    assert!(
        readback::verify(&audit, &mut out).unwrap().ok(),
        "{}",
        String::from_utf8_lossy(&out)
    );
}
