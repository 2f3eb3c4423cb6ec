//! Streams audit events into a real writer and prints the id of every acknowledged event, one per
//! line, as soon as it is acknowledged; the `audit_crash` test kills it with SIGKILL at random
//! moments and checks that recovery keeps exactly the acknowledged events.
//!
//! Usage: `audit-stress STATE_DIR AUDIT_DIR RUN TASKS [COUNT]`. Without COUNT it streams until
//! killed; with COUNT it stops after that many events per task and shuts the writer down cleanly.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use snowtrail::audit::{
    AuditConfig, AuditWriter, Event, EventKind, EventSink, OnAuditFailure, SystemClock,
    WriterOptions,
};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 5,
        "usage: audit-stress STATE_DIR AUDIT_DIR RUN TASKS [COUNT]"
    );
    let state = PathBuf::from(&args[1]);
    let audit = PathBuf::from(&args[2]);
    let run: u64 = args[3].parse()?;
    let tasks: u64 = args[4].parse()?;
    let count: Option<u64> = args.get(5).map(|c| c.parse()).transpose()?;
    let config = AuditConfig {
        // Small files, so that kills often land around a publish.
        max_file_bytes: 48 * 1024,
        row_group_rows: 500,
        ..AuditConfig::default()
    };
    let (writer, task) = AuditWriter::start(WriterOptions {
        state_dir: state,
        audit_dir: audit,
        host: "stress-host".into(),
        config,
        on_failure: OnAuditFailure::Block,
        clock: Arc::new(SystemClock),
    })
    .await?;
    eprintln!("run {run}: {:?}", task.recovery());
    println!("ready");
    let mut handles = Vec::new();
    for t in 0..tasks {
        let writer = writer.clone();
        handles.push(tokio::spawn(async move {
            let mut i = 0u64;
            while count.is_none_or(|c| i < c) {
                let mut e = Event::new(EventKind::Query, SystemTime::now(), "stress-host");
                e.detail = Some(format!("run={run} task={t} i={i}"));
                e.sql_text = Some(format!(
                    "insert into t values ({i}, 'some text to make rows realistic')"
                ));
                e.workload_identity = Some("stress".into());
                e.labels.insert("run".into(), run.to_string());
                let id = e.event_id;
                if writer.submit(e).await.is_ok() {
                    // One write per line, unbuffered, so a SIGKILL never loses a printed ack.
                    let line = format!("{id}\n");
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(line.as_bytes());
                    let _ = out.flush();
                }
                i += 1;
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
