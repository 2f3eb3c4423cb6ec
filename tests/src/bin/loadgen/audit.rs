//! `loadgen audit`: statement events through a real audit writer (journal on), optionally each
//! with its recorded result through a real recordings writer first, as the proxy does; and
//! `loadgen fsync`, the floor: one small write and one `fdatasync` at a time on the same
//! filesystem.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::Context as _;
use snowtrail::audit::{
    AuditConfig, AuditWriter, Event, EventKind, EventSink, OnAuditFailure, SystemClock,
    WriterOptions,
};
use snowtrail::recording::{self, Capture, Captured, RecordingWriter, Submission};

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// A fresh directory; the journal goes to `<dir>/state`, Parquet files to `<dir>/audit`
    /// (and recordings to `<dir>/recordings`).
    #[arg(long)]
    dir: PathBuf,
    /// Events to write in all.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Concurrent submitters.
    #[arg(long, default_value_t = 64)]
    tasks: u64,
    /// Acknowledgements each submitter keeps in flight before waiting for its oldest.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Record each statement's result too: a small JSON result, age-encrypted to a recipient
    /// generated for the run, spooled and fdatasync'd by the recordings writer; the audit event
    /// is submitted once its recording is durable, as the proxy does.
    #[arg(long)]
    recording: bool,
}

/// What one `audit` run measured; the bench task reads this JSON line.
#[derive(Debug, serde::Serialize)]
pub struct AuditReport {
    events: u64,
    seconds: f64,
    events_per_s: f64,
    parquet_bytes: u64,
    parquet_files: u64,
    bytes_per_event: f64,
    journal_syncs: u64,
    recording: bool,
    recording_rows: u64,
    recording_bytes: u64,
}

/// A statement's completed event as the proxy writes it.
fn statement(task: u64, i: u64) -> Event {
    let mut e = Event::new(EventKind::Query, SystemTime::now(), "bench-host");
    e.pid = Some(4000 + task as u32);
    e.tgid = e.pid;
    e.uid = Some(1000);
    e.comm = Some("python3".into());
    e.exe = Some("/usr/bin/python3.12".into());
    e.cgroup_path = Some("/system.slice/etl-nightly.service".into());
    e.cgroup_id = Some(12_345);
    e.workload_identity = Some("etl-nightly".into());
    e.labels.insert("env".into(), "prod".into());
    e.labels.insert("team".into(), "data".into());
    e.src_ip = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)));
    e.src_port = Some(40_000 + (task as u16 % 20_000));
    e.dst_ip = Some(IpAddr::V4(Ipv4Addr::new(52, 1, 2, 3)));
    e.dst_port = Some(443);
    e.sni = Some("xy12345.eu-west-1.snowflakecomputing.com".into());
    e.connection_mode = Some(snowtrail::audit::ConnectionMode::Intercepted);
    e.connection_id = Some(task);
    e.account = Some("XY12345".into());
    e.login_user = Some("ETL_USER".into());
    e.role = Some("TRANSFORMER".into());
    e.warehouse = Some("COMPUTE_WH".into());
    e.database = Some("ANALYTICS".into());
    e.schema = Some("PUBLIC".into());
    e.session_id = Some(format!("session-{task}"));
    e.request_id = Some(uuid::Uuid::now_v7().to_string());
    e.query_id = Some(format!("01b2c3d4-0000-{task:04x}-0000-{i:012x}"));
    e.driver = Some("PythonConnector".into());
    e.driver_version = Some("3.12.0".into());
    e.sql_text = Some(format!(
        "insert into analytics.public.orders select * from staging.orders where batch = {i}"
    ));
    e.statement_type = Some("INSERT".into());
    e.decision = Some(snowtrail::audit::Decision::Allow);
    e.success = Some(true);
    e.rows_produced = Some(i % 1000);
    e.duration_ms = Some(12);
    e
}

/// A typical small statement result as the proxy captures it: a row type of three columns and
/// ten JSON rows (about 1 KB of plaintext).
fn small_result() -> Captured {
    let rows: Vec<String> = (0..10)
        .map(|i| format!(r#"["{i}","order-{i:06}","2026-11-23 10:{i:02}:00.000"]"#))
        .collect();
    let body = format!(
        r#"{{"success":true,"code":null,"message":null,"data":{{"queryResultFormat":"json","rowtype":[{{"name":"ID","type":"fixed","nullable":false,"scale":0,"precision":38}},{{"name":"NAME","type":"text","nullable":true,"length":16777216}},{{"name":"CREATED","type":"timestamp_ntz","nullable":true,"scale":3}}],"rowset":[{}],"total":10,"returned":10}}}}"#,
        rows.join(",")
    );
    let mut c = Capture::new(recording::DEFAULT_MAX_BYTES_PER_STATEMENT);
    c.response(body.as_bytes());
    c.finish()
}

fn dir_size(dir: &Path, ext: &str) -> (u64, u64) {
    let mut bytes = 0;
    let mut files = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == ext)
                && !entry.file_name().to_string_lossy().starts_with('.')
            {
                bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
                files += 1;
            }
        }
    }
    (bytes, files)
}

/// Submits one statement: with recording on, its result first (awaiting durability, then the
/// event with the `recording` columns filled), as `proxy::exchange::recording_tee::submit` does.
async fn one(
    writer: AuditWriter,
    recorder: Option<(RecordingWriter, Arc<Captured>)>,
    mut event: Event,
) -> anyhow::Result<()> {
    if let Some((rec, captured)) = recorder {
        let captured = (*captured).clone();
        event.recording = Some(captured.status);
        event.recording_bytes_kept = Some(captured.bytes_kept);
        event.recording_bytes_seen = Some(captured.bytes_seen);
        rec.submit(Submission {
            event_id: event.event_id.to_string(),
            query_id: event.query_id.clone(),
            session_id: event.session_id.clone(),
            event_time: event.event_time,
            captured,
        })
        .await
        .context("recording")?;
    }
    writer.submit(event).await.context("audit event")
}

pub async fn run(args: AuditArgs) -> anyhow::Result<AuditReport> {
    anyhow::ensure!(
        args.tasks > 0 && args.window > 0,
        "--tasks and --window must be positive"
    );
    if args.recording {
        // The recordings writer refuses rows past its queue rather than wait.
        anyhow::ensure!(
            args.tasks.saturating_mul(args.window as u64) <= recording::writer::CHANNEL_ROWS as u64,
            "with --recording, --tasks x --window must be at most {}",
            recording::writer::CHANNEL_ROWS
        );
    }
    let audit_dir = args.dir.join("audit");
    let recordings_dir = args.dir.join("recordings");
    let (writer, task) = AuditWriter::start(WriterOptions {
        state_dir: args.dir.join("state"),
        audit_dir: audit_dir.clone(),
        host: "bench-host".into(),
        config: AuditConfig::default(),
        on_failure: OnAuditFailure::Block,
        recordings_dir: args.recording.then(|| recordings_dir.clone()),
        clock: Arc::new(SystemClock),
    })
    .await
    .context("starting the audit writer")?;
    let recorder = if args.recording {
        let (_, public) = recording::keys::generate("loadgen");
        let (rec, rec_task) = RecordingWriter::start(recording::WriterOptions {
            dir: recordings_dir.clone(),
            host: "bench-host".into(),
            recipient: recording::keys::parse_recipient(&public)?,
            max_file_age: None,
            on_publish: Some(writer.recordings_hook()),
            clock: Arc::new(SystemClock),
        })
        .context("starting the recordings writer")?;
        Some((rec, rec_task, Arc::new(small_result())))
    } else {
        None
    };
    snowtrail::alloc::started();
    let started = Instant::now();
    let per_task = args.events / args.tasks;
    let mut handles = Vec::new();
    for t in 0..args.tasks {
        let writer = writer.clone();
        let rec = recorder.as_ref().map(|(r, _, c)| (r.clone(), c.clone()));
        let n = per_task + u64::from(t < args.events % args.tasks);
        let window = args.window;
        handles.push(tokio::spawn(async move {
            let mut acks = VecDeque::with_capacity(window);
            for i in 0..n {
                if acks.len() == window
                    && let Some(ack) = acks.pop_front()
                {
                    ack_done(ack).await?;
                }
                let event = statement(t, i);
                acks.push_back(match &rec {
                    // Without recording, the writer's own acknowledgement is all there is.
                    None => Pending::Ack(writer.submit(event)),
                    // With it, a task per statement, as the proxy spawns one to wait for the
                    // recording before it submits the audit event.
                    Some(r) => {
                        Pending::Task(tokio::spawn(one(writer.clone(), Some(r.clone()), event)))
                    }
                });
            }
            for ack in acks {
                ack_done(ack).await?;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let journal_syncs = writer.journal_syncs();
    let mut recording_rows = 0;
    if let Some((rec, rec_task, _)) = recorder {
        recording_rows = rec.rows();
        drop(rec);
        rec_task.shutdown().await;
    }
    drop(writer);
    let report = task.shutdown().await.context("shutting the writer down")?;
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    anyhow::ensure!(
        report.gap_events == 0 && report.left_in_journal == 0,
        "the writer lost events: {report:?}"
    );
    anyhow::ensure!(
        !args.recording || recording_rows == args.events,
        "{recording_rows} recordings made durable for {} events",
        args.events
    );
    let (parquet_bytes, parquet_files) = dir_size(&audit_dir, "parquet");
    let (recording_bytes, _) = dir_size(&recordings_dir, "parquet");
    Ok(AuditReport {
        events: args.events,
        seconds,
        events_per_s: args.events as f64 / seconds,
        parquet_bytes,
        parquet_files,
        bytes_per_event: parquet_bytes as f64 / args.events.max(1) as f64,
        journal_syncs,
        recording: args.recording,
        recording_rows,
        recording_bytes,
    })
}

/// A statement in flight: the writer's acknowledgement, or the task that records then submits.
enum Pending {
    Ack(snowtrail::audit::Ack),
    Task(tokio::task::JoinHandle<anyhow::Result<()>>),
}

async fn ack_done(p: Pending) -> anyhow::Result<()> {
    match p {
        Pending::Ack(a) => a.await.context("audit event"),
        Pending::Task(t) => t.await?,
    }
}

#[derive(Debug, clap::Args)]
pub struct FsyncArgs {
    /// A directory on the filesystem to measure (a scratch file is created there and removed).
    #[arg(long)]
    dir: PathBuf,
    /// Write + fdatasync rounds.
    #[arg(long, default_value_t = 2000)]
    count: u64,
    /// Bytes written before each fdatasync (appended, as a journal does).
    #[arg(long, default_value_t = 128)]
    bytes: usize,
}

/// What the fdatasync floor measured.
#[derive(Debug, serde::Serialize)]
pub struct FsyncReport {
    count: u64,
    bytes: usize,
    seconds: f64,
    syncs_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

/// One small append and one `fdatasync` at a time: the latency the disk gives a single durable
/// write, the floor of any durable-before-forward statement.
pub fn fsync_floor(args: &FsyncArgs) -> anyhow::Result<FsyncReport> {
    anyhow::ensure!(args.count > 0, "--count must be positive");
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let path = args.dir.join(".loadgen-fsync.tmp");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let block = vec![b'x'; args.bytes];
    let mut lat = Vec::with_capacity(args.count as usize);
    let started = Instant::now();
    for _ in 0..args.count {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    drop(f);
    let _ = std::fs::remove_file(&path);
    lat.sort_unstable();
    Ok(FsyncReport {
        count: args.count,
        bytes: args.bytes,
        seconds,
        syncs_per_s: args.count as f64 / seconds,
        p50_us: super::percentile_us(&lat, 50.0),
        p99_us: super::percentile_us(&lat, 99.0),
    })
}
