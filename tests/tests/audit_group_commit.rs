//! Group commit: many events submitted at once share fdatasyncs, every one is acknowledged, and an
//! acknowledgement can be awaited or dropped (a dropped one still records the event). Also: a full
//! channel holds submitters back without losing events.
#![allow(clippy::unwrap_used)]

mod audit_common;

use std::sync::Arc;

use audit_common::{Dirs, at, rich_event};
use snowtrail::audit::{AuditConfig, AuditError, EventKind, EventSink, ManualClock, readback};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_events_share_fdatasyncs() {
    let dirs = Dirs::new();
    // A tiny channel, so that submitters also meet a full one.
    let config = AuditConfig {
        channel_capacity: 16,
        ..AuditConfig::default()
    };
    let clock = Arc::new(ManualClock::new(at(0, 0)));
    let (w, task) = dirs.start(clock, config).await;
    const N: u64 = 3000;
    let mut acks = Vec::new();
    for i in 0..N {
        let ack = w.submit(rich_event(EventKind::Query, at(10, i), i));
        if i % 3 == 0 {
            drop(ack); // fire and forget: the event must still be recorded
        } else {
            acks.push(ack);
        }
    }
    for a in acks {
        a.await.unwrap();
    }
    let syncs = w.journal_syncs();
    assert!(syncs > 0);
    assert!(
        syncs < N / 4,
        "{syncs} fdatasyncs for {N} events: no group commit"
    );
    let report = task.shutdown().await.unwrap();
    assert_eq!(report.events_written, N);
    assert_eq!(readback::read_events(&dirs.audit).unwrap().len() as u64, N);
    // After shutdown, submissions fail cleanly.
    let late = w.submit(rich_event(EventKind::Query, at(11, 0), 0)).await;
    assert_eq!(late, Err(AuditError::Closed));
}
