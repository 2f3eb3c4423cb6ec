//! Statement intents through a real writer: the completion is the statement's one row, also when it
//! comes after its hour's file closed; an intent nobody completes is written with
//! `outcome_unknown` at shutdown, past `intent_timeout_s` and beyond `max_pending_intents` (and a
//! completion after that is refused); a long-pending intent does not hold old journal segments.
#![allow(clippy::unwrap_used)]

mod audit_common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use audit_common::{Dirs, at, open_in, published_in, rich_event, wait_until};
use snowtrail::audit::{
    AuditConfig, AuditError, Event, EventKind, EventSink, Flag, ManualClock, SystemClock, readback,
};
use uuid::Uuid;

const H10: &str = "date=2024-05-01/hour=10";

/// A statement as the proxy knows it before forwarding: no outcome yet.
fn intent(t: SystemTime, i: u64) -> Event {
    let mut e = rich_event(EventKind::Query, t, i);
    e.query_id = None;
    e.success = None;
    e.duration_ms = None;
    e.rows_produced = None;
    e.error_code = None;
    e.error_message = None;
    e.flags.clear();
    e
}

/// The same statement once its response came back.
fn completed(intent: &Event, i: u64) -> Event {
    let mut c = intent.clone();
    c.query_id = Some(format!("01b2-done-{i}"));
    c.success = Some(true);
    c.duration_ms = Some(42);
    c.rows_produced = Some(i);
    c
}

fn unknown(intent: &Event) -> Event {
    let mut u = intent.clone();
    u.flags.push(Flag::OutcomeUnknown);
    u
}

fn rows(audit: &Path) -> HashMap<Uuid, Event> {
    let events = readback::read_events(audit).unwrap();
    let n = events.len();
    let by_id: HashMap<Uuid, Event> = events.into_iter().map(|e| (e.event_id, e)).collect();
    assert_eq!(by_id.len(), n, "duplicate event ids");
    by_id
}

fn verify(audit: &Path) {
    let mut out = Vec::new();
    assert!(
        readback::verify(audit, &mut out).unwrap().ok(),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

fn segments(state: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(state.join("journal"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wal"))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_after_its_hour_closed_goes_to_a_new_file_of_that_hour() {
    let dirs = Dirs::new();
    let clock = Arc::new(ManualClock::new(at(3590, 0))); // 10:59:50
    let (w, task) = dirs.start(clock.clone(), AuditConfig::default()).await;
    let stmt = intent(at(3595, 0), 1);
    let login = rich_event(EventKind::Login, at(3596, 0), 2);
    w.submit_intent(stmt.clone()).await.unwrap();
    w.submit(login.clone()).await.unwrap();
    wait_until("hour 10's file to open", || open_in(&dirs.audit, H10) == 1);

    // 11:00: hour 10's file closes, with the login and without the pending statement.
    clock.set(at(3600, 1));
    wait_until("hour 10 to close", || {
        published_in(&dirs.audit, H10).len() == 1
    });
    let first = published_in(&dirs.audit, H10).remove(0);
    let in_first: Vec<Uuid> = readback::read_file_events(&first)
        .unwrap()
        .iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(in_first, vec![login.event_id]);

    // The response comes back a minute later: the completed row goes to a new file of hour 10.
    clock.set(at(3660, 0));
    let done = completed(&stmt, 1);
    w.submit(done.clone()).await.unwrap();
    wait_until("the late file to open", || open_in(&dirs.audit, H10) == 1);
    clock.advance(Duration::from_secs(10));
    wait_until("the late file", || {
        published_in(&dirs.audit, H10).len() == 2
    });
    let second = published_in(&dirs.audit, H10)
        .into_iter()
        .find(|p| *p != first)
        .unwrap();
    assert_eq!(
        readback::read_file_events(&second).unwrap(),
        vec![done.clone()]
    );

    let report = task.shutdown().await.unwrap();
    assert_eq!(report.intents_unknown, 0);
    assert_eq!(report.left_in_journal, 0);
    let all = rows(&dirs.audit);
    assert_eq!(all.len(), 2, "one row for the statement, one for the login");
    assert_eq!(all[&stmt.event_id], done);
    verify(&dirs.audit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_writes_a_pending_intent_with_outcome_unknown() {
    let dirs = Dirs::new();
    let clock = Arc::new(ManualClock::new(at(100, 0)));
    let (w, task) = dirs.start(clock.clone(), AuditConfig::default()).await;
    let pending = intent(at(100, 0), 1);
    let answered = intent(at(101, 0), 2);
    w.submit_intent(pending.clone()).await.unwrap();
    w.submit_intent(answered.clone()).await.unwrap();
    // Submitting the intent again while it is pending replaces it: still one statement.
    let mut again = pending.clone();
    again.detail = Some("retried".into());
    w.submit_intent(again.clone()).await.unwrap();
    let done = completed(&answered, 2);
    w.submit(done.clone()).await.unwrap();

    let report = task.shutdown().await.unwrap();
    assert_eq!(report.intents_unknown, 1);
    assert_eq!(report.left_in_journal, 0);
    let all = rows(&dirs.audit);
    assert_eq!(all.len(), 2);
    assert_eq!(all[&pending.event_id], unknown(&again));
    assert_eq!(all[&answered.event_id], done);
    verify(&dirs.audit);
    assert_eq!(segments(&dirs.state).len(), 1);

    // Nothing is left for the next start.
    let (_w, task) = dirs.start(clock, AuditConfig::default()).await;
    assert_eq!(task.recovery().records, 0);
    task.shutdown().await.unwrap();
    assert_eq!(rows(&dirs.audit).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_and_bound_write_outcome_unknown_and_refuse_late_completions() {
    let dirs = Dirs::new();
    let clock = Arc::new(ManualClock::new(at(100, 0)));
    let config = AuditConfig {
        intent_timeout_s: 60,
        max_pending_intents: 2,
        ..AuditConfig::default()
    };
    let (w, task) = dirs.start(clock.clone(), config).await;

    // Timeout: a statement that stays pending past intent_timeout_s.
    let slow = intent(at(100, 0), 1);
    w.submit_intent(slow.clone()).await.unwrap();
    clock.advance(Duration::from_secs(61));
    wait_until("the timed-out intent's row", || {
        open_in(&dirs.audit, H10) == 1
    });
    assert_eq!(
        w.submit(completed(&slow, 1)).await,
        Err(AuditError::IntentExpired)
    );

    // Bound: a third pending intent pushes the oldest out.
    let (a, b, c) = (
        intent(at(170, 0), 2),
        intent(at(171, 0), 3),
        intent(at(172, 0), 4),
    );
    w.submit_intent(a.clone()).await.unwrap();
    w.submit_intent(b.clone()).await.unwrap();
    w.submit_intent(c.clone()).await.unwrap();
    let (b_done, c_done) = (completed(&b, 3), completed(&c, 4));
    w.submit(b_done.clone()).await.unwrap();
    w.submit(c_done.clone()).await.unwrap();
    assert_eq!(
        w.submit(completed(&a, 2)).await,
        Err(AuditError::IntentExpired)
    );
    // Neither may come back as an intent either.
    assert_eq!(
        w.submit_intent(a.clone()).await,
        Err(AuditError::IntentExpired)
    );

    let report = task.shutdown().await.unwrap();
    assert_eq!(report.intents_unknown, 2);
    let all = rows(&dirs.audit);
    assert_eq!(all.len(), 4);
    assert_eq!(all[&slow.event_id], unknown(&slow));
    assert_eq!(all[&a.event_id], unknown(&a));
    assert_eq!(all[&b.event_id], b_done);
    assert_eq!(all[&c.event_id], c_done);
    verify(&dirs.audit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_pending_intent_does_not_hold_old_journal_segments() {
    let dirs = Dirs::new();
    let config = AuditConfig {
        // Tiny segments and a file per row: segments are sealed and freed all the time.
        segment_bytes: 4096,
        max_file_bytes: 1,
        ..AuditConfig::default()
    };
    let (w, task) = dirs.start(Arc::new(SystemClock), config).await;
    // Now, to the microsecond the files keep.
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let t0 = UNIX_EPOCH + Duration::from_micros(since_epoch.as_micros() as u64);
    let long = intent(t0, 0);
    w.submit_intent(long.clone()).await.unwrap();
    let first = segments(&dirs.state);
    assert_eq!(first.len(), 1);
    for i in 1..=150 {
        w.submit(rich_event(EventKind::Query, t0, i)).await.unwrap();
    }
    assert_ne!(
        segments(&dirs.state).last(),
        first.last(),
        "the events should span several segments"
    );
    // Once the events are published, the segment with the intent goes too: the intent is copied
    // forward instead of holding it (and every segment after it).
    wait_until("old segments to be deleted", || {
        let now = segments(&dirs.state);
        now.len() <= 2 && !now.contains(&first[0])
    });
    let done = completed(&long, 0);
    w.submit(done.clone()).await.unwrap();

    let report = task.shutdown().await.unwrap();
    assert_eq!(report.intents_unknown, 0);
    let all = rows(&dirs.audit);
    assert_eq!(all.len(), 151);
    assert_eq!(all[&long.event_id], done);
    verify(&dirs.audit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_longer_than_max_sql_bytes_is_cut_and_identified_whole() {
    use sha2::Digest as _;
    let dirs = Dirs::new();
    let config = AuditConfig {
        max_sql_bytes: 1024,
        ..AuditConfig::default()
    };
    let (w, task) = dirs.start(Arc::new(SystemClock), config).await;
    let long = format!("insert into t values {}", "(1, 'x'), ".repeat(400));
    let mut stmt = intent(SystemTime::now(), 1);
    stmt.sql_text = Some(long.clone());
    let short = intent(SystemTime::now(), 2);
    w.submit_intent(stmt.clone()).await.unwrap();
    w.submit(completed(&stmt, 1)).await.unwrap();
    w.submit(completed(&short, 2)).await.unwrap();
    task.shutdown().await.unwrap();

    let all = rows(&dirs.audit);
    let cut = &all[&stmt.event_id];
    assert_eq!(cut.sql_text.as_deref(), Some(&long[..1024]));
    assert!(cut.flags.contains(&Flag::SqlTruncated), "{:?}", cut.flags);
    let whole: String = sha2::Sha256::digest(long.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(cut.sql_sha256.as_deref(), Some(whole.as_str()));
    let kept = &all[&short.event_id];
    assert_eq!(kept.sql_text, short.sql_text);
    assert_eq!(kept.sql_sha256, None);
    assert!(!kept.flags.contains(&Flag::SqlTruncated));
}
