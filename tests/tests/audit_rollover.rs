//! Hour rollover with an injected clock: events near the boundary land in the right hour, a file
//! closes when the writer's clock passes its hour, a row that arrives after its hour closed goes into
//! a new file of that hour, and `max_file_age_s` and `max_file_bytes` close files sooner.
#![allow(clippy::unwrap_used)]

mod audit_common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use audit_common::{Dirs, at, open_in, published_in, rich_event, wait_until};
use snowtrail::audit::{AuditConfig, EventKind, EventSink, ManualClock, readback};

const H10: &str = "date=2024-05-01/hour=10";
const H11: &str = "date=2024-05-01/hour=11";

fn ids_of(path: &std::path::Path) -> HashSet<uuid::Uuid> {
    readback::read_file_events(path)
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_near_the_boundary_land_in_their_hour() {
    let dirs = Dirs::new();
    let clock = Arc::new(ManualClock::new(at(3599, 0)));
    let (w, task) = dirs.start(clock.clone(), AuditConfig::default()).await;

    let a = rich_event(EventKind::Query, at(3599, 999_999), 1); // 10:59:59.999999
    let b = rich_event(EventKind::Query, at(3600, 0), 2); // 11:00:00.000000
    let (ida, idb) = (a.event_id, b.event_id);
    w.submit(a).await.unwrap();
    w.submit(b).await.unwrap();
    // Before the clock reaches 11:00 nothing is published. The writer shows its open files after
    // each closing check: once both hours' files are shown, a check has run with both rows in.
    wait_until("both hours' files to open", || {
        let open = w.stats().open_files;
        [H10, H11]
            .iter()
            .all(|h| open.iter().any(|p| p.to_string_lossy().contains(h)))
    });
    assert!(published_in(&dirs.audit, H10).is_empty());

    clock.set(at(3600, 1));
    wait_until("hour 10 to close", || {
        published_in(&dirs.audit, H10).len() == 1
    });
    let first = published_in(&dirs.audit, H10).remove(0);
    assert_eq!(ids_of(&first), HashSet::from([ida]));
    assert!(
        published_in(&dirs.audit, H11).is_empty(),
        "hour 11 is still open"
    );

    // A row for hour 10 after its file closed: a new file in hour 10, closed soon after.
    let late = rich_event(EventKind::Query, at(3500, 0), 3);
    let idl = late.event_id;
    w.submit(late).await.unwrap();
    // The writer opens the late file at its clock's time; move the clock only after that.
    wait_until("the late file to open", || open_in(&dirs.audit, H10) == 1);
    clock.advance(Duration::from_secs(10));
    wait_until("the late file", || {
        published_in(&dirs.audit, H10).len() == 2
    });
    let second = published_in(&dirs.audit, H10)
        .into_iter()
        .find(|p| *p != first)
        .unwrap();
    assert_eq!(ids_of(&second), HashSet::from([idl]));

    let report = task.shutdown().await.unwrap();
    assert_eq!(report.events_written, 3);
    assert_eq!(report.left_in_journal, 0);
    let h11 = published_in(&dirs.audit, H11);
    assert_eq!(h11.len(), 1);
    assert_eq!(ids_of(&h11[0]), HashSet::from([idb]));
    let mut out = Vec::new();
    assert!(
        readback::verify(&dirs.audit, &mut out).unwrap().ok(),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_and_size_limits_close_files() {
    // max_file_age_s
    let dirs = Dirs::new();
    let clock = Arc::new(ManualClock::new(at(100, 0)));
    let config = AuditConfig {
        max_file_age_s: Some(60),
        ..AuditConfig::default()
    };
    let (w, task) = dirs.start(clock.clone(), config).await;
    w.submit(rich_event(EventKind::Login, at(100, 0), 1))
        .await
        .unwrap();
    wait_until("the file to open", || open_in(&dirs.audit, H10) == 1);
    clock.advance(Duration::from_secs(61));
    wait_until("the file to age out", || {
        published_in(&dirs.audit, H10).len() == 1
    });
    w.submit(rich_event(EventKind::Logout, at(161, 0), 2))
        .await
        .unwrap();
    task.shutdown().await.unwrap();
    assert_eq!(published_in(&dirs.audit, H10).len(), 2);

    // max_file_bytes: the smallest limit closes a file after every event.
    let dirs = Dirs::new();
    let config = AuditConfig {
        max_file_bytes: 1,
        ..AuditConfig::default()
    };
    let (w, task) = dirs.start(clock.clone(), config).await;
    for i in 0..5 {
        w.submit(rich_event(EventKind::Query, at(200, i), i))
            .await
            .unwrap();
    }
    wait_until("five files", || published_in(&dirs.audit, H10).len() == 5);
    let report = task.shutdown().await.unwrap();
    assert_eq!(report.files_published, 5);
    assert_eq!(readback::read_events(&dirs.audit).unwrap().len(), 5);
}
