//! Streams audit events into a real writer and prints the id of every acknowledged event, one per
//! line, as soon as it is acknowledged; the `audit_crash` test kills it with SIGKILL at random
//! moments and checks that recovery keeps exactly the acknowledged events.
//!
//! Usage: `audit-stress STATE_DIR AUDIT_DIR RUN TASKS [COUNT] [--intents] [--digest-interval S]`.
//! Without COUNT it streams until killed; with COUNT it stops after that many events per task and
//! shuts the writer down cleanly. `--digest-interval` sets `audit.digest_interval_s` (the
//! `audit_digest` test kills it between digests).
//!
//! With `--intents` the tasks behave like the proxy with `durability = "before_forward"`: most
//! events are statements, submitted as an intent (line `I <id>` once acknowledged) and then
//! completed with the same id (line `C <id>` once acknowledged), some at once, some many
//! statements later, some never; the rest are plain events (line `<id>`). Small journal segments,
//! and a small `max_pending_intents` or `intent_timeout_s` (every other run), make kills land
//! around segment rotation, intents copied forward, and intents given up on.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use snowtrail::audit::{
    AuditConfig, AuditWriter, Event, EventKind, EventSink, OnAuditFailure, SystemClock,
    WriterOptions,
};

/// How many statements later a deferred completion comes.
const DEFER: usize = 12;

/// One write per line, unbuffered, so a SIGKILL never loses a printed ack.
fn print(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

fn statement(run: u64, t: u64, i: u64) -> Event {
    let mut e = Event::new(EventKind::Query, SystemTime::now(), "stress-host");
    e.detail = Some(format!("run={run} task={t} i={i}"));
    e.sql_text = Some(format!(
        "insert into t values ({i}, 'some text to make rows realistic')"
    ));
    e.workload_identity = Some("stress".into());
    e.labels.insert("run".into(), run.to_string());
    e
}

fn completion(intent: &Event, i: u64) -> Event {
    let mut c = intent.clone();
    c.query_id = Some(format!("01c0ffee-{i}"));
    c.success = Some(true);
    c.rows_produced = Some(1);
    c.duration_ms = Some(3);
    c
}

async fn complete(writer: &AuditWriter, intent: &Event, i: u64) {
    let id = intent.event_id;
    if writer.submit(completion(intent, i)).await.is_ok() {
        print(format!("C {id}\n"));
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().collect();
    let intents = args.iter().any(|a| a == "--intents");
    args.retain(|a| a != "--intents");
    let mut digest_interval = None;
    if let Some(i) = args.iter().position(|a| a == "--digest-interval") {
        anyhow::ensure!(i + 1 < args.len(), "--digest-interval needs seconds");
        digest_interval = Some(args[i + 1].parse::<u64>()?);
        args.drain(i..=i + 1);
    }
    anyhow::ensure!(
        args.len() >= 5,
        "usage: audit-stress STATE_DIR AUDIT_DIR RUN TASKS [COUNT] [--intents]"
    );
    let state = PathBuf::from(&args[1]);
    let audit = PathBuf::from(&args[2]);
    let run: u64 = args[3].parse()?;
    let tasks: u64 = args[4].parse()?;
    let count: Option<u64> = args.get(5).map(|c| c.parse()).transpose()?;
    let mut config = AuditConfig {
        // Small files, so that kills often land around a publish.
        max_file_bytes: 48 * 1024,
        row_group_rows: 500,
        ..AuditConfig::default()
    };
    if let Some(s) = digest_interval {
        config.digest_interval_s = s;
    }
    if intents {
        config.segment_bytes = 64 * 1024;
        // Runs alternate between giving up on intents for the bound and for the timeout.
        if run.is_multiple_of(2) {
            config.max_pending_intents = 128;
        } else {
            config.intent_timeout_s = 1;
        }
    }
    let (writer, task) = AuditWriter::start(WriterOptions {
        state_dir: state,
        audit_dir: audit,
        host: "stress-host".into(),
        config,
        on_failure: OnAuditFailure::Block,
        recordings_dir: None,
        clock: Arc::new(SystemClock),
    })
    .await?;
    eprintln!("run {run}: {:?}", task.recovery());
    println!("ready");
    let mut handles = Vec::new();
    for t in 0..tasks {
        let writer = writer.clone();
        handles.push(tokio::spawn(async move {
            let mut deferred: VecDeque<(Event, u64)> = VecDeque::new();
            let mut i = 0u64;
            while count.is_none_or(|c| i < c) {
                let e = statement(run, t, i);
                let id = e.event_id;
                if !intents || i.is_multiple_of(8) {
                    if writer.submit(e).await.is_ok() {
                        print(format!("{id}\n"));
                    }
                } else if writer.submit_intent(e.clone()).await.is_ok() {
                    print(format!("I {id}\n"));
                    match i % 8 {
                        1..=4 => complete(&writer, &e, i).await,
                        5 | 6 => deferred.push_back((e, i)),
                        _ => {} // never completed
                    }
                }
                if deferred.len() > DEFER
                    && let Some((e, n)) = deferred.pop_front()
                {
                    complete(&writer, &e, n).await;
                }
                i += 1;
            }
            for (e, n) in deferred {
                complete(&writer, &e, n).await;
            }
        }));
    }
    for h in handles {
        h.await?;
    }
    let report = task.shutdown().await?;
    eprintln!("{report:?}");
    Ok(())
}
